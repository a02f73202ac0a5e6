"""What the store knows about the learning side, read as plain figures for the metrics.

`read_stats` answers one scrape with a few small queries (training runs, the latest GRPO rounds,
gate decisions, promotions and the champion, canaries and watches), `recent_versions` names the
versions that matter lately. Feedback and rollouts grow without bound, so they are counted by
running totals (`FeedbackTotals`, `RolloutTotals`) that read only the rows added since their last
call. Turning these figures into Prometheus families (and bounding their labels) is
`daemon/metrics.py`'s part.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from lifelong.feedback_store.canaries import open_trial
from lifelong.feedback_store.feedback import settled_max_id
from lifelong.feedback_store.models import (
    Adapter,
    Canary,
    Feedback,
    GateDecision,
    Interaction,
    Promotion,
    Rollout,
    TrainingRun,
)

BASE = "base"  # what the store's figures call the base model (an adapter_version of None)
PROMOTIONS_READ = 50  # recent moves enough to name the previous champions


@dataclass(frozen=True, slots=True)
class RecentVersions:
    """The versions a reader is most likely to ask about, newest first in each list."""

    champion: str | None
    previous_champions: list[str]  # versions recent promotions and rollbacks moved, champion aside
    newest: list[str]  # the newest adapters registered


@dataclass(frozen=True, slots=True)
class TrainingStats:
    runs_by_status: dict[str, int]
    last_succeeded_seconds: float | None  # wall time of the last successful run
    last_succeeded_metrics: dict[str, Any] | None
    running_run: int | None  # the id of the run going on, as the trainer said
    current_metrics: dict[str, Any] | None  # of that run (None when none goes on, or no row)
    latest_grpo_rounds: list[dict[str, Any]]  # per-round figures of the latest run with GRPO


@dataclass(frozen=True, slots=True)
class DecisionStats:
    candidate_version: str | None
    champion_version: str | None
    status: str
    decided_at: datetime
    details: dict[str, Any]  # the gate's Decision.to_json()


@dataclass(frozen=True, slots=True)
class PromotionStats:
    promoted: int  # forced ones included
    forced: int
    rolled_back: int
    champion: str | None
    champion_parent: str | None


@dataclass(frozen=True, slots=True)
class TrialStats:
    """The open canary or watch."""

    kind: str
    version: str
    baseline_version: str | None  # None: the base model
    share: float
    started_at: datetime
    stats: dict[str, Any]  # the leader's latest look (`evals.canary_policy`'s Verdict.stats)


@dataclass(frozen=True, slots=True)
class CanaryStats:
    started: dict[str, int]  # trials ever opened, by kind
    ended: dict[tuple[str, str], int]  # trials ended, by (kind, decision)
    open: TrialStats | None


@dataclass(frozen=True, slots=True)
class StoreStats:
    training: TrainingStats
    decisions_by_status: dict[str, int]
    recent_decisions: list[DecisionStats]  # newest first
    promotions: PromotionStats
    canaries: CanaryStats


def read_stats(session: Session, *, running_run: int | None, recent_decisions: int) -> StoreStats:
    """The learning side's figures: runs (`running_run`: the id of the one going on), gate
    decisions (the `recent_decisions` newest in full), promotions and the champion."""
    return StoreStats(
        training=training_stats(session, running_run=running_run),
        decisions_by_status=dict(session.execute(
            select(GateDecision.status, func.count()).group_by(GateDecision.status)).all()),
        recent_decisions=[
            DecisionStats(candidate_version=d.candidate_version,
                          champion_version=d.champion_version, status=d.status,
                          decided_at=d.decided_at, details=d.details)
            for d in session.scalars(
                select(GateDecision).order_by(GateDecision.id.desc()).limit(recent_decisions))
        ],
        promotions=promotion_stats(session),
        canaries=canary_stats(session),
    )


def recent_versions(session: Session, *, previous_champions: int, newest: int) -> RecentVersions:
    """The champion, up to `previous_champions` versions recent moves left, the `newest` adapters."""
    champion = session.scalar(select(Adapter.version).where(Adapter.status == "champion"))
    previous: list[str] = []
    moves = session.execute(
        select(Promotion.from_version, Promotion.to_version).order_by(Promotion.id.desc())
        .limit(PROMOTIONS_READ)
    )
    for from_version, to_version in moves:
        for version in (to_version, from_version):
            if version and version != champion and version not in previous:
                previous.append(version)
    newest_versions = session.scalars(
        select(Adapter.version).order_by(Adapter.created_at.desc(), Adapter.version.desc())
        .limit(newest)
    )
    return RecentVersions(champion=champion, previous_champions=previous[:previous_champions],
                          newest=list(newest_versions))


def training_stats(session: Session, *, running_run: int | None) -> TrainingStats:
    counts: dict[str, int] = dict(session.execute(
        select(TrainingRun.status, func.count()).group_by(TrainingRun.status)).all())
    last = session.scalar(
        select(TrainingRun).where(TrainingRun.status == "succeeded")
        .order_by(TrainingRun.id.desc()).limit(1))
    seconds = None
    if last is not None and last.finished_at is not None:
        seconds = (last.finished_at - last.started_at).total_seconds()
    current = session.get(TrainingRun, running_run) if running_run is not None else None
    grpo = session.scalar(
        select(TrainingRun).where(TrainingRun.method.like("%grpo"))  # grpo, or a recipe's last
        .order_by(TrainingRun.id.desc()).limit(1))
    return TrainingStats(
        runs_by_status=counts,
        last_succeeded_seconds=seconds,
        last_succeeded_metrics=(last.metrics or {}) if seconds is not None and last else None,
        running_run=running_run,
        current_metrics=(current.metrics or {}) if current is not None else None,
        latest_grpo_rounds=((grpo.metrics or {}).get("rounds") or []) if grpo is not None else [],
    )


def promotion_stats(session: Session) -> PromotionStats:
    rows = session.execute(
        select(Promotion.kind, Promotion.forced, func.count())
        .group_by(Promotion.kind, Promotion.forced)).all()
    champion = session.scalar(select(Adapter).where(Adapter.status == "champion"))
    return PromotionStats(
        promoted=sum(n for kind, _, n in rows if kind == "promote"),
        forced=sum(n for kind, was_forced, n in rows if kind == "promote" and was_forced),
        rolled_back=sum(n for kind, _, n in rows if kind == "rollback"),
        champion=champion.version if champion else None,
        champion_parent=champion.parent_version if champion else None,
    )


def canary_stats(session: Session) -> CanaryStats:
    rows = session.execute(select(Canary.kind, Canary.decision, func.count())
                           .group_by(Canary.kind, Canary.decision)).all()
    row = open_trial(session)
    started: dict[str, int] = defaultdict(int)
    for kind, _, n in rows:
        started[kind] += n
    return CanaryStats(
        started=dict(started),
        ended={(kind, decision): n for kind, decision, n in rows if decision is not None},
        open=TrialStats(kind=row.kind, version=row.version,
                        baseline_version=row.baseline_version, share=row.share,
                        started_at=row.started_at, stats=row.stats or {}) if row else None,
    )


@dataclass
class FeedbackTotals:
    """Running feedback counts per (kind, version), advanced by reading only new rows. Versions
    are as stored, `base` for the base model."""

    watermark: int = 0  # highest feedback id counted
    items: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    passed: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    failed: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    reward_sum: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    reward_count: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def advance(self, session: Session) -> None:
        # Only ids that no running transaction can still add below (PostgreSQL commits ids out
        # of order), so no row is skipped and none is counted twice.
        settled = settled_max_id(session)
        if settled <= self.watermark:
            return
        version = func.coalesce(Interaction.adapter_version, BASE)
        rows = session.execute(
            select(
                Feedback.kind, version, func.count(),
                func.sum(case((Feedback.passed.is_(True), 1), else_=0)),
                func.sum(case((Feedback.passed.is_(False), 1), else_=0)),
                func.sum(Feedback.reward), func.count(Feedback.reward),
            )
            .join(Interaction, Interaction.id == Feedback.interaction_id)
            .where(Feedback.id > self.watermark, Feedback.id <= settled)
            .group_by(Feedback.kind, version)
        )
        for kind, ver, count, passed, failed, reward_sum, reward_count in rows:
            self.items[(kind, ver)] += count
            if kind == "outcome":
                self.passed[ver] += passed or 0
                self.failed[ver] += failed or 0
                self.reward_sum[ver] += reward_sum or 0.0
                self.reward_count[ver] += reward_count or 0
        self.watermark = settled


@dataclass
class RolloutTotals:
    """Running rollout counts, advanced by reading only new rows. One run writes rollouts at a
    time (the daemon's trainer), a round per transaction, so ids become visible in order."""

    watermark: int = 0
    passed: int = 0
    failed: int = 0
    reward_sum: float = 0.0

    def advance(self, session: Session) -> None:
        top = session.scalar(select(func.max(Rollout.id))) or 0
        if top <= self.watermark:
            return
        rows = session.execute(
            select(Rollout.passed, func.count(), func.sum(Rollout.reward))
            .where(Rollout.id > self.watermark, Rollout.id <= top).group_by(Rollout.passed))
        for passed, count, reward_sum in rows:
            if passed:
                self.passed += count
            else:
                self.failed += count
            self.reward_sum += reward_sum or 0.0
        self.watermark = top
