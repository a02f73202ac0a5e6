"""Real parts for the eval tests: a migrated SQLite store, and a vLLM server on the tiny base model
(started once per session, LoRA on, as the daemon starts it) with a LoRA adapter to load."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker

from lifelong.feedback_store.database import make_engine, upgrade

STARTUP_TIMEOUT_S = 300  # about 30 s on 2 idle cores; far more when the machine is shared
TINY_NAME = "base"  # the daemon serves the base model under this name too


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    engine = make_engine(f"sqlite:///{tmp_path / 'lifelong.db'}")
    upgrade(engine)
    with sessionmaker(engine)() as session:
        yield session
    engine.dispose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def vllm_url(tiny_base_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a real vLLM OpenAI server serving the tiny model as `base`."""
    port = free_port()
    log = tmp_path_factory.mktemp("vllm") / "vllm.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
         "--model", str(tiny_base_model), "--served-model-name", TINY_NAME,
         "--enable-lora", "--max-lora-rank", "8", "--max-model-len", "512",
         "--host", "127.0.0.1", "--port", str(port), "--disable-uvicorn-access-log"],
        env={**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1", "VLLM_CPU_KVCACHE_SPACE": "1"},
        stdout=log.open("wb"), stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so the engine workers go with it
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"vLLM exited {process.returncode}:\n{log.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"vLLM not up in {STARTUP_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
