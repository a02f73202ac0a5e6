"""The learning cycle: train -> judge -> promote, one cycle at a time, on a schedule and on data.

A cycle starts the trainer (its own process), waits for its run, judges the candidate it made
against the champion through vLLM, and, when the gate approves and `auto_promote` is on, promotes
it (by "gate"). Each step's outcome is already on record (training run, eval run, gate decision,
promotion); the cycle adds its own short summary to `last` for `lifelong status`.

Triggers (APScheduler, in the daemon's event loop): an interval or a cron schedule, and a data
trigger checked every `check_every_s` that fires once at least `min_new_feedback` training-split
feedback items arrived since the last run's data watermark. A trigger that finds a cycle running
does nothing (the running one will see the same data). Nothing here touches serving: the trainer
is another process and the judge talks to vLLM like any client.

A candidate the gate left waiting ("not enough evidence": too few held-out items to show its
gain) is judged again by the same data job once `rejudge_new_heldout` more held-out items (the
target suites: held-out tasks and held-out feedback) exist than when it was last judged, and
promoted if approved then, as a cycle would.

The interval schedule is anchored on the last training run's start in the store, so a restart
keeps the rhythm instead of training at once or never; a run cut short by a restart was marked
interrupted at start-up (`Trainer.recover`), and the next cycle starts cleanly.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from lifelong.daemon.canary import CanaryRefused
from lifelong.daemon.judge import Judge, NothingToJudge
from lifelong.daemon.promotion import Promoter
from lifelong.daemon.trainer import Trainer, TrainerBusy, TrainRequest
from lifelong.evals.suites import feedback_suite, target_suites
from lifelong.feedback_store import registry
from lifelong.feedback_store.eval_results import latest_gate_decision
from lifelong.feedback_store.models import EvalRun, TrainingRun
from lifelong.feedback_store.training_data import count_feedback_since

logger = logging.getLogger(__name__)

T = TypeVar("T")


class NotStarted(Exception):
    """A background job ended before recording its run; `result` is what it returned."""

    def __init__(self, result: Any) -> None:
        super().__init__("ended before recording a run")
        self.result = result


async def start_in_background(
    job: Callable[[Callable[[int], None]], Coroutine[Any, Any, T]],
    background: set[asyncio.Task[Any]],
) -> int:
    """Start `job(on_started)` as a task and return the run id it passes to `on_started` as soon
    as it does; the task goes on in `background` (which holds it until it ends). Raises what the
    job raised, or NotStarted, if it ended before recording a run."""
    started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(job(started.set_result))
    either: set[asyncio.Future[Any]] = {task, started}
    await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    if not started.done():
        raise NotStarted(task.result())
    background.add(task)
    task.add_done_callback(background.discard)
    return started.result()


@dataclass
class CycleReport:
    trigger: str
    started_at: str
    finished_at: str | None = None
    training_run_id: int | None = None
    candidate: str | None = None
    eval_run_id: int | None = None
    decision: str | None = None
    promoted: bool = False
    outcome: str = "running"  # running | promoted | canary | approved | rejected | skipped | ...
    reason: str | None = None
    steps: list[str] = field(default_factory=list)


class LearningCycle:
    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        trainer: Trainer,
        judge: Judge,
        promoter: Promoter,
        auto_promote: bool,
        canary: Callable[[str], Awaitable[object]] | None = None,
    ) -> None:
        self.sessions = sessions
        self.trainer = trainer
        self.judge = judge
        self.promoter = promoter
        self.auto_promote = auto_promote
        self.canary = canary  # tries an approved candidate on a share of users first
        self.last: CycleReport | None = None
        self._lock = asyncio.Lock()
        self._background: set[asyncio.Task[CycleReport | None]] = set()

    @property
    def running(self) -> bool:
        return self._lock.locked()

    async def run(
        self, request: TrainRequest, *, on_started: Callable[[int], None] | None = None
    ) -> CycleReport | None:
        """One whole cycle; None if one is already running. `on_started(run_id)` once the
        training run is recorded. Never raises: a failed step ends the cycle with its reason
        (and is on record where it failed)."""
        return await self._guarded(
            CycleReport(trigger=request.requested_by, started_at=datetime.now(UTC).isoformat()),
            lambda report: self._cycle(request, report, on_started))

    async def rejudge(self, candidate: str) -> CycleReport | None:
        """Judge a waiting candidate again (more held-out data arrived) and act on the verdict
        as a cycle does; None if a cycle is running. Never raises, as `run`."""
        return await self._guarded(
            CycleReport(trigger="heldout", started_at=datetime.now(UTC).isoformat(),
                        candidate=candidate),
            lambda report: self._judge_and_act(candidate, report))

    async def _guarded(
        self, report: CycleReport, steps: Callable[[CycleReport], Awaitable[None]]
    ) -> CycleReport | None:
        if self._lock.locked():
            logger.info("learning cycle already running; trigger ignored",
                        extra={"trigger": report.trigger})
            return None
        async with self._lock:
            self.last = report
            try:
                await steps(report)
            except asyncio.CancelledError:
                report.outcome, report.reason = "interrupted", "the daemon stopped"
                raise
            except Exception as exc:  # the daemon serves on whatever a step did
                logger.exception("learning cycle failed")
                report.outcome, report.reason = "failed", f"{type(exc).__name__}: {exc}"
            finally:
                report.finished_at = datetime.now(UTC).isoformat()
                logger.info("learning cycle ended", extra={"cycle": vars(report)})
            return report

    async def start(self, request: TrainRequest) -> int:
        """Start a cycle in the background; its training run's id once recorded.
        Raises TrainerBusy (a cycle is running), or what kept the trainer from starting."""
        if self._lock.locked():
            raise TrainerBusy(self.trainer.running_run)
        try:
            return await start_in_background(
                lambda on_started: self.run(request, on_started=on_started), self._background)
        except NotStarted as exc:
            report = exc.result
            raise TrainerBusy(None) if report is None else RuntimeError(report.reason) from None

    async def stop(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    async def _cycle(self, request: TrainRequest, report: CycleReport,
                     on_started: Callable[[int], None] | None) -> None:
        report.training_run_id = await self.trainer.start(request)
        if on_started is not None:
            on_started(report.training_run_id)
        await self.trainer.wait()
        run = await asyncio.to_thread(self._training_run, report.training_run_id)
        report.steps.append(f"training run {run.id}: {run.status}")
        if run.status != "succeeded" or run.adapter_version is None:
            report.outcome = run.status
            report.reason = (run.metrics or {}).get("reason") or run.error
            return
        report.candidate = run.adapter_version
        await self._judge_and_act(run.adapter_version, report)

    async def _judge_and_act(self, candidate: str, report: CycleReport) -> None:
        try:
            judgement = await self.judge.judge(candidate)
        except NothingToJudge as exc:
            report.outcome, report.reason = "not_judged", str(exc)
            return
        report.eval_run_id = judgement.eval_run_id
        report.decision = judgement.decision.status
        report.steps.append(f"eval run {judgement.eval_run_id}: {judgement.decision.status}")
        if judgement.decision.status != "approved":
            report.outcome, report.reason = "rejected", judgement.decision.reasons[0]
            return
        if not self.auto_promote:
            report.outcome, report.reason = "approved", "schedule.auto_promote is off"
            return
        if self.canary is not None:
            try:
                await self.canary(candidate)
            except CanaryRefused as exc:  # another canary is still deciding
                report.outcome, report.reason = "approved", str(exc)
                return
            report.outcome = "canary"
            report.steps.append(f"canary of {candidate} started")
            return
        await self.promoter.promote(candidate, by="gate", leader_only=True)
        report.promoted, report.outcome = True, "promoted"
        report.steps.append(f"promoted {candidate}")

    def _training_run(self, run_id: int) -> TrainingRun:
        with self.sessions() as session:
            row = session.get(TrainingRun, run_id)
            assert row is not None  # the trainer recorded it
            return row

    def new_feedback(self) -> tuple[int, int]:
        """(new training-split feedback items, the watermark they are counted from): since the
        latest training run's data, else the champion's, else the beginning."""
        with self.sessions() as session:
            last = session.scalar(select(func.max(TrainingRun.data_watermark)))
            champion = registry.champion(session)
            watermark = last or (champion.data_watermark if champion else None) or 0
            return count_feedback_since(session, watermark=watermark), watermark


    def waiting_for_evidence(self, new_heldout: int) -> str | None:
        """The newest candidate the gate left waiting against the current champion, if at least
        `new_heldout` held-out items were added to the target suites since that judgement."""
        with self.sessions() as session:
            waiting = registry.list_adapters(session, status="candidate")
            if not waiting:
                return None
            candidate = max(waiting, key=lambda row: (row.created_at, row.version))
            decision = latest_gate_decision(session, candidate_version=candidate.version)
            champion = registry.champion(session)
            if (decision is None or decision.status != "not_enough_evidence"
                    or decision.champion_version != (champion.version if champion else None)):
                return None
            run = session.get(EvalRun, decision.eval_run_id)
            judged = sum(suite["items"] for suite in (run.config if run else {})
                         .get("suites", {}).values() if suite["kind"] == "target")
            feedback = feedback_suite(session)
            now = sum(len(suite.items) for suite in target_suites(session)) + (
                len(feedback.items) if feedback else 0)
        return candidate.version if now - judged >= new_heldout else None


FAILURE_BACKOFF = timedelta(minutes=10)


def backing_off(last: CycleReport | None, now: datetime) -> bool:
    """Whether the data trigger should wait: the last cycle failed recently. Without this, a
    cause that fails every run before it reads any data (a missing base model) would start a
    trainer at every check."""
    if last is None or last.outcome not in ("failed", "interrupted") or last.finished_at is None:
        return False
    return now - datetime.fromisoformat(last.finished_at) < FAILURE_BACKOFF


class Schedule:
    """The cycle's triggers: a schedule (interval or cron) and the data trigger."""

    def __init__(
        self,
        cycle: LearningCycle,
        *,
        interval_minutes: float | None,
        cron: str | None,
        min_new_feedback: int,
        check_every_s: float,
        rejudge_new_heldout: int = 0,
    ) -> None:
        self.cycle = cycle
        self.rejudge_new_heldout = rejudge_new_heldout
        self.interval_minutes = interval_minutes
        self.cron = cron
        self.min_new_feedback = min_new_feedback
        self.check_every_s = check_every_s
        self.scheduler = AsyncIOScheduler(timezone=UTC)

    async def start(self) -> None:
        if self.cron:
            trigger: Any = CronTrigger.from_crontab(self.cron, timezone=UTC)
        elif self.interval_minutes:
            trigger = IntervalTrigger(minutes=self.interval_minutes,
                                      start_date=await asyncio.to_thread(self._anchor))
        else:
            trigger = None
        # A new scheduler at each start: the leader's loop starts again after a lost and
        # regained leadership.
        self.scheduler = AsyncIOScheduler(timezone=UTC)
        if trigger is not None:
            self.scheduler.add_job(self._scheduled, trigger, id="schedule", max_instances=1,
                                   coalesce=True, misfire_grace_time=None)
        if self.min_new_feedback > 0 or self.rejudge_new_heldout > 0:
            self.scheduler.add_job(self._data_check, IntervalTrigger(seconds=self.check_every_s),
                                   id="data", max_instances=1, coalesce=True)
        self.scheduler.start()
        logger.info("learning schedule started", extra={"next": self.next_run()})

    def _anchor(self) -> datetime:
        """The next interval tick after the last training run's start (now, if overdue)."""
        with self.cycle.sessions() as session:
            last = session.scalar(select(func.max(TrainingRun.started_at)))
        now = datetime.now(UTC)
        if last is None or self.interval_minutes is None:
            return now + timedelta(minutes=self.interval_minutes or 0)
        return max(now + timedelta(seconds=1), last + timedelta(minutes=self.interval_minutes))

    async def _scheduled(self) -> None:
        await self.cycle.run(TrainRequest(requested_by="schedule"))

    async def _data_check(self) -> None:
        if self.cycle.running or backing_off(self.cycle.last, datetime.now(UTC)):
            return
        if self.min_new_feedback > 0:
            new, watermark = await asyncio.to_thread(self.cycle.new_feedback)
            if new >= self.min_new_feedback:
                logger.info("data trigger", extra={"new_feedback": new, "since": watermark})
                await self.cycle.run(TrainRequest(requested_by="data"))
                return
        if self.rejudge_new_heldout > 0 and (candidate := await asyncio.to_thread(
                self.cycle.waiting_for_evidence, self.rejudge_new_heldout)):
            logger.info("more held-out data: judging the waiting candidate again",
                        extra={"candidate": candidate})
            await self.cycle.rejudge(candidate)

    def next_run(self) -> str | None:
        job = self.scheduler.get_job("schedule")
        return job.next_run_time.isoformat() if job and job.next_run_time else None

    async def stop(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
