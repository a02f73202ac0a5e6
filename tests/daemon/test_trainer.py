"""The daemon's trainer watches real child processes: whatever way a child ends, its run ends with
a true status, and the daemon never waits on it forever. (The children here are small Python
programs standing in for `lifelong train`, so each way of dying can be caused on purpose; the
real trainer is killed in test_training_api.py.)"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy.orm import sessionmaker

from lifelong.daemon.trainer import (
    ChildRunner,
    NotTheRunningRun,
    Trainer,
    TrainerBusy,
    TrainRequest,
    WorkerRunner,
)
from lifelong.feedback_store.database import make_engine, upgrade
from lifelong.feedback_store.models import TrainingRun
from lifelong.feedback_store.runs import (
    claim_training_run,
    finish_training_run,
    start_training_run,
    worker_run_state,
)


@pytest.fixture
def sessions(tmp_path: Path):
    engine = make_engine(f"sqlite:///{tmp_path / 'lifelong.db'}")
    upgrade(engine)
    yield sessionmaker(engine, expire_on_commit=False)
    engine.dispose()


def trainer(sessions, tmp_path: Path, program: str, **kwargs) -> Trainer:
    return Trainer(sessions=sessions, runner=ChildRunner(
        sessions=sessions, command=lambda run_id, request: [sys.executable, "-c", program],
        env={}, log_dir=tmp_path / "logs", timeout_s=kwargs.pop("timeout_s", 60), **kwargs,
    ))


def run(sessions, run_id: int) -> TrainingRun:
    with sessions() as session:
        return session.get(TrainingRun, run_id)


async def run_to_end(trainer: Trainer) -> int:
    run_id = await trainer.start(TrainRequest(requested_by="ops"))
    await trainer.wait()
    return run_id


@pytest.mark.parametrize(
    ("program", "error"),
    [
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
         "the trainer process was killed by SIGKILL (the out-of-memory killer, or kill -9?)"),
        ("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)",
         "the trainer process was killed by SIGSEGV"),
        ("raise SystemExit(3)", "the trainer process exited with status 3"),
        ("print('all done')", "the trainer process exited with status 0"),
    ],
)
def test_a_child_that_dies_without_ending_its_run_gets_it_marked_failed(
    sessions, tmp_path, program, error
):
    run_id = asyncio.run(run_to_end(trainer(sessions, tmp_path, program)))
    row = run(sessions, run_id)
    assert row.status == "failed" and row.finished_at is not None
    assert row.error.startswith(error), row.error
    assert f"trainer-{run_id}.log" in row.error


def test_a_child_that_ends_its_own_run_keeps_that_end(sessions, tmp_path):
    async def scenario() -> int:
        def finish_in_child(run_id: int, request: TrainRequest) -> list[str]:
            # What `lifelong train` does at the end, done by the child process itself.
            return [sys.executable, "-c", f"""
from sqlalchemy.orm import Session
from lifelong.feedback_store.database import make_engine
from lifelong.feedback_store.runs import finish_training_run, start_training_run
engine = make_engine("sqlite:///{tmp_path / 'lifelong.db'}")
with Session(engine) as session, session.begin():
    finish_training_run(session, run_id={run_id}, status="skipped", metrics={{"reason": "no data"}})
