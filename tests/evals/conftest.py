"""Real parts for the eval tests: a migrated store (SQLite and PostgreSQL), and a vLLM server on
the tiny base model (started once per session, LoRA on, as the daemon starts it)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, create_engine, make_url, text
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from lifelong.feedback_store.database import make_engine, upgrade
from lifelong.feedback_store.models import Base

STARTUP_TIMEOUT_S = 300  # about 30 s on 2 idle cores; far more when the machine is shared
TINY_NAME = "base"  # the daemon serves the base model under this name too


POSTGRES_SERVER_URL = os.environ.get(
    "LIFELONG_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(scope="session")
def postgres_engine() -> Iterator[Engine]:
    """A migrated PostgreSQL database made for this test session, dropped at its end."""
    name = f"lifelong_evals_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_SERVER_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    engine = make_engine(make_url(POSTGRES_SERVER_URL).set(database=name).render_as_string(False))
    try:
        upgrade(engine)
        yield engine
    finally:
        engine.dispose()
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def session(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Session]:
    """A session on a migrated, empty store: SQLite or PostgreSQL."""
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'lifelong.db'}")
        upgrade(engine)
    else:
        engine = request.getfixturevalue("postgres_engine")
        with engine.begin() as connection:
            connection.execute(text(f"TRUNCATE {', '.join(Base.metadata.tables)} RESTART IDENTITY CASCADE"))
    with sessionmaker(engine)() as session:
        yield session
    if request.param == "sqlite":
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
