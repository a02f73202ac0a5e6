"""The daemon's trainer: one training run at a time, in a process of its own, watched, timed and
cancellable.

Training never runs inside the serving process: its crash, OOM kill or hang must change nothing
for serving. The daemon records a `running` run and its runner (`training.runner`) carries it out:

- `ChildRunner` ("child"): `python -m lifelong.daemon.cli train --run-id N`, with the daemon's
  exact settings, as a child of this process, watched here;
- `WorkerRunner` ("worker"): nothing starts here. The run waits in the database, unclaimed, until
  a `lifelong trainer` process (its own pod or GPU node: `daemon/trainer_worker.py`) claims it and
  starts the same child there, watched there by a `ChildRunner` of its own; the daemon watches
  the row.

A child is watched the same way wherever it runs:

- the child finishes its own run (succeeded, skipped, or failed with the error);
- a child that dies without finishing it (SIGKILL, the OOM killer, a segfault) gets its run
  marked failed by its parent, with the exit status and the end of its log;
- past `timeout_s` the run is marked failed ("timed out") and the child is stopped;
- `cancel` asks the child to stop (SIGTERM: it marks the run failed as cancelled and registers
  nothing), and kills it after a grace period;
- at shutdown the run is marked interrupted and the child stopped.

A worker's run is ended in the database instead (cancelled, timed out, interrupted at shutdown,
or interrupted once the worker's claim ran out: it died with its child, or lost the database),
and the worker stops its child when it reads that. The first end written is the truth: the
store refuses a second one, so a late write from a child that was already given up on changes
nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy.orm import Session, sessionmaker

from lifelong.daemon.settings import ENV_PREFIX
from lifelong.daemon.supervisor import new_group_dying_with_parent, tail
from lifelong.feedback_store.models import TrainingRun
from lifelong.feedback_store.runs import (
    WORKER,
    WorkerRunState,
    finish_training_run,
    interrupt_dead_training_runs,
    release_claim,
    start_training_run,
    worker_run_state,
)

logger = logging.getLogger(__name__)

POLL_S = 1.0  # how often a worker's run is read: by the daemon, and by the worker


class TrainerBusy(Exception):
    def __init__(self, run_id: int | None) -> None:
        super().__init__(f"training run {run_id} is still running; cancel it or wait"
                         if run_id is not None else "a learning cycle is running; wait for it")
        self.run_id = run_id


class NotTheRunningRun(Exception):
    def __init__(self, run_id: int) -> None:
        super().__init__(f"training run {run_id} is not running in this daemon")
        self.run_id = run_id


@dataclass(frozen=True)
class TrainRequest:
    requested_by: str  # a principal, or "schedule"
    methods: tuple[str, ...] | None = None  # None: training.recipe
    fresh: bool = False
    now: bool = False  # train even below training.min_new_examples

    def arguments(self) -> list[str]:
        """The `lifelong train` options that carry this request."""
        args = [arg for method in self.methods or () for arg in ("--method", method)]
        return args + ["--fresh"] * self.fresh + ["--now"] * self.now

    @classmethod
    def of_run(cls, config: dict[str, Any]) -> TrainRequest:
        """The request a run was recorded with (its config's "request")."""
        fields = config["request"]
        methods = fields.get("methods")
        return cls(requested_by=fields["requested_by"], methods=tuple(methods) if methods else None,
                   fresh=bool(fields.get("fresh")), now=bool(fields.get("now")))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive, not ours to judge
        return True
    return True


def exit_reason(returncode: int) -> str:
    if returncode < 0:
        name = signal.Signals(-returncode).name
        hint = " (the out-of-memory killer, or kill -9?)" if name == "SIGKILL" else ""
        return f"the trainer process was killed by {name}{hint}"
    return f"the trainer process exited with status {returncode}"


def trainer_command(
    settings_file: Path, extra: Callable[[TrainRequest], list[str]] = lambda request: [],
) -> Callable[[int, TrainRequest], list[str]]:
    """`lifelong train` for one run the daemon recorded, with the daemon's exact settings (and
    `extra(request)`'s options)."""

    def command(run_id: int, request: TrainRequest) -> list[str]:
        return [
            sys.executable, "-m", "lifelong.daemon.cli", "train", "--config", str(settings_file),
            "--run-id", str(run_id), "--no-progress", *request.arguments(), *extra(request),
        ]

    return command


def trainer_env() -> dict[str, str]:
    # The settings file holds every effective value; LIFELONG_* variables would override it.
    env = {key: value for key, value in os.environ.items() if not key.startswith(ENV_PREFIX)}
    return {**env, "OMP_WAIT_POLICY": "PASSIVE"}


class Launched(Protocol):
    """A recorded run that a runner is carrying out."""

    async def ended(self) -> None:
        """Until the run has ended and is recorded (and its process here, if any, exited)."""

    async def cancel(self) -> None:
        """Stop it as cancelled: it ends failed and registers nothing."""

    async def interrupt(self, reason: str) -> None:
        """End it as interrupted (`reason`) and stop its process; returns once it has ended."""


class Runner(Protocol):
    """How the trainer carries out a run it recorded (`ChildRunner`, `WorkerRunner`)."""

    host: str | None  # the run's host as recorded: this one, or None until a worker claims it
    marker: dict[str, Any]  # added to the run's config

    async def launch(self, run_id: int, request: TrainRequest) -> Launched:
        """Start carrying out the recorded run. Raises OSError (after ending the run failed)."""


@dataclass
class _Current:
    run_id: int
    request: TrainRequest
    launched: Launched


class Trainer:
    """Carries out training runs one at a time through its runner; see the module docstring."""

    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        runner: Runner,
        fence: Callable[[Session], None] = lambda session: None,
    ) -> None:
        self.sessions = sessions
        self.runner = runner
        self.fence = fence  # in the run's opening transaction: raises unless this replica leads
        self.host = socket.gethostname()
        self._current: _Current | None = None
        self._watch: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def running_run(self) -> int | None:
        return self._current.run_id if self._current is not None else None

    @property
    def running_request(self) -> TrainRequest | None:
        return self._current.request if self._current is not None else None

    async def recover(self) -> list[int]:
        """Mark the runs left by earlier leaders as interrupted: this host's whose process is
        gone, other hosts' daemon-started ones, and those left to trainer workers (call when
        this replica starts leading)."""

        def recover() -> list[int]:
            with self.sessions.begin() as session:
                return interrupt_dead_training_runs(session, host=self.host, alive=pid_alive,
                                                    other_hosts=True)

        ended = await asyncio.to_thread(recover)
        if ended:
            logger.warning("training runs interrupted by the last shutdown", extra={"runs": ended})
        return ended

    async def start(self, request: TrainRequest) -> int:
        """Record a running run and have the runner carry it out. Raises TrainerBusy, or what
        kept the runner from starting it (the run is then ended failed)."""
        async with self._lock:
            if self._current is not None:
                raise TrainerBusy(self._current.run_id)
            run_id = await asyncio.to_thread(self._open_run, request)
            launched = await self.runner.launch(run_id, request)
            current = self._current = _Current(run_id, request, launched)
            self._watch = asyncio.create_task(self._until_ended(current))
            return run_id

    async def cancel(self, run_id: int) -> None:
        """Stop the running run as cancelled (a child gets SIGTERM, and SIGKILL after the grace
        period). Raises NotTheRunningRun."""
        current = self._current
        if current is None or current.run_id != run_id:
            raise NotTheRunningRun(run_id)
        await current.launched.cancel()

    async def wait(self) -> None:
        """Until the current run (if any) has ended and is recorded."""
        if self._watch is not None:
            await asyncio.shield(self._watch)

    async def stop(self) -> None:
        """At shutdown: the running run is marked interrupted, then its process stopped."""
        current = self._current
        if current is not None:
            await current.launched.interrupt("the daemon stopped during training")
            await self.wait()

    def _open_run(self, request: TrainRequest) -> int:
        with self.sessions.begin() as session:
            self.fence(session)
            return start_training_run(
                session, method="+".join(request.methods) if request.methods else "recipe",
                parent_version=None, config={"request": asdict(request), **self.runner.marker},
                host=self.runner.host,
            ).id

    async def _until_ended(self, current: _Current) -> None:
        try:
            await current.launched.ended()
        finally:
            self._current = None


