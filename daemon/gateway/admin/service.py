"""Admin logic: start cycles and evals, read runs and adapters, move the champion.

The router parses and maps to HTTP; this holds what each route does with the learning loop's
parts (trainer, cycle, judge, promoter) and the store. Reads run on a worker thread (a query
must not hold the event loop). A run that does not exist is None (the router's 404); refusals are
the parts' own exceptions (TrainerBusy, NotTheRunningRun, NothingToJudge, PromotionRefused, ...).
"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from lifelong.daemon.adapter_report import adapter_detail, adapter_rows, learning_status
from lifelong.daemon.canary import Canaries, TrialView
from lifelong.daemon.catalog import ModelCatalog
from lifelong.daemon.cluster import Replica
from lifelong.daemon.gateway.admin.protocol import EvalRunOut, PromotedOut, TrainingRunOut
from lifelong.daemon.judge import Judge
from lifelong.daemon.leadership import Leadership
from lifelong.daemon.learning_cycle import LearningCycle, Schedule, start_in_background
from lifelong.daemon.practice import Practice
from lifelong.daemon.promotion import Promoted, Promoter
from lifelong.daemon.trainer import Trainer, TrainRequest, describe_run
from lifelong.evals import sandbox
from lifelong.feedback_store.eval_results import gate_decision_for_run
from lifelong.feedback_store.leases import NotLeader
from lifelong.feedback_store.models import EvalRun, TrainingRun


class AdminService:
    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        catalog: ModelCatalog,
        trainer: Trainer,
        cycle: LearningCycle,
        judge: Judge,
        promoter: Promoter,
        practice: Practice,
        schedule: Schedule | None,
        background: set[asyncio.Task[Any]],  # the evals started here, held until they end
        leadership: Leadership,
        replica: Replica,
        canaries: Canaries,
    ) -> None:
        self.sessions = sessions
        self.catalog = catalog
        self.trainer = trainer
        self.cycle = cycle
        self.judge = judge
        self.promoter = promoter
        self.practice = practice
        self.schedule = schedule
        self.background = background
        self.leadership = leadership
        self.replica = replica
        self.canaries = canaries

    async def _lead(self) -> None:
        """Raises NotLeader (naming the leader) unless this replica runs the learning loop:
        cycles, evals and their cancellation happen on the leader only."""
        if self.leadership.leading:
            return
        lease = await asyncio.to_thread(self.leadership.current)
        alive = lease is not None and lease.expires_in_s > 0
        raise NotLeader(
            f"this gateway (replica {self.leadership.holder}) does not run the learning loop",
            holder=lease.holder if alive and lease else None,
            holder_url=lease.holder_url if alive and lease else None)

    async def train(self, request: TrainRequest) -> int:
        """Start a learning cycle; its training run's id once recorded. Raises TrainerBusy,
        NotLeader."""
        await self._lead()
        return await self.cycle.start(request)

    async def status(self) -> dict[str, Any]:
        """Champion, candidates, recent runs and decisions, the last cycle, the next one."""

        def read() -> dict[str, Any]:
            with self.sessions() as session:
                return learning_status(session)

        found = await asyncio.to_thread(read)
        schedule, cycle = self.schedule, self.cycle
        return {
            **found, "serving": self.catalog.champion or "base",
            "cycle": {"running": cycle.running, "training_run": self.trainer.running_run,
                      "last": vars(cycle.last) if cycle.last else None},
            "schedule": {"enabled": schedule is not None,
                         "next_run": schedule.next_run() if schedule else None,
                         "min_new_feedback": schedule.min_new_feedback if schedule else None,
                         "new_feedback": (await asyncio.to_thread(cycle.new_feedback))[0]},
            "practice": self.practice.status(),
            "canary": await asyncio.to_thread(self.canaries.status),
            # Which isolation python_tests runs under here, or why it is off (probed once).
            "sandbox": await asyncio.to_thread(sandbox.describe),
            "cluster": await asyncio.to_thread(self._cluster),
        }

    def _cluster(self) -> dict[str, Any]:
        """Who leads, and every replica with what each of its vLLM servers serves."""
        lease = self.leadership.current()
        stale_s = self.replica.stale_s
        return {
            "replica": self.leadership.holder, "leading": self.leadership.leading,
            "leader": ({"replica": lease.holder, "url": lease.holder_url, "epoch": lease.epoch,
                        "expires_in_s": round(lease.expires_in_s, 1)}
                       if lease is not None and lease.expires_in_s > 0 else None),
            "replicas": [
                {"replica": p.replica_id, "url": p.url, "alive": p.alive(stale_s),
                 "seen_s_ago": round(p.seen_s_ago, 1), "leader": p.leader,
                 "champion": p.champion or "base", "servers": p.servers,
                 "agrees": p.champion == self.catalog.champion
                 and all(s.get("serves_champion", False) for s in p.servers)}
                for p in self.replica.peers()],
        }

    async def training_run(self, run_id: int) -> TrainingRunOut | None:
        def read() -> dict[str, Any] | None:
            with self.sessions() as session:
                row = session.get(TrainingRun, run_id)
                return describe_run(row) if row is not None else None

        found = await asyncio.to_thread(read)
        return TrainingRunOut(**found) if found is not None else None

    async def cancel(self, run_id: int) -> None:
        """Ask the running run `run_id` to stop. Raises NotTheRunningRun, NotLeader."""
        await self._lead()
        await self.trainer.cancel(run_id)

    async def adapters(self) -> list[dict[str, Any]]:
        def read() -> list[dict[str, Any]]:
            with self.sessions() as session:
                return adapter_rows(session)

        return await asyncio.to_thread(read)

    async def adapter(self, version: str) -> dict[str, Any]:
        """Raises UnknownAdapter."""

        def read() -> dict[str, Any]:
            with self.sessions() as session:
                return adapter_detail(session, version=version)

        return await asyncio.to_thread(read)

    async def evaluate(self, candidate: str, *, against: str | None) -> int:
        """Start judging `candidate`; its eval run's id once recorded, the judging going on in
        the background. Raises what refused it before a run was recorded (UnknownAdapter,
        NothingToJudge, AdapterError, SuiteError, NotLeader)."""
        await self._lead()
        return await start_in_background(
            lambda on_started: self.judge.judge(candidate, against=against, on_started=on_started),
            self.background)

    async def eval_run(self, run_id: int) -> EvalRunOut | None:
        def read() -> EvalRunOut | None:
            with self.sessions() as session:
                row = session.get(EvalRun, run_id)
                if row is None:
                    return None
                decision = gate_decision_for_run(session, eval_run_id=run_id)
                return EvalRunOut(
                    id=row.id, status=row.status, candidate_version=row.candidate_version,
                    baseline_version=row.baseline_version, started_at=row.started_at.isoformat(),
                    finished_at=row.finished_at.isoformat() if row.finished_at else None,
                    error=row.error, summary=row.summary,
                    decision=decision.details if decision is not None else None,
                )

        return await asyncio.to_thread(read)

    async def promote(self, version: str, *, by: str, forced: bool,
                      reason: str | None) -> PromotedOut:
        """Raises PromotionRefused, AdapterError, AdapterLoadFailed, UnknownAdapter."""
        return _moved(await self.promoter.promote(version, by=by, forced=forced, reason=reason))

    async def start_canary(self, version: str, *, by: str) -> TrialView:
        """Raises CanaryRefused, NotLeader, UnknownAdapter, AdapterError, AdapterLoadFailed."""
        await self._lead()
        return await self.canaries.start_canary(version, by=by)

    async def stop_canary(self, *, by: str) -> TrialView:
        """Raises CanaryRefused, NotLeader."""
        await self._lead()
        return await self.canaries.stop_canary(by=by)

    async def rollback(self, *, by: str, to: str | None, reason: str | None) -> PromotedOut:
        """Raises NothingToRollBack, PromotionRefused, AdapterError, AdapterLoadFailed."""
        return _moved(await self.promoter.rollback(by=by, to=to, reason=reason))


def _moved(done: Promoted) -> PromotedOut:
    return PromotedOut(champion=done.version, previous=done.previous, forced=done.forced,
                       lagging=list(done.lagging))
