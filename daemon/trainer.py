"""The daemon's trainer: one `lifelong train` child process at a time, watched, timed and cancellable.

Training never runs inside the serving process: its crash, OOM kill or hang must change nothing
for serving. The daemon records a `running` run, starts `python -m lifelong.daemon.cli train
--run-id N` with the daemon's exact settings, and watches it:

- the child finishes its own run (succeeded, skipped, or failed with the error);
- a child that dies without finishing it (SIGKILL, the OOM killer, a segfault) gets its run
  marked failed here, with the exit status and the end of its log;
- past `timeout_s` the run is marked failed ("timed out") and the child is stopped;
- `cancel` asks the child to stop (SIGTERM: it marks the run failed as cancelled and registers
  nothing), and kills it after a grace period;
- at shutdown the run is marked interrupted and the child stopped.

The first end written is the truth: the store refuses a second one, so a late write from a child
that was already given up on changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from lifelong.daemon.settings import ENV_PREFIX
from lifelong.daemon.supervisor import new_group_dying_with_parent, tail
from lifelong.feedback_store.models import TrainingRun
from lifelong.feedback_store.runs import (
    finish_training_run,
    interrupt_dead_training_runs,
    start_training_run,
)

logger = logging.getLogger(__name__)


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


@dataclass
class _Child:
    run_id: int
    request: TrainRequest
    process: asyncio.subprocess.Process
    log_path: Path
    ending: str | None = None  # why the daemon is stopping it, if it is


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


class Trainer:
    """Runs training children one at a time; see the module docstring."""

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
        fence: Callable[[Session], None] = lambda session: None,
    ) -> None:
        self.sessions = sessions
        self.fence = fence  # in the run's opening transaction: raises unless this replica leads
        self.command = command
        self.niceness = niceness  # added to the child's CPU niceness
        self.env = env
        self.log_dir = log_dir
        self.timeout_s = timeout_s
        self.grace_s = grace_s
        self.host = socket.gethostname()
        self._child: _Child | None = None
        self._watch: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def running_run(self) -> int | None:
        return self._child.run_id if self._child is not None else None

    @property
    def running_request(self) -> TrainRequest | None:
        return self._child.request if self._child is not None else None

    async def recover(self) -> list[int]:
        """Mark the runs left by earlier leaders as interrupted: this host's whose process is
        gone, and other hosts' daemon-started ones (call when this replica starts leading)."""

        def recover() -> list[int]:
            with self.sessions.begin() as session:
                return interrupt_dead_training_runs(session, host=self.host, alive=pid_alive,
                                                    other_hosts=True)

        ended = await asyncio.to_thread(recover)
        if ended:
            logger.warning("training runs interrupted by the last shutdown", extra={"runs": ended})
        return ended

    async def start(self, request: TrainRequest) -> int:
        """Record a running run and start its child. Raises TrainerBusy."""
        async with self._lock:
            if self._child is not None:
                raise TrainerBusy(self._child.run_id)
            run_id = await asyncio.to_thread(self._open_run, request)
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
                await self._end(run_id, f"cannot start the trainer process: {exc}")
                raise
            self._child = _Child(run_id, request, process, log_path)
            self._watch = asyncio.create_task(self._watch_child(self._child))
            logger.info("training run started", extra={"run_id": run_id, "pid": process.pid,
                                                        "request": asdict(request)})
            return run_id

    async def cancel(self, run_id: int) -> None:
        """Ask the running child to stop; it is killed after the grace period.
        Raises NotTheRunningRun."""
        child = self._child
        if child is None or child.run_id != run_id:
            raise NotTheRunningRun(run_id)
        child.ending = child.ending or "cancelled"
        self._stop_child(child)

    async def wait(self) -> None:
        """Until the current child (if any) has ended and its run is recorded."""
        if self._watch is not None:
            await asyncio.shield(self._watch)

    async def stop(self) -> None:
        """At shutdown: the running run is marked interrupted, then its child stopped."""
        child = self._child
        if child is not None:
            child.ending = "interrupted"
            await self._end(child.run_id, "the daemon stopped during training",
                            status="interrupted")
            self._stop_child(child)
            await self.wait()

    def _stop_child(self, child: _Child) -> None:
        """SIGTERM now (the trainer cancels itself), SIGKILL after the grace period."""
        _signal(child.process, signal.SIGTERM)
        asyncio.get_running_loop().call_later(
            self.grace_s, lambda: _signal(child.process, signal.SIGKILL)
        )

    def _open_run(self, request: TrainRequest) -> int:
        with self.sessions.begin() as session:
            self.fence(session)
            return start_training_run(
                session, method="+".join(request.methods) if request.methods else "recipe",
                parent_version=None, config={"request": asdict(request)}, host=self.host,
            ).id

    async def _watch_child(self, child: _Child) -> None:
        process = child.process
        try:
            try:
                await asyncio.wait_for(asyncio.shield(process.wait()), self.timeout_s)
            except TimeoutError:
                child.ending = "timed out"
                await self._end(child.run_id, f"timed out after {self.timeout_s:.0f} s "
                                "(training.timeout_s)")
                self._stop_child(child)
                await process.wait()
            assert process.returncode is not None
            reason = exit_reason(process.returncode)
            if child.ending:
                reason = f"{child.ending}: {reason}"
            ended = await self._end(child.run_id, f"{reason}; log: {child.log_path}\n"
                                    f"{tail(child.log_path, lines=10)}")
            status = await asyncio.to_thread(self._status, child.run_id)
            log = logger.warning if ended else logger.info
            log("training run ended", extra={"run_id": child.run_id, "status": status,
                                             "returncode": process.returncode})
        except Exception:  # the watcher must never take the daemon down
            logger.exception("watching training run %s failed", child.run_id)
        finally:
            # A group-wide kill: the child's own children (data loaders) go with it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            self._child = None

    async def _end(self, run_id: int, error: str, *, status: str = "failed") -> bool:
        """Finish the run as `status` unless it has already ended; whether this ended it."""

        def end() -> bool:
            with self.sessions.begin() as session:
                row = session.get(TrainingRun, run_id)
                if row is None or row.status != "running":
                    return False
                finish_training_run(session, run_id=run_id, status=status,  # type: ignore[arg-type]
                                    error=error, metrics=row.metrics)
                return True

        try:
            return await asyncio.to_thread(end)
        except Exception:
            logger.exception("could not record the end of training run %s", run_id)
            return False

    def _status(self, run_id: int) -> str | None:
        with self.sessions() as session:
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
