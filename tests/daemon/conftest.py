"""A real `lifelong serve` (real vLLM on the tiny base model, real SQLite) for the gateway tests,
and the gateway in-process (its real lifespan, no vLLM behind it) for the tests of what it
refuses before a request would reach vLLM."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
import yaml

from lifelong.daemon.serve_process import ServeProcess, free_port

if TYPE_CHECKING:
    from fastapi.testclient import TestClient

LIFELONG = str(Path(sys.executable).parent / "lifelong")
KEYS = {  # principal -> (secret key, scopes)
    "alice": ("sk-alice", ["infer", "feedback"]),
    "bob": ("sk-bob", ["infer", "feedback"]),
    "reader": ("sk-reader", ["infer"]),
    "rater": ("sk-rater", ["feedback"]),
    "ops": ("sk-ops", ["admin"]),
}


@dataclass
class Daemon:
    server: ServeProcess
    data_dir: Path
    config: Path

    @property
    def process(self) -> subprocess.Popen[bytes]:
        assert self.server.process is not None
        return self.server.process

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def log(self) -> Path:
        return self.server.log

    def key(self, principal: str) -> str:
        return KEYS[principal][0]

    def headers(self, principal: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key(principal)}"}

    def cycle_ended(self, *, trigger: str | None = None, timeout: float = 900.0) -> dict:
        """`/admin/status` once the last learning cycle (of `trigger`, if given) has ended."""
        deadline = time.monotonic() + timeout
        while True:
            status = httpx.get(f"{self.url}/admin/status", headers=self.headers("ops"),
                               timeout=60).json()
            last = status["cycle"]["last"]
            if last and last["outcome"] != "running" and trigger in (None, last["trigger"]):
                return status
            assert time.monotonic() < deadline, status
            time.sleep(2)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 90.0) -> int | None:
        return self.server.stop(sig, timeout_s=timeout)

    def kill(self) -> None:
        """SIGKILL the daemon alone, as an OOM kill would; its vLLM child follows (parent-death
        signal). Waits until vLLM's port is free for a restart."""
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()
        port = yaml.safe_load(self.config.read_text())["vllm"]["port"]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) != 0:
                    return
            time.sleep(0.5)
        raise AssertionError("vLLM outlived its daemon")


def write_config(tmp: Path, model: Path, **extra: object) -> Path:
    config = {
        "data_dir": str(tmp / "data"),
        "base_model": {"path": str(model)},
        "vllm": {"port": free_port(), "max_lora_rank": 8, "startup_timeout_s": 240},
        "gateway": {
            "port": free_port(),
            "api_keys": [
                {"principal": name, "sha256": hashlib.sha256(key.encode()).hexdigest(),
                 "scopes": scopes}
                for name, (key, scopes) in KEYS.items()
            ],
            "max_request_bytes": 64 * 1024,
            "drain_timeout_s": 10,
        },
        # The tiny model speaks digits only: the general suite and its anchors (made for chat
        # models) would measure and replay noise. The real-model tests turn them on.
        "training": {"lora_rank": 8, "anchor_fraction": 0.0},
        "evals": {"general_suite": False},
        # Off unless a test turns it on: a cycle would train on whatever the other tests logged.
        "schedule": {"enabled": False},
        # Off unless a test turns it on: a canary waits for users' outcomes, which most tests
        # never send, so the gate's approval promotes at once as before.
        "promotion": {"canary": {"enabled": False}},
    }
    for section, values in extra.items():
        if isinstance(values, dict):
            config.setdefault(section, {}).update(values)  # type: ignore[union-attr]
        else:  # a top-level value (adapter_storage)
            config[section] = values
    path = tmp / "lifelong.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def start_daemon(tmp: Path, model: Path, **extra: object) -> Daemon:
    config = write_config(tmp, model, **extra)
    subprocess.run([LIFELONG, "db", "upgrade", "--config", str(config)], check=True)
    port = yaml.safe_load(config.read_text())["gateway"]["port"]
    server = ServeProcess(config, f"http://127.0.0.1:{port}", tmp / "daemon.log")
    server.start(timeout_s=300)  # DaemonNotReady, with the log's end, if it is not
    return Daemon(server, tmp / "data", config)


@pytest.fixture(name="start_daemon", scope="session")
def start_daemon_fixture():
    """`start_daemon(tmp, model, **settings_sections)` for tests that need their own daemon."""
    return start_daemon


@pytest.fixture(scope="session")
def daemon(tiny_base_model: Path, tmp_path_factory: pytest.TempPathFactory):
    """One daemon shared by the gateway tests; they must not change its champion."""
    running = start_daemon(tmp_path_factory.mktemp("daemon"), tiny_base_model)
    yield running
    running.stop()


def in_process_gateway(data_dir: Path, keys: dict[str, str], *,
                       scopes: tuple[str, ...] = ("infer", "feedback"),
                       **sections: dict) -> Iterator[TestClient]:
    """The gateway in this process (its real lifespan) in front of a vLLM URL nobody listens on,
    calling with the first of `keys` (principal -> key; each has `scopes`).
    `sections`: further settings sections; a `gateway` one adds to the keys. A generator, so a
    fixture can `yield from` it, or end it (shut the gateway down) when it chooses."""
    from fastapi.testclient import TestClient

    from lifelong.daemon.gateway.app import create_app
    from lifelong.daemon.settings import load_settings

    gateway = sections.pop("gateway", {})
    settings = load_settings(
        data_dir=data_dir,
        base_model={"path": "/nonexistent"},
        vllm={"upstreams": [f"http://127.0.0.1:{free_port()}"]},  # nobody listens there
        gateway={
            "api_keys": [
                {"principal": name, "sha256": hashlib.sha256(key.encode()).hexdigest(),
                 "scopes": list(scopes)}
                for name, key in keys.items()
            ],
            **gateway,
        },
        training={"anchor_fraction": 0.0},
        evals={"general_suite": False},
        schedule={"enabled": False},
        **sections,
    )
    with TestClient(create_app(settings), base_url="http://gateway") as client:
        client.headers["Authorization"] = f"Bearer {next(iter(keys.values()))}"
        yield client


@pytest.fixture(name="in_process_gateway")
def in_process_gateway_fixture():
    """`in_process_gateway(data_dir, keys, **settings_sections)`, a generator of one TestClient."""
    return in_process_gateway
