"""Practice: between user requests, the daemon learns on its own from verifiable tasks (GRPO).

Two duties, both off the serving path:

- **The idle trigger** (APScheduler, every `schedule.check_every_s`): once no cycle is running,
  users have been quiet for `schedule.practice.idle_s`, the last run that practised (grpo alone
  or a recipe ending in grpo) started more than `every_minutes` ago and the store holds
  train-split tasks with an installed verifier, it runs a learning cycle with methods ["grpo"].
  Its candidate is judged, gated and promoted like any other; the cycle's lock keeps it from
  overlapping the data trigger or the schedule.
- **Yielding**: while the trainer runs a GRPO run (practice, `POST /admin/train`, or a recipe
  with grpo), a user request's arrival creates the pause file the run checks before each
  rollout request and optimizer step (`adapters.pause_file`), and the file goes once users have
  been quiet for `training.grpo.quiet_ms`. The run's process is also started at
  `training.grpo.nice`, so on a CPU host its arithmetic never outbids vLLM or the gateway.
  Requests already sent finish (one group each, at most `training.grpo.concurrency`).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from lifelong.adapters.pause_file import pause, resume, run_waiting, waiting_marker
from lifelong.daemon.learning_cycle import LearningCycle, backing_off
from lifelong.daemon.settings import GrpoSettings, PracticeSettings
from lifelong.daemon.trainer import Trainer, TrainRequest
from lifelong.daemon.user_traffic import UserTraffic
from lifelong.evals.verifiers import usable_verifier, verifier_names
from lifelong.feedback_store.models import TrainingRun
from lifelong.feedback_store.rollouts import practice_tasks, tasks_from_outcomes

logger = logging.getLogger(__name__)

RESUME_POLL_S = 0.02
GRPO = "grpo"


class Practice:
    def __init__(
        self,
        *,
        settings: PracticeSettings,
        grpo: GrpoSettings,
        recipe: list[str],
        traffic: UserTraffic,
        trainer: Trainer,
        cycle: LearningCycle,
        sessions: sessionmaker[Session],
        pause_file: Path,
        check_every_s: float,
        trigger: bool,
    ) -> None:
        self.settings = settings
        self.grpo = grpo
        self.recipe = recipe
        self.traffic = traffic
        self.trainer = trainer
        self.cycle = cycle
        self.sessions = sessions
        self.pause_file = pause_file
        self.check_every_s = check_every_s
        self.trigger = trigger and settings.enabled  # off with the schedule, or on its own
        self.paused = False
        self.pauses = 0
        self.last_check: str | None = None  # why the last idle check did not practise
        self._resumer: asyncio.Task[None] | None = None
        self._scheduler = AsyncIOScheduler(timezone=UTC)
        self._listening = False

    # --- what the trainer asks ------------------------------------------------------------

    def yields(self, request: TrainRequest) -> bool:
        """Whether the run `request` starts samples from vLLM, and so must make way for users."""
        return self.grpo.yield_to_users and GRPO in (request.methods or self.recipe)

    def niceness(self, request: TrainRequest) -> int:
        return self.grpo.nice if GRPO in (request.methods or self.recipe) else 0

    def arguments(self, request: TrainRequest) -> list[str]:
        """The `lifelong train` options that make the run watch the pause file."""
        return ["--pause-file", str(self.pause_file)] if self.yields(request) else []

    # --- life cycle --------------------------------------------------------------------------

    async def start(self) -> None:
        resume(self.pause_file)  # files left by a daemon (or a run) that died mid-pause
        waiting_marker(self.pause_file).unlink(missing_ok=True)
        if not self._listening:  # started again after a lost and regained leadership
            self.traffic.on_arrival(self._user_arrived)
            self._listening = True
        if self.trigger:
            self._scheduler = AsyncIOScheduler(timezone=UTC)
            self._scheduler.add_job(self.check, IntervalTrigger(seconds=self.check_every_s),
                                    id="practice", max_instances=1, coalesce=True)
            self._scheduler.start()

    async def stop(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        if self._resumer is not None:
            self._resumer.cancel()
        resume(self.pause_file)

    # --- yielding ----------------------------------------------------------------------------

    def _yielding_run(self) -> bool:
        request = self.trainer.running_request
        return request is not None and self.yields(request)

    def _user_arrived(self) -> None:
        if self.paused or not self._yielding_run():
            return
        pause(self.pause_file)
        self.paused = True
        self.pauses += 1
        self._resumer = asyncio.get_running_loop().create_task(self._resume_when_quiet())

    async def _resume_when_quiet(self) -> None:
        quiet_s = self.grpo.quiet_ms / 1000.0
        try:
            while self._yielding_run() and self.traffic.quiet_for() < quiet_s:
                await asyncio.sleep(RESUME_POLL_S)
        finally:
            resume(self.pause_file)
            self.paused = False

    # --- the idle trigger --------------------------------------------------------------------

    async def check(self) -> None:
        """Start a practice cycle if everything says it is time (see the module docstring)."""
        reason = await self._not_now()
        self.last_check = reason
        if reason is None:
            logger.info("practice: users quiet, starting a GRPO cycle")
            await self.cycle.run(TrainRequest(requested_by="practice", methods=(GRPO,)))

    async def _not_now(self) -> str | None:
        if self.cycle.running:
            return "a learning cycle is running"
        if backing_off(self.cycle.last, datetime.now(UTC)):
            return "the last cycle failed recently"
        quiet = self.traffic.quiet_for()
        if quiet < self.settings.idle_s:
            return f"users were active {quiet:.0f} s ago (idle_s {self.settings.idle_s:g})"
        return await asyncio.to_thread(self._not_due)

    def _not_due(self) -> str | None:
        with self.sessions() as session:
            last = session.scalar(select(func.max(TrainingRun.started_at))
                                  .where(TrainingRun.method.like(f"%{GRPO}")))
            if last is not None:
                last = last if last.tzinfo else last.replace(tzinfo=UTC)
                due = last + timedelta(minutes=self.settings.every_minutes)
                if datetime.now(UTC) < due:
                    return f"the last GRPO run started at {last.isoformat()}; next at " \
                           f"{due.isoformat()}"
            if practice_tasks(session, verifiers=verifier_names(), tag=self.grpo.task_tag):
                return None
        # Only when due and short of tasks: a write and a scan of the outcomes, not every check.
        with self.sessions.begin() as session:
            if tasks_from_outcomes(session, verifiers=verifier_names(), usable=usable_verifier) \
                    and practice_tasks(session, verifiers=verifier_names(), tag=self.grpo.task_tag):
                return None
        return "no train-split task with an installed verifier to practise on"

    def status(self) -> dict[str, object]:
        # paused: the run was asked to wait; run_waiting: it has stopped at a safe point.
        return {"enabled": self.trigger, "paused": self.paused, "pauses": self.pauses,
                "run_waiting": self._yielding_run() and run_waiting(self.pause_file),
                "last_check": self.last_check}
