"""Canaries and watches: live trials of an adapter version on users' traffic, and what users
reported about each version in a window.

A canary tries an approved candidate on a share of the public alias's users against the
champion, over the same window; a watch follows a new champion against its predecessor's last
window. At most one trial is open at a time (`ended_at` NULL); the leader, under its lease, is
the only writer. Functions flush, never commit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from lifelong.feedback_store.models import Canary, Feedback, Interaction

# Enough to judge a window; a busier one is judged on its latest rows.
MAX_WINDOW_ROWS = 100_000


class TrialOpen(Exception):
    """Another canary or watch is open; end it first."""


def open_trial(session: Session) -> Canary | None:
    """The open canary or watch, if any."""
    return session.scalar(select(Canary).where(Canary.ended_at.is_(None))
                          .order_by(Canary.id.desc()).limit(1))


def start(session: Session, *, kind: str, version: str, baseline_version: str | None,
          share: float, by: str, started_at: datetime | None = None) -> Canary:
    """Open a trial. Raises TrialOpen if one is open."""
    if (current := open_trial(session)) is not None:
        raise TrialOpen(f"the {current.kind} of {current.version} (#{current.id}) is open")
    row = Canary(kind=kind, version=version, baseline_version=baseline_version, share=share,
                 started_at=started_at or datetime.now(UTC), started_by=by)
    session.add(row)
    session.flush()
    return row


def end(session: Session, row: Canary, *, decision: str, reason: str,
        stats: dict[str, Any] | None = None) -> Canary:
    row.ended_at = datetime.now(UTC)
    row.decision = decision
    row.reason = reason
    if stats is not None:
        row.stats = stats
    session.flush()
    return row


def trials(session: Session, *, version: str | None = None, limit: int = 50) -> list[Canary]:
    """The latest trials, newest first, optionally only those of `version`."""
    query = select(Canary).order_by(Canary.id.desc()).limit(limit)
    if version is not None:
        query = query.where(Canary.version == version)
    return list(session.scalars(query))


@dataclass
class Window:
    """What users of one version reported in a window: each answered interaction's latest
    outcome (pass/fail, reward) and every answer's latency."""

    passes: list[bool] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)


def window(session: Session, *, version: str | None, model: str, since: datetime,
           until: datetime | None = None) -> Window:
    """Outcomes and latencies of the interactions `version` (None: the base model) answered for
    `model` (the public alias: pinned requests are not the trial's traffic) in [since, until).
    An interaction with several outcome reports counts once, by its latest."""
    where = [Interaction.model == model, Interaction.created_at >= since,
             Interaction.adapter_version.is_(None) if version is None
             else Interaction.adapter_version == version]
    if until is not None:
        where.append(Interaction.created_at < until)
    result = Window()
    latencies = session.scalars(
        select(Interaction.latency_ms).where(*where, Interaction.latency_ms.is_not(None))
        .order_by(Interaction.created_at.desc()).limit(MAX_WINDOW_ROWS))
    result.latencies_ms = [float(v) for v in latencies]
    outcomes = session.execute(
        select(Feedback.interaction_id, Feedback.passed, Feedback.reward)
        .join(Interaction, Interaction.id == Feedback.interaction_id)
        .where(*where, Feedback.kind == "outcome")
        .order_by(Feedback.id.desc()).limit(MAX_WINDOW_ROWS))
    seen: set[str] = set()
    for interaction_id, passed, reward in outcomes:
        if interaction_id in seen:  # newest first: the latest report wins
            continue
        seen.add(interaction_id)
        if passed is not None:
            result.passes.append(bool(passed))
        if reward is not None:
            result.rewards.append(float(reward))
    return result