"""]
        own = Trainer(sessions=sessions, runner=ChildRunner(
            sessions=sessions, command=finish_in_child, env={}, log_dir=tmp_path, timeout_s=120))
        return await run_to_end(own)

    row = run(sessions, asyncio.run(scenario()))
    assert (row.status, row.error, row.metrics) == ("skipped", None, {"reason": "no data"})


def test_a_hung_child_is_timed_out_then_killed_and_its_run_says_so(sessions, tmp_path):
    # It ignores SIGTERM, so only the kill after the grace period ends it.
    hung = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"
    run_id = asyncio.run(run_to_end(trainer(sessions, tmp_path, hung, timeout_s=1, grace_s=1)))
    row = run(sessions, run_id)
    assert row.status == "failed"
    assert row.error.startswith("timed out after 1 s (training.timeout_s)"), row.error


def test_one_run_at_a_time_and_cancel_stops_it(sessions, tmp_path):
    async def scenario() -> tuple[int, TrainerBusy]:
        sleeper = trainer(sessions, tmp_path, "import time; time.sleep(120)", grace_s=5)
        run_id = await sleeper.start(TrainRequest(requested_by="ops"))
        with pytest.raises(TrainerBusy) as busy:
            await sleeper.start(TrainRequest(requested_by="ops"))
        with pytest.raises(NotTheRunningRun):
            await sleeper.cancel(run_id + 1)
        await sleeper.cancel(run_id)
        await sleeper.wait()
        assert sleeper.running_run is None
        return run_id, busy.value

    run_id, busy = asyncio.run(scenario())
    assert busy.run_id == run_id
    row = run(sessions, run_id)
    assert row.status == "failed"
    assert row.error.startswith("cancelled: the trainer process was killed by SIGTERM"), row.error


def test_stopping_the_daemon_marks_the_run_interrupted(sessions, tmp_path):
    async def scenario() -> int:
        sleeper = trainer(sessions, tmp_path, "import time; time.sleep(120)")
        run_id = await sleeper.start(TrainRequest(requested_by="ops"))
        await sleeper.stop()
        return run_id

    row = run(sessions, asyncio.run(scenario()))
    assert (row.status, row.error) == ("interrupted", "the daemon stopped during training")


def test_recovery_interrupts_runs_whose_trainer_died_with_the_last_daemon(sessions, tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    with sessions.begin() as session:  # what a trainer that died with its daemon left behind
        run_id = start_training_run(session, method="sft", parent_version=None, config={},
                                    host=socket.gethostname(), pid=int(dead.stdout)).id
        live_id = start_training_run(session, method="sft", parent_version=None, config={},
                                     host=socket.gethostname(), pid=os.getpid()).id
    recovered = asyncio.run(trainer(sessions, tmp_path, "pass").recover())
    assert recovered == [run_id]
    assert (run(sessions, run_id).status, run(sessions, live_id).status) == (
        "interrupted", "running")


def test_a_late_end_from_a_given_up_child_changes_nothing(sessions, tmp_path):
    run_id = asyncio.run(run_to_end(trainer(sessions, tmp_path, "raise SystemExit(1)")))
    with sessions() as session, pytest.raises(ValueError, match="not running"):
        finish_training_run(session, run_id=run_id, status="succeeded", adapter_version="v9")
    assert run(sessions, run_id).status == "failed"


def test_a_child_deaf_to_sigterm_is_killed_after_the_grace_period_on_cancel_and_on_stop(
    sessions, tmp_path
):
    deaf = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"

    async def scenario() -> tuple[int, int]:
        cancelled = trainer(sessions, tmp_path, deaf, grace_s=1)
        first = await cancelled.start(TrainRequest(requested_by="ops"))
        await asyncio.sleep(0.5)  # let it install its handler
        await cancelled.cancel(first)
        await cancelled.wait()
        stopped = trainer(sessions, tmp_path, deaf, grace_s=1)
        second = await stopped.start(TrainRequest(requested_by="ops"))
        await asyncio.sleep(0.5)
        await asyncio.wait_for(stopped.stop(), 30)
        return first, second

    first, second = asyncio.run(scenario())
    assert run(sessions, first).error.startswith("cancelled: the trainer process was killed by SIGKILL")
    assert (run(sessions, second).status, run(sessions, second).error) == (
        "interrupted", "the daemon stopped during training")


# --- training.runner: worker (the worker's side, with real processes: test_trainer_worker.py) ---


def queueing(sessions, **kwargs) -> Trainer:
    return Trainer(sessions=sessions, runner=WorkerRunner(
        sessions=sessions, timeout_s=kwargs.pop("timeout_s", 60), poll_s=0.1))


def test_a_run_for_a_worker_is_recorded_unclaimed_with_its_request(sessions):
    async def scenario() -> int:
        leader = queueing(sessions)
        run_id = await leader.start(TrainRequest(requested_by="ops", methods=("sft",), now=True))
        with pytest.raises(TrainerBusy):
            await leader.start(TrainRequest(requested_by="ops"))
        assert leader.running_request == TrainRequest("ops", ("sft",), now=True)
        await leader.stop()
        return run_id

    row = run(sessions, asyncio.run(scenario()))
    assert (row.host, row.pid, row.config["runner"]) == (None, None, "worker")
    assert TrainRequest.of_run(row.config) == TrainRequest("ops", ("sft",), now=True)
    assert (row.status, row.error) == ("interrupted", "the daemon stopped during training")


def test_a_run_no_worker_takes_times_out_naming_the_command_that_would_have(sessions):
    async def scenario() -> tuple[int, float]:
        leader = queueing(sessions, timeout_s=1)
        started = time.monotonic()
        run_id = await leader.start(TrainRequest(requested_by="ops"))
        await leader.wait()
        assert leader.running_run is None
        return run_id, time.monotonic() - started

    run_id, waited = asyncio.run(scenario())
    row = run(sessions, run_id)
    assert row.status == "failed" and 1 <= waited < 5
    assert row.error.startswith("timed out after 1 s (training.timeout_s) waiting for a trainer "
                                "worker: none took the run"), row.error
    assert "start one with `lifelong trainer`" in row.error


def test_cancel_ends_a_workers_run_in_the_database(sessions):
    async def scenario() -> int:
        leader = queueing(sessions)
        run_id = await leader.start(TrainRequest(requested_by="ops"))
        with pytest.raises(NotTheRunningRun):
            await leader.cancel(run_id + 1)
        await leader.cancel(run_id)
        await leader.wait()
        return run_id

    row = run(sessions, asyncio.run(scenario()))
    assert (row.status, row.error) == ("failed", "cancelled (the trainer worker stops its process)")


def test_a_claimed_run_whose_worker_stops_renewing_its_claim_is_interrupted(sessions):
    # The worker here is the claim alone, never renewed: a worker that died with its child.
    async def scenario() -> tuple[int, float]:
        leader = queueing(sessions)
        run_id = await leader.start(TrainRequest(requested_by="ops"))
        with sessions.begin() as session:
            claim_training_run(session, holder="gpu-1/42", host="gpu-1", pid=42, lease_s=1)
        claimed = time.monotonic()
        await leader.wait()
        return run_id, time.monotonic() - claimed

    run_id, after = asyncio.run(scenario())
    row = run(sessions, run_id)
    assert row.status == "interrupted" and 1 <= after < 3, after
    assert row.error == ("the trainer worker gpu-1/42 on gpu-1 stopped renewing its claim "
                         "(training.worker_lease_s): it died, or lost the database")
    with sessions() as session:
        assert worker_run_state(session, run_id=run_id).claim is None  # released by the leader