# --- a child of this process ---------------------------------------------------------------


@dataclass
class TrainingChild:
    """A `lifelong train` child carrying out one run (what `ChildRunner.launch` gives)."""

    run_id: int
    request: TrainRequest
    process: asyncio.subprocess.Process
    log_path: Path
    runner: ChildRunner
    ending: str | None = None  # why its parent is stopping it, if it is
    watch: asyncio.Task[None] | None = None

    async def ended(self) -> None:
        assert self.watch is not None  # set by launch
        await asyncio.shield(self.watch)

    async def cancel(self) -> None:
        self.stop("cancelled")

    async def interrupt(self, reason: str) -> None:
        self.ending = "interrupted"
        await end_run(self.runner.sessions, self.run_id, reason, status="interrupted")
        self.stop("interrupted")
        await self.ended()

    def stop(self, ending: str) -> None:
        """SIGTERM now (the trainer cancels itself), SIGKILL after the grace period; `ending`:
        why, for the run's error should the child not end the run itself."""
        self.ending = self.ending or ending
        _signal(self.process, signal.SIGTERM)
        asyncio.get_running_loop().call_later(
            self.runner.grace_s, lambda: _signal(self.process, signal.SIGKILL)
        )


class ChildRunner:
    """Carries out each run as a child process of this one (`command(run_id, request)`, in its
    own process group that dies with this process), watched until it exits."""

    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        command: Callable[[int, TrainRequest], Sequence[str]],
        env: dict[str, str],
        log_dir: Path,
        timeout_s: float,
        grace_s: float = 30.0,
        niceness: Callable[[TrainRequest], int] = lambda request: 0,
    ) -> None:
        self.sessions = sessions
        self.command = command
        self.niceness = niceness  # added to the child's CPU niceness
        self.env = env
        self.log_dir = log_dir
        self.timeout_s = timeout_s
        self.grace_s = grace_s
        self.host: str | None = socket.gethostname()
        self.marker: dict[str, Any] = {}

    async def launch(self, run_id: int, request: TrainRequest) -> TrainingChild:
        """Start the child for the recorded run, and its watch. Raises OSError (the run is
        ended failed first)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"trainer-{run_id}.log"
        nice = self.niceness(request)

        def prepare() -> None:  # in the child, before exec
            new_group_dying_with_parent()
            if nice:
                os.nice(nice)

        try:
            with log_path.open("ab") as log:
                process = await asyncio.create_subprocess_exec(
                    *self.command(run_id, request), env=self.env, stdin=asyncio.subprocess.DEVNULL,
                    stdout=log, stderr=asyncio.subprocess.STDOUT,
                    preexec_fn=prepare,
                )
        except OSError as exc:
            await end_run(self.sessions, run_id, f"cannot start the trainer process: {exc}")
            raise
        child = TrainingChild(run_id, request, process, log_path, self)
        child.watch = asyncio.create_task(self._watch(child))
        logger.info("training run started", extra={"run_id": run_id, "pid": process.pid,
                                                    "request": asdict(request)})
        return child

    async def _watch(self, child: TrainingChild) -> None:
        process = child.process
        try:
            try:
                await asyncio.wait_for(asyncio.shield(process.wait()), self.timeout_s)
            except TimeoutError:
                child.ending = "timed out"
                await end_run(self.sessions, child.run_id, f"timed out after "
                              f"{self.timeout_s:.0f} s (training.timeout_s)")
                child.stop("timed out")
                await process.wait()
            assert process.returncode is not None
            reason = exit_reason(process.returncode)
            if child.ending:
                reason = f"{child.ending}: {reason}"
            ended = await end_run(self.sessions, child.run_id, f"{reason}; log: {child.log_path}\n"
                                  f"{tail(child.log_path, lines=10)}")
            status = await asyncio.to_thread(_status, self.sessions, child.run_id)
            log = logger.warning if ended else logger.info
            log("training run ended", extra={"run_id": child.run_id, "status": status,
                                             "returncode": process.returncode})
        except Exception:  # the watcher must never take the daemon down
            logger.exception("watching training run %s failed", child.run_id)
        finally:
            # A group-wide kill: the child's own children (data loaders) go with it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)


# --- a trainer worker elsewhere ------------------------------------------------------------


@dataclass
class QueuedRun:
    """A run left in the database for a trainer worker (what `WorkerRunner.launch` gives)."""

    run_id: int
    runner: WorkerRunner
    watch: asyncio.Task[None] | None = None

    async def ended(self) -> None:
        assert self.watch is not None  # set by launch
        await asyncio.shield(self.watch)

    async def cancel(self) -> None:
        await end_run(self.runner.sessions, self.run_id,
                      "cancelled (the trainer worker stops its process)")

    async def interrupt(self, reason: str) -> None:
        await end_run(self.runner.sessions, self.run_id, reason, status="interrupted")
        await self.ended()


class WorkerRunner:
    """Leaves each run in the database for a `lifelong trainer` worker, and reads its row every
    `poll_s` until it has ended: past `timeout_s` (from now: waiting for a worker counts) it ends
    it failed, and once the claim of the worker that took it has run out, interrupted."""

    def __init__(self, *, sessions: sessionmaker[Session], timeout_s: float,
                 poll_s: float = POLL_S) -> None:
        self.sessions = sessions
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self.host: str | None = None  # set by the worker that claims it
        self.marker: dict[str, Any] = {"runner": WORKER}

    async def launch(self, run_id: int, request: TrainRequest) -> QueuedRun:
        run = QueuedRun(run_id, self)
        run.watch = asyncio.create_task(self._watch(run))
        logger.info("training run queued for a trainer worker",
                    extra={"run_id": run_id, "request": asdict(request)})
        return run

    async def _watch(self, run: QueuedRun) -> None:
        started = time.monotonic()
        while True:
            try:
                if await self._check(run.run_id, waited_s=time.monotonic() - started):
                    return
            except Exception as exc:  # the database is down: the next check may get through
                logger.warning("could not read training run %s: %s", run.run_id, exc)
            await asyncio.sleep(self.poll_s)

    async def _check(self, run_id: int, *, waited_s: float) -> bool:
        """Whether the run has ended; ends it first if it timed out or its worker's claim ran
        out."""

        def read() -> WorkerRunState | None:
            with self.sessions() as session:
                return worker_run_state(session, run_id=run_id)

        state = await asyncio.to_thread(read)
        if state is None or state.status != "running":
            logger.info("training run ended", extra={"run_id": run_id,
                                                     "status": state and state.status})
            return True
        if waited_s > self.timeout_s:
            limit = f"timed out after {self.timeout_s:.0f} s (training.timeout_s)"
            await end_run(self.sessions, run_id, (
                f"{limit}; the trainer worker on {state.host} stops its process" if state.host
                else f"{limit} waiting for a trainer worker: none took the run. training.runner "
                "is worker: start one with `lifelong trainer` (its own pod or GPU node), or set "
                "training.runner: child"))
        elif state.host is not None and (state.claim is None or state.claim.expires_in_s < 0):
            holder = state.claim.holder if state.claim else "that claimed it"
            if await end_run(self.sessions, run_id, (
                    f"the trainer worker {holder} on {state.host} stopped renewing its claim "
                    "(training.worker_lease_s): it died, or lost the database"),
                    status="interrupted"):
                await asyncio.to_thread(self._release, run_id)
        return False

    def _release(self, run_id: int) -> None:
        with self.sessions.begin() as session:
            release_claim(session, run_id=run_id)


# --- shared ----------------------------------------------------------------------------------


async def end_run(sessions: sessionmaker[Session], run_id: int, error: str, *,
                  status: str = "failed") -> bool:
    """Finish the run as `status` unless it has already ended; whether this ended it. Never
    raises (a failure to record it is logged)."""

    def end() -> bool:
        with sessions.begin() as session:
            row = session.get(TrainingRun, run_id)
            if row is None or row.status != "running":
                return False
            try:
                finish_training_run(session, run_id=run_id, status=status,  # type: ignore[arg-type]
                                    error=error, metrics=row.metrics)
            except ValueError:  # it ended meanwhile: that end is the truth
                return False
            return True

    try:
        return await asyncio.to_thread(end)
    except Exception:
        logger.exception("could not record the end of training run %s", run_id)
        return False


def _status(sessions: sessionmaker[Session], run_id: int) -> str | None:
    with sessions() as session:
        row = session.get(TrainingRun, run_id)
        return row.status if row else None


def _signal(process: asyncio.subprocess.Process, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signum)


def describe_run(row: TrainingRun) -> dict[str, Any]:
    """A training run as the admin API shows it: state, progress so far, what it made."""
    metrics = row.metrics or {}
    history = metrics.get("history") or {}
    steps = history.get("step") or []
    return {
        "id": row.id, "status": row.status, "method": row.method,
        "started_at": row.started_at.isoformat(),
        "finished_at": row.finished_at.isoformat() if row.finished_at else None,
        "parent_version": row.parent_version, "adapter_version": row.adapter_version,
        "data_watermark": row.data_watermark, "pid": row.pid, "error": row.error,
        "progress": {
            "step": steps[-1] if steps else 0,
            "loss": (history.get("loss") or [None])[-1],
            "lr": (history.get("lr") or [None])[-1],
            "tokens": sum(history.get("tokens") or []),
        },
        "outcome": metrics.get("outcome"), "reason": metrics.get("reason"),
        "stages": metrics.get("stages", []), "rounds": metrics.get("rounds", []),
    }
