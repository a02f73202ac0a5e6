"""The trainer off the serving path (`training.runner: worker`): the leading gateway (in this
process, its real lifespan; no vLLM behind it, training needs none) only queues each run in the
database, and `lifelong trainer`, a real process sharing nothing with it but the database and the
adapter storage, trains it in a real `lifelong train` child on the tiny model. Cancelling,
killing and stopping cross those process boundaries here as they would across nodes."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from lifelong.daemon.gateway.app import create_app
from lifelong.daemon.serve_process import free_port
from lifelong.daemon.settings import load_settings
from lifelong.feedback_store.records import Correction

pytestmark = pytest.mark.integration

LIFELONG = str(Path(sys.executable).parent / "lifelong")
ADMIN_KEY = "sk-ops"
# Both sides read the training section: the gateway its runner and timeout, the worker the rest.
TRAINING = {"runner": "worker", "epochs": 1000, "batch_size": 8, "min_new_examples": 5,
            "device": "cpu", "lora_rank": 8, "anchor_fraction": 0.0, "max_seconds": 120,
            "timeout_s": 300}
LEASE_S = 2  # the workers' training.worker_lease_s: how soon a lost worker's run is ended


@pytest.fixture
def backend() -> str:
    return "sqlite"


@pytest.fixture
def database(backend: str, request: pytest.FixtureRequest, tmp_path: Path,
             migrated_store) -> str:
    """A migrated store holding 40 corrected answers (enough for a run): its URL."""
    url = (request.getfixturevalue("fresh_postgres_url") if backend == "postgres"
           else f"sqlite:///{tmp_path / 'lifelong.db'}")
    with migrated_store(url) as store:
        rng = random.Random(0)
        pairs = [(f"Repeat {x}.", str(x)) for x in (rng.randint(1000, 9999) for _ in range(40))]
        ids = store.ask_many([(question, "0") for question, _ in pairs])
        store.give(*[Correction(i, text=a) for i, (_, a) in zip(ids, pairs, strict=True)])
    return url


@contextmanager
def leader(tmp: Path, database: str, **training: object) -> Iterator[TestClient]:
    """The gateway that leads the learning loop, with an admin key, as its admin client."""
    settings = load_settings(
        data_dir=tmp / "gateway", adapter_storage=tmp / "adapters", database={"url": database},
        base_model={"path": "/nonexistent"},  # it never loads the model: the worker does
        vllm={"upstreams": [f"http://127.0.0.1:{free_port()}"]},  # nobody listens there
        gateway={"api_keys": [{"principal": "ops", "scopes": ["admin"],
                               "sha256": hashlib.sha256(ADMIN_KEY.encode()).hexdigest()}]},
        training={**TRAINING, **training}, evals={"general_suite": False},
        schedule={"enabled": False},
    )
    with TestClient(create_app(settings), base_url="http://gateway") as client:
        client.headers["Authorization"] = f"Bearer {ADMIN_KEY}"
        yield client


@pytest.fixture
def start_worker(tmp_path: Path, tiny_base_model: Path) -> Iterator[Callable[..., subprocess.Popen]]:
    """`start_worker(database, name, **training)`: a `lifelong trainer` process with a data dir
    of its own and the shared adapter storage; every one is stopped after the test."""
    started: list[subprocess.Popen] = []

    def start(database: str, name: str = "worker", **training: object) -> subprocess.Popen:
        config = tmp_path / f"{name}.yaml"
        config.write_text(yaml.safe_dump({
            "data_dir": str(tmp_path / name), "adapter_storage": str(tmp_path / "adapters"),
            "database": {"url": database}, "base_model": {"path": str(tiny_base_model)},
            "vllm": {"max_lora_rank": 8},
            "training": {**TRAINING, "worker_lease_s": LEASE_S, **training},
        }))
        with (tmp_path / f"{name}.log").open("ab") as log:
            worker = subprocess.Popen([LIFELONG, "trainer", "--config", str(config)],
                                      stdout=log, stderr=subprocess.STDOUT)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        if worker.poll() is None:
            worker.terminate()
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()


def train(admin: TestClient, methods: list[str] | None = None) -> int:
    # The trainer stays busy until it has read that the last run ended (within a second), and
    # the learning cycle until it has judged; a 409 until then is the contract.
    deadline = time.monotonic() + 30
    while (started := admin.post("/admin/train", json={"methods": methods or ["sft"]})
           ).status_code == 409:
        assert time.monotonic() < deadline, started.text
        time.sleep(0.2)
    assert started.status_code == 202, started.text
    assert started.json()["status"] == "running"
    return started.json()["id"]


def wait_for(admin: TestClient, run_id: int, done: Callable[[dict], bool],
             timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = admin.get(f"/admin/training-runs/{run_id}").json()
        if done(run):
            return run
        time.sleep(0.2)
    raise AssertionError(f"training run {run_id} never got there: {run}")


def training(admin: TestClient, run_id: int) -> dict:
    """The run once its child is training: past its first step, the child's pid on record."""
    return wait_for(admin, run_id, lambda run: run["progress"]["step"] > 0 and run["pid"])


def ended(admin: TestClient, run_id: int, timeout: float = 120) -> dict:
    return wait_for(admin, run_id, lambda run: run["status"] != "running", timeout)


