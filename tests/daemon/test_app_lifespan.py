"""The gateway's lifespan owns what it opens: a start-up that fails at any step, or a clean
shutdown, leaves no thread running and no database connection open.

The gateway runs in-process (its real lifespan, real SQLite) in front of a vLLM URL nobody
listens on; a failure is injected at one step of start-up by making that step raise.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event

from lifelong.daemon.gateway import app as gateway_app
from lifelong.daemon.metrics import StateCollector
from lifelong.daemon.practice import Practice
from lifelong.daemon.serve_process import free_port
from lifelong.daemon.settings import Settings, load_settings
from lifelong.daemon.supervisor import HealthWatch
from lifelong.daemon.trainer import Trainer


class Boom(Exception):
    pass


@pytest.fixture
def settings(tmp_path: Path, migrated_sqlite_file: Path) -> Settings:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    shutil.copy(migrated_sqlite_file, data_dir / "lifelong.db")
    return load_settings(
        data_dir=data_dir,
        base_model={"path": "/nonexistent"},
        vllm={"upstreams": [f"http://127.0.0.1:{free_port()}"]},  # nobody listens there
        training={"anchor_fraction": 0.0},
        evals={"general_suite": False},
        # On, so that its scheduler is one of the parts to stop; it never fires in a test.
        schedule={"enabled": True, "min_new_feedback": 1_000_000, "check_every_s": 3600},
    )


class Connections:
    """Every engine the gateway makes, and how many DBAPI connections each opened and closed."""

    def __init__(self) -> None:
        self.opened: dict[Engine, int] = {}
        self.closed: dict[Engine, int] = {}

    def make_engine(self, *args: Any, **kwargs: Any) -> Engine:
        engine = self._make_engine(*args, **kwargs)
        self.opened[engine] = self.closed[engine] = 0

        def opened(*_: object) -> None:
            self.opened[engine] += 1

        def closed(*_: object) -> None:
            self.closed[engine] += 1

        # Pool events on the engine follow it to the new pool a dispose() makes.
        event.listen(engine, "connect", opened)
        event.listen(engine, "close", closed)
        event.listen(engine, "close_detached", closed)
        return engine

    _make_engine = staticmethod(gateway_app.make_engine)

    def still_open(self) -> dict[str, int]:
        return {str(engine.pool.__class__.__name__): self.opened[engine] - self.closed[engine]
                for engine in self.opened if self.opened[engine] != self.closed[engine]}


def new_threads(before: set[threading.Thread], wait_s: float = 5.0) -> list[str]:
    """Threads started since `before` still alive after `wait_s` (a closed part's thread
    may take a moment to notice)."""
    deadline = time.monotonic() + wait_s
    while True:
        left = [t.name for t in threading.enumerate() if t not in before and t.is_alive()]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


async def _raise_async(*_: object, **__: object) -> Any:
    raise Boom("injected")


def _raise(*_: object, **__: object) -> Any:
    raise Boom("injected")


FAILURES = {  # the step that fails -> (class, method, replacement)
    # Before the fix these two ran after the database watch, the interaction log and the
    # feedback committer had started their threads, outside the `try` that closed them.
    "trainer recovery": (Trainer, "recover", _raise_async),
    "metrics' first read": (StateCollector, "refresh", _raise),
    # Before the fix a failed start of serving stopped a schedule that never started, which
    # raised and skipped the rest of the shutdown.
    "serving": (HealthWatch, "start", _raise_async),
    "practice": (Practice, "start", _raise_async),  # the last step: everything else is open
}


@pytest.mark.parametrize("step", FAILURES)
def test_a_start_up_that_fails_midway_leaves_no_thread_or_connection_open(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, step: str,
):
    connections = Connections()
    monkeypatch.setattr(gateway_app, "make_engine", connections.make_engine)
    owner, name, replacement = FAILURES[step]
    monkeypatch.setattr(owner, name, replacement)
    before = set(threading.enumerate())
    with pytest.raises(Boom), TestClient(gateway_app.create_app(settings)):
        pass
    assert connections.opened, "the gateway made no engine: the failure came too early"
    assert new_threads(before) == []
    assert connections.still_open() == {}


def test_a_clean_shutdown_leaves_no_thread_or_connection_open(
    settings: Settings, monkeypatch: pytest.MonkeyPatch,
):
    connections = Connections()
    monkeypatch.setattr(gateway_app, "make_engine", connections.make_engine)
    before = set(threading.enumerate())
    with TestClient(gateway_app.create_app(settings)) as client:
        assert client.get("/healthz").status_code == 200
    assert new_threads(before) == []
    assert connections.still_open() == {}
