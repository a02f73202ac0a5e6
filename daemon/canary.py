"""Canaries and watches: an approved adapter proven on live users before it takes them all, and a
new champion watched after it did.

A canary (`start`): the candidate is loaded and warmed into every ready server, the trial is
recorded, and every replica (`Replica.follow`) sends `promotion.canary.share` of the alias's
users to it; `start` answers once every live replica does. Every `check_every_s` the leader
counts what users reported (outcome feedback: pass/fail, reward) for each side since the canary
began, adds up the serving errors every replica counted, and asks the sequential test
(`evals.canary_policy.decide`) which may be looked at as often as it likes:
- promote: the candidate takes the alias (its trial ends in the promotion's transaction);
- rollback: the canary ends and the candidate is rejected; every user is back on the champion;
- timeout: the canary ends, the champion stays, the candidate stays approved.
A watch (opened by every promotion, `promotion.watch`) compares the new champion's live outcomes
with its predecessor's last window of the same length; a confident drop rolls back to the
predecessor (`decide_watch`). Decisions, with their numbers, are the trial's row.

Only the leader decides. A trial outlives a restart: its row holds when it began, the replicas
route to it again from the row, and the new leader goes on counting from there. A canary whose
candidate cannot be loaded any more ends as aborted; the champion serves.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy.orm import Session, sessionmaker

from lifelong.adapters import AdapterError
from lifelong.daemon.catalog import CanaryRoute, ModelCatalog, Served
from lifelong.daemon.promotion import Promoter, PromotionRefused, TrialEnd
from lifelong.daemon.settings import PromotionSettings
from lifelong.daemon.upstream import BASE_MODEL_NAME, UpstreamUnavailable
from lifelong.evals.canary_policy import LiveArm, Verdict, decide, decide_watch
from lifelong.evals.sequential import Arm
from lifelong.feedback_store import canaries, registry, replicas
from lifelong.feedback_store.canaries import Window
from lifelong.feedback_store.errors import UnknownAdapter
from lifelong.feedback_store.models import Canary

logger = logging.getLogger(__name__)


class CanaryRefused(Exception):
    """The canary cannot start (not approved, the champion, another trial open); nothing
    changed."""


@dataclass(frozen=True)
class TrialView:
    id: int
    kind: str
    version: str
    baseline: str  # a version or `base`
    share: float
    started_at: str
    started_by: str
    ended_at: str | None
    decision: str | None
    reason: str | None
    stats: dict[str, Any] | None

    @classmethod
    def of(cls, row: Canary) -> TrialView:
        return cls(id=row.id, kind=row.kind, version=row.version,
                   baseline=row.baseline_version or BASE_MODEL_NAME, share=row.share,
                   started_at=row.started_at.isoformat(), started_by=row.started_by,
                   ended_at=row.ended_at.isoformat() if row.ended_at else None,
                   decision=row.decision, reason=row.reason, stats=row.stats)


def live_arm(window: Window, *, requests: int = 0, errors: int = 0) -> LiveArm:
    latencies = sorted(window.latencies_ms)
    p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))] if latencies else None
    return LiveArm(passes=Arm.of(float(p) for p in window.passes), rewards=Arm.of(window.rewards),
                   requests=requests, errors=errors, latency_p95_ms=p95)


class Canaries:
    """Starts canaries and, while this replica leads, decides every open canary and watch."""

    def __init__(
        self,
        *,
        settings: PromotionSettings,
        sessions: sessionmaker[Session],
        catalog: ModelCatalog,
        promoter: Promoter,
        replica_id: str,
        replica_stale_s: float,
        wait_for_replicas: Callable[[int | None, float], Awaitable[list[str]]],
        propagation_timeout_s: float,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.catalog = catalog
        self.promoter = promoter
        self.replica_id = replica_id
        self.replica_stale_s = replica_stale_s
        self.wait_for_replicas = wait_for_replicas
        self.propagation_timeout_s = propagation_timeout_s
        self.last_error: str | None = None
        self._scheduler: AsyncIOScheduler | None = None

    # --- starting -----------------------------------------------------------------------------

    async def start_canary(self, version: str, *, by: str) -> TrialView:
        """Send `promotion.canary.share` of the alias's users to `version` (approved by the
        gate), loaded and warmed everywhere first. Raises CanaryRefused, UnknownAdapter,
        AdapterError, AdapterLoadFailed, UpstreamUnavailable, NotLeader."""
        async with self.promoter.lock:
            served = await asyncio.to_thread(self._check, version)
            ready = [u for u in self.promoter.upstreams if u.ready]
            if not ready:
                raise UpstreamUnavailable("no model server is ready to load the adapter into; "
                                          "retry once one is")
            await asyncio.gather(*(self.promoter.load_and_warm(u, served) for u in ready))

            def record() -> Canary:
                with self.sessions.begin() as session:
                    self.promoter.fence(session)
                    if (trial := canaries.open_trial(session)) is not None:
                        if trial.kind != "watch":
                            raise CanaryRefused(f"the canary of {trial.version} is open; stop "
                                                "it first")
                        canaries.end(session, trial, decision="aborted",
                                     reason=f"superseded: canary of {version} by {by}")
                    champion = registry.champion(session)
                    return canaries.start(
                        session, kind="canary", version=version,
                        baseline_version=champion.version if champion else None,
                        share=self.settings.canary.share, by=by)

            row = await asyncio.to_thread(record)
            self.catalog.live[version] = served
            self.catalog.canary = CanaryRoute(id=row.id, version=version, share=row.share,
                                              served=served)
        logger.info("canary started", extra={"version": version, "share": row.share,
                                             "baseline": row.baseline_version, "by": by})
        lagging = await self.wait_for_replicas(row.id, self.propagation_timeout_s)
        if lagging:
            logger.warning("replicas do not route to the canary yet",
                           extra={"canary": version, "lagging": lagging})
        return TrialView.of(row)

    def _check(self, version: str) -> Served:
        with self.sessions() as session:
            if (trial := canaries.open_trial(session)) is not None and trial.kind == "canary":
                raise CanaryRefused(f"the canary of {trial.version} is open; stop it first")
            row = registry.get(session, version=version)
            if row.status != "approved":
                raise CanaryRefused(f"{version} is {row.status}; only an adapter the gate "
                                    "approved goes to a canary")
            path, checksum = row.path, row.checksum
        return self.promoter.verified(version, path=path, checksum=checksum)

    async def stop_canary(self, *, by: str) -> TrialView:
        """End the open canary, keeping the champion (the candidate stays approved). Raises
        CanaryRefused if none is open, NotLeader."""
        async with self.promoter.lock:
            def record() -> Canary:
                with self.sessions.begin() as session:
                    self.promoter.fence(session)
                    trial = canaries.open_trial(session)
                    if trial is None or trial.kind != "canary":
                        raise CanaryRefused("no canary is open")
                    return canaries.end(session, trial, decision="aborted",
                                        reason=f"stopped by {by}")

            row = await asyncio.to_thread(record)
            self.catalog.canary = None
        await self.wait_for_replicas(None, self.propagation_timeout_s)
        return TrialView.of(row)

    # --- deciding (the leader) ------------------------------------------------------------------

    async def start(self) -> None:
        """Begin deciding (this replica leads)."""
        if self._scheduler is None or not self._scheduler.running:
            self._scheduler = AsyncIOScheduler(timezone=UTC)
            self._scheduler.add_job(self.check, IntervalTrigger(
                seconds=self.settings.canary.check_every_s), id="canary", max_instances=1,
                coalesce=True)
            self._scheduler.start()

    async def stop(self) -> None:
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    async def check(self) -> Verdict | None:
        """Look at the open trial once and act on what the test says; its verdict."""
        try:
            verdict = await self._check_open()
            self.last_error = None
            return verdict
        except Exception as exc:  # the database or a server is away: the next check retries
            if str(exc) != self.last_error:
                logger.warning("canary check failed", extra={"error": str(exc)[:500]})
            self.last_error = str(exc)
            return None

    async def _check_open(self) -> Verdict | None:
        trial = await asyncio.to_thread(self._open)
        if trial is None:
            return None
        if trial.kind == "canary":
            route = self.catalog.canary
            if route is None or route.id != trial.id:
                # Not routed here yet (after a restart the replica loop loads it first); one
                # whose candidate cannot be loaded any more is ended, the champion serves.
                return await self._unroutable(trial)
            verdict = await asyncio.to_thread(self._judge_canary, trial)
        else:
            verdict = await asyncio.to_thread(self._judge_watch, trial)
        if verdict.decision is None:
            return verdict
        logger.info("trial decided", extra={"kind": trial.kind, "version": trial.version,
                                            "decision": verdict.decision,
                                            "reason": verdict.reason})
        await self._act(trial, verdict)
        return verdict

    def _open(self) -> Canary | None:
        with self.sessions() as session:
            return canaries.open_trial(session)

    async def _unroutable(self, trial: Canary) -> Verdict | None:
        def problem() -> str | None:
            try:
                with self.sessions() as session:
                    adapter = registry.get(session, version=trial.version)
                    path, checksum = adapter.path, adapter.checksum
                self.promoter.verified(trial.version, path=path, checksum=checksum)
                return None
            except (AdapterError, UnknownAdapter) as exc:  # gone or changed: it cannot serve
                # (a database error is not caught: `check` logs it and the next look retries)
                return f"{type(exc).__name__}: {exc}"

        if (found := await asyncio.to_thread(problem)) is None:
            return None  # the replica loop routes it within cluster.sync_s
        verdict = Verdict(decision=None, reason=f"the candidate cannot be served: {found}",
                          stats=trial.stats or {})
        await self._end(trial, decision="aborted", reason=verdict.reason, stats=verdict.stats)
        return verdict

    def _tallies(self, trial_id: int) -> tuple[Counter[str], Counter[str]]:
        """Alias requests and server failures per version since each replica began routing
        trial `trial_id`: this replica's own counts, and the other live replicas' heartbeats."""
        requests: Counter[str] = Counter()
        errors: Counter[str] = Counter()
        route = self.catalog.canary
        if route is not None and route.id == trial_id:
            requests.update(route.requests)
            errors.update(route.errors)
        with self.sessions() as session:
            for peer in replicas.listed(session):
                seen = peer.canary or {}
                if (peer.replica_id != self.replica_id and peer.alive(self.replica_stale_s)
                        and seen.get("id") == trial_id):
                    requests.update(seen.get("requests") or {})
                    errors.update(seen.get("errors") or {})
        return requests, errors

    def _judge_canary(self, trial: Canary) -> Verdict:
        alias = self.catalog.alias
        baseline = trial.baseline_version
        requests, errors = self._tallies(trial.id)
        with self.sessions() as session:
            candidate = canaries.window(session, version=trial.version, model=alias,
                                        since=trial.started_at)
            champion = canaries.window(session, version=baseline, model=alias,
                                       since=trial.started_at)
        base_name = baseline or BASE_MODEL_NAME
        verdict = decide(
            live_arm(candidate, requests=requests[trial.version], errors=errors[trial.version]),
            live_arm(champion, requests=requests[base_name], errors=errors[base_name]),
            elapsed_s=_elapsed(trial), policy=self.settings.canary.policy())
        self._record(trial.id, {**verdict.stats, "summary": verdict.reason})
        return verdict

    def _judge_watch(self, trial: Canary) -> Verdict:
        alias = self.catalog.alias
        minutes = self.settings.watch.minutes
        with self.sessions() as session:
            champion = canaries.window(session, version=trial.version, model=alias,
                                       since=trial.started_at)
            predecessor = canaries.window(
                session, version=trial.baseline_version, model=alias,
                since=trial.started_at - timedelta(minutes=minutes), until=trial.started_at)
        verdict = decide_watch(live_arm(champion), live_arm(predecessor),
                               elapsed_s=_elapsed(trial),
                               policy=self.settings.canary.policy(max_minutes=minutes))
        self._record(trial.id, {**verdict.stats, "summary": verdict.reason})
        return verdict

    def _record(self, trial_id: int, stats: dict[str, Any]) -> None:
        with self.sessions.begin() as session:
            self.promoter.fence(session)
            row = session.get(Canary, trial_id)
            if row is not None and row.ended_at is None:
                row.stats = stats

    async def _act(self, trial: Canary, verdict: Verdict) -> None:
        assert verdict.decision is not None
        end = TrialEnd(verdict.decision, verdict.reason, verdict.stats)
        if trial.kind == "canary" and verdict.decision == "promote":
            try:
                await self.promoter.promote(trial.version, by="canary", leader_only=True,
                                            reason=verdict.reason, trial_end=end)
            except PromotionRefused as exc:  # no longer approved (a person rejected it)
                await self._end(trial, decision="aborted", reason=str(exc), stats=verdict.stats)
        elif trial.kind == "canary":  # rollback or timeout: every user back on the champion
            await self._end(trial, decision=verdict.decision, reason=verdict.reason,
                            stats=verdict.stats, reject=verdict.decision == "rollback")
        elif verdict.decision == "rollback":  # a watch saw the new champion drop
            await self.promoter.rollback(by="watch", to=trial.baseline_version or BASE_MODEL_NAME,
                                         reason=verdict.reason, leader_only=True,
                                         trial_end=end, reject=True)
        else:
            await self._end(trial, decision=verdict.decision, reason=verdict.reason,
                            stats=verdict.stats)

    async def _end(self, trial: Canary, *, decision: str, reason: str,
                   stats: dict[str, Any] | None, reject: bool = False) -> None:
        async with self.promoter.lock:
            def record() -> None:
                with self.sessions.begin() as session:
                    self.promoter.fence(session)
                    row = session.get(Canary, trial.id)
                    if row is None or row.ended_at is not None:
                        return
                    canaries.end(session, row, decision=decision, reason=reason, stats=stats)
                    if reject and registry.get(session, version=row.version).status != "champion":
                        registry.reject(session, version=row.version)

            await asyncio.to_thread(record)
            if self.catalog.canary is not None and self.catalog.canary.id == trial.id:
                self.catalog.canary = None
        if trial.kind == "canary":
            await self.wait_for_replicas(None, self.propagation_timeout_s)

    # --- reading ----------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The open trial and the last ended one (for /admin/status and `lifelong status`)."""
        with self.sessions() as session:
            rows = canaries.trials(session, limit=2)
            open_ = next((TrialView.of(r) for r in rows if r.ended_at is None), None)
            last = next((TrialView.of(r) for r in rows if r.ended_at is not None), None)
        return {"open": open_.__dict__ if open_ else None,
                "last": last.__dict__ if last else None,
                "enabled": self.settings.canary.enabled, "share": self.settings.canary.share,
                "error": self.last_error}


def _elapsed(trial: Canary) -> float:
    started = trial.started_at if trial.started_at.tzinfo else trial.started_at.replace(
        tzinfo=UTC)
    return (datetime.now(UTC) - started).total_seconds()