def gone(pid: int, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def log_events(path: Path) -> list[str]:
    return [json.loads(line)["msg"] for line in path.read_text().splitlines()
            if line.startswith("{")]


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_run_the_leader_queues_is_trained_by_one_worker_into_a_candidate(
    backend, database, start_worker, tmp_path
):
    # Two workers wait for it: exactly one takes it.
    workers = [start_worker(database, name, max_steps=10) for name in ("worker-a", "worker-b")]
    with leader(tmp_path, database) as admin:
        run_id = train(admin)
        run = ended(admin, run_id)
        assert (run["status"], run["adapter_version"], run["error"]) == ("succeeded", "v0001", None)
        assert run["progress"]["step"] == 10
        (adapter,) = admin.get("/admin/adapters").json()
        assert (adapter["version"], adapter["status"], adapter["training_run_id"]) == (
            "v0001", "candidate", run_id)
        manifest = admin.get("/admin/adapters/v0001").json()["manifest"]
        assert manifest["data"]["examples"]["sft"]["new"] == 40
    assert (tmp_path / "adapters" / "v0001").is_dir()
    # The gateway started no trainer of its own; one worker's child trained it.
    assert not list((tmp_path / "gateway").glob("**/trainer-*"))
    claimed = [name for name in ("worker-a", "worker-b")
               if "training run claimed" in log_events(tmp_path / f"{name}.log")]
    assert len(claimed) == 1, claimed
    assert list((tmp_path / claimed[0] / "logs").glob("trainer-*.log"))
    assert all(worker.poll() is None for worker in workers)  # both wait for the next run


def test_cancel_through_the_admin_api_stops_the_workers_child_and_the_worker_goes_on(
    database, start_worker, tmp_path
):
    worker = start_worker(database, max_steps=100_000)
    with leader(tmp_path, database) as admin:
        run_id = train(admin)
        child = training(admin, run_id)["pid"]
        assert child != worker.pid
        cancelled = admin.post(f"/admin/training-runs/{run_id}/cancel")
        assert cancelled.status_code == 202, cancelled.text
        run = ended(admin, run_id, timeout=5)
        assert (run["status"], run["error"]) == (
            "failed", "cancelled (the trainer worker stops its process)")
        assert gone(child), "the worker did not stop its child"
        assert admin.get("/admin/adapters").json() == []
        # The worker is free again and takes the next run.
        next_id = train(admin)
        assert training(admin, next_id)["pid"] not in (child, worker.pid)
    assert worker.poll() is None
    assert f"training run {run_id} was ended elsewhere: stopping its process" in log_events(
        tmp_path / "worker.log")


def test_sigterm_stops_the_worker_cleanly_its_run_interrupted(database, start_worker, tmp_path):
    worker = start_worker(database, max_steps=100_000)
    with leader(tmp_path, database) as admin:
        run_id = train(admin)
        child = training(admin, run_id)["pid"]
        worker.terminate()
        assert worker.wait(60) == 0
        run = ended(admin, run_id, timeout=5)
        assert run["status"] == "interrupted"
        assert run["error"] == (f"the trainer worker {socket.gethostname()}/{worker.pid} stopped "
                                "during training")
        assert gone(child)
        assert admin.get("/admin/adapters").json() == []


@pytest.mark.parametrize("with_child", [False, True], ids=["worker-alone", "worker-and-child"])
def test_a_worker_killed_mid_run_leaves_its_run_ended_within_the_lease(
    database, start_worker, tmp_path, with_child
):
    worker = start_worker(database, max_steps=100_000)
    with leader(tmp_path, database) as admin:
        run_id = train(admin)
        child = training(admin, run_id)["pid"]
        if with_child:  # a lost node: both go at once, neither can say so
            os.kill(worker.pid, signal.SIGSTOP)
            os.kill(child, signal.SIGKILL)
        os.kill(worker.pid, signal.SIGKILL)
        killed = time.monotonic()
        worker.wait()
        run = ended(admin, run_id, timeout=LEASE_S + 30)
        after = time.monotonic() - killed
        if with_child:  # the leader, once the claim ran out (polled every second)
            assert run["status"] == "interrupted" and after < LEASE_S + 3, (run, after)
            assert run["error"] == (f"the trainer worker {socket.gethostname()}/{worker.pid} on "
                                    f"{socket.gethostname()} stopped renewing its claim "
                                    "(training.worker_lease_s): it died, or lost the database")
        else:  # the child, told by the kernel that its parent died (SIGTERM), cancels itself
            # and records the run interrupted: the signal can come as the forking thread dies,
            # while another thread of the dying worker is still its parent, so it waits a moment
            # for the new parent (run_lifecycle.ORPHAN_WAIT_S; without it, 1 run in 6 said failed).
            assert run["status"] == "interrupted", run
            assert "TrainingCancelled: cancelled after" in run["error"], run["error"]
        assert gone(child)
        assert admin.get("/admin/adapters").json() == []


def test_with_no_worker_the_run_times_out_naming_lifelong_trainer(database, tmp_path):
    with leader(tmp_path, database, timeout_s=2, max_seconds=1) as admin:
        run_id = train(admin)
        run = ended(admin, run_id, timeout=10)
    assert (run["status"], run["pid"]) == ("failed", None)
    assert run["error"].startswith("timed out after 2 s (training.timeout_s) waiting for a "
                                   "trainer worker: none took the run"), run["error"]
    assert "start one with `lifelong trainer`" in run["error"]
