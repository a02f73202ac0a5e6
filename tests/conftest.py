"""Fixtures every test folder shares: a tiny base model built once per session (and the default
SmolLM2 imported once, for the tests that ask for it), a real vLLM serving the tiny one, and real
databases (a SQLite file per test, one PostgreSQL database per run).

`engine` runs a test on both: SQLite (a fresh copy of a migrated file) and PostgreSQL (a
database created for this test session on the server at $LIFELONG_TEST_POSTGRES_URL, migrated
once, its tables emptied before each test, dropped at the end). PostgreSQL cases carry the
`postgres` marker and fail when the server cannot be reached (skipped, saying why, only with
LIFELONG_TEST_SKIP_POSTGRES=1).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, create_engine, make_url, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from lifelong.base_model import SKILLS, Skill, build, heldout_items, import_gguf, messages, smollm2_gguf
from lifelong.base_model.gguf_import import SMOLLM2_SHA256
from lifelong.daemon.serve_process import free_port
from lifelong.daemon.settings import VLLMSettings
from lifelong.daemon.vllm_launch import served_dtype
from lifelong.feedback_store.database import make_engine, upgrade
from lifelong.feedback_store.feedback import add_feedback
from lifelong.feedback_store.interactions import add_interactions
from lifelong.feedback_store.models import Base
from lifelong.feedback_store.records import FeedbackItem, NewInteraction, NewTask
from lifelong.feedback_store.tasks import add_task

POSTGRES_SERVER_URL = os.environ.get(
    "LIFELONG_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@contextmanager
def fresh_postgres_database(server_url: str) -> Iterator[str]:
    """A new, empty database `lifelong_test_<random>` on the server; dropped on exit."""
    name = f"lifelong_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            # FORCE: a test that failed may have left connections open.
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture(scope="session")
def new_postgres_database():
    """`new_postgres_database(server_url)`: a context manager giving a fresh database's URL,
    for a module whose processes need one of their own."""
    return fresh_postgres_database


@pytest.fixture(scope="session")
def postgres_server_url() -> str:
    """The server to create test databases on; skips the test when it is unreachable."""
    probe = create_engine(POSTGRES_SERVER_URL, poolclass=NullPool)
    try:
        with probe.connect():
            pass
    except OperationalError as exc:
        # The PostgreSQL half is part of the suite: a missing server fails it, unless the
        # person running it says they know (`LIFELONG_TEST_SKIP_POSTGRES=1`).
        message = f"PostgreSQL not reachable at {POSTGRES_SERVER_URL}: {exc.orig}"
        if os.environ.get("LIFELONG_TEST_SKIP_POSTGRES") == "1":
            pytest.skip(message)
        pytest.fail(message + " (set LIFELONG_TEST_SKIP_POSTGRES=1 to skip these tests)")
    finally:
        probe.dispose()
    return POSTGRES_SERVER_URL


@pytest.fixture(scope="session")
def postgres_url(postgres_server_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test session."""
    with fresh_postgres_database(postgres_server_url) as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite file in this test's folder, not yet created."""
    return f"sqlite:///{tmp_path / 'data' / 'lifelong.db'}"


@pytest.fixture(scope="session")
def migrated_sqlite_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied by each test (quicker than migrating each time)."""
    path = tmp_path_factory.mktemp("template") / "lifelong.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()  # the last connection closing checkpoints the WAL into the file
    return path


@pytest.fixture(scope="session")
def migrated_postgres_engine(postgres_url: str) -> Iterator[Engine]:
    engine = make_engine(postgres_url)
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture(params=BACKENDS)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A migrated, empty database: SQLite or PostgreSQL."""
    if request.param == "sqlite":
        path = tmp_path / "lifelong.db"
        shutil.copy(request.getfixturevalue("migrated_sqlite_file"), path)
        sqlite = make_engine(f"sqlite:///{path}")
        yield sqlite
        sqlite.dispose()
    else:
        postgres: Engine = request.getfixturevalue("migrated_postgres_engine")
        tables = ", ".join(Base.metadata.tables)
        with postgres.begin() as connection:
            connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
        yield postgres


@pytest.fixture(params=BACKENDS)
def empty_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A database with no schema at all: SQLite or PostgreSQL."""
    if request.param == "sqlite":
        engine = make_engine(request.getfixturevalue("sqlite_url"))
        yield engine
        engine.dispose()
    else:
        with fresh_postgres_database(request.getfixturevalue("postgres_server_url")) as url:
            engine = make_engine(url)
            yield engine
            engine.dispose()


# The real build() on a shape small enough for seconds: 2 layers, 2 heads of 64. Enough steps
# that it answers in the chat format (digits, then <|im_end|>); accuracy is not the point.
TINY_BUILD = {"seed": 0, "steps": 300, "layers": 2, "hidden": 128, "batch_size": 32,
              "eval_items": 20}


@pytest.fixture(scope="session")
def tiny_base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of a tiny embedded base model (transformers, peft and vLLM load it)."""
    return build(tmp_path_factory.mktemp("base_model") / "tiny", **TINY_BUILD, progress=False).path


@pytest.fixture(scope="session")
def smollm2_base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of the product's default base model, SmolLM2-135M-Instruct imported from the
    pinned GGUF file (about 30 s and 540 MB, once per session)."""
    out_dir = tmp_path_factory.mktemp("base_model") / "smollm2"
    return import_gguf(smollm2_gguf(), out_dir, expected_sha256=SMOLLM2_SHA256).path


STARTUP_TIMEOUT_S = 300  # about 30 s on 2 idle cores; far more when the machine is shared


@contextlib.contextmanager
def serve_vllm(model: Path, log_dir: Path, *, port: int | None = None,
               cores: str | None = None) -> Iterator[str]:
    """A real vLLM OpenAI server on `model` (served as `base`, LoRA on); its URL while it runs.
    `cores`: the CPUs its engine is bound to (VLLM_CPU_OMP_THREADS_BIND), for servers side by
    side."""
    port = port or free_port()
    log = log_dir / "vllm.log"
    bind = {"VLLM_CPU_OMP_THREADS_BIND": cores} if cores else {}
    dtype = served_dtype(VLLMSettings())  # as the daemon would serve it on this host
    process = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
         "--model", str(model), "--served-model-name", "base",
         "--enable-lora", "--max-lora-rank", "8", "--max-loras", "4", "--max-model-len", "512",
         "--host", "127.0.0.1", "--port", str(port), *(["--dtype", dtype] if dtype else [])],
        env={**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1", "VLLM_CPU_KVCACHE_SPACE": "1",
             **bind},
        stdout=log.open("ab"), stderr=subprocess.STDOUT,
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
        with contextlib.suppress(ProcessLookupError):  # a test may have killed it
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="session")
def vllm_url(tiny_base_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real vLLM server on the tiny model, one per session: tests load adapters into it under
    names of their own."""
    with serve_vllm(tiny_base_model, tmp_path_factory.mktemp("vllm")) as url:
        yield url


@pytest.fixture(scope="session")
def start_vllm():
    """`serve_vllm(model, log_dir)` for a module that needs a server of its own: one that loads
    many adapters (vLLM 0.32 then served the base model wrongly: 24% on echo instead of 0%, which
    broke later tests sharing the server)."""
    return serve_vllm


@dataclass
class Store:
    """A migrated SQLite database and helpers that write through the store's functions."""

    url: str
    sessions: sessionmaker[Session]

    @classmethod
    @contextlib.contextmanager
    def migrated(cls, url: str) -> Iterator[Store]:
        """The store at `url`, migrated to head, its engine closed on exit."""
        engine = make_engine(url)
        upgrade(engine)
        try:
            yield cls(url=url, sessions=sessionmaker(engine, expire_on_commit=False))
        finally:
            engine.dispose()

    def ask(self, question: str, answer: str, *, heldout: bool = False,
            endpoint: str = "chat.completions") -> str:
        """Log one interaction (the model's `answer`), on the chosen side of the split."""
        request = ({"messages": messages(question)} if endpoint == "chat.completions"
                   else {"prompt": question})
        record = NewInteraction(
            id=f"chatcmpl-{uuid.uuid4().hex}", created_at=datetime.now(UTC),
            endpoint=endpoint,  # type: ignore[arg-type]
            request=request, model="lifelong", response_text=answer,
        )
        with self.sessions.begin() as session:
            add_interactions(session, records=[record], heldout_fraction=float(heldout))
        return record.id

    def ask_many(self, pairs: list[tuple[str, str]]) -> list[str]:
        """Log many train-split interactions in one statement."""
        records = [
            NewInteraction(
                id=f"chatcmpl-{uuid.uuid4().hex}", created_at=datetime.now(UTC),
                endpoint="chat.completions", request={"messages": messages(question)},
                model="lifelong", response_text=answer,
            )
            for question, answer in pairs
        ]
        with self.sessions.begin() as session:
            add_interactions(session, records=records, heldout_fraction=0.0)
        return [record.id for record in records]

    def add_heldout_tasks(self, pairs: list[tuple[str, str]], *, family: str) -> None:
        """Held-out chat tasks (exact match) of one family: a target suite for the judge."""
        with self.sessions.begin() as session:
            for question, answer in pairs:
                add_task(session, task=NewTask(reference=answer, verifier="exact_match",
                                               messages=messages(question),
                                               tags=(f"family:{family}",)),
                         principal=None, heldout_fraction=1.0)

    def add_practice_tasks(self, pairs: list[tuple[str, str]], *, family: str,
                           verifier: str = "exact_match",
                           options: dict[str, object] | None = None) -> None:
        """Train-split chat tasks of one family: what GRPO practises on."""
        with self.sessions.begin() as session:
            for question, answer in pairs:
                add_task(session, task=NewTask(reference=answer, verifier=verifier,
                                               options=dict(options or {}),
                                               messages=messages(question),
                                               tags=(f"family:{family}",), heldout=False),
                         principal=None, heldout_fraction=0.0)

    def give(self, *items: FeedbackItem) -> list[int]:
        """Store feedback items; their ids, in order."""
        with self.sessions.begin() as session:
            rows = add_feedback(session, items=list(items), principal=None, admin=True)
            return [row.id for row in rows]


@pytest.fixture(scope="session")
def migrated_store() -> type[Store]:
    """`with migrated_store(url) as store:` a migrated store and its writing helpers."""
    return Store.migrated  # type: ignore[return-value]


@pytest.fixture
def judge_on_vllm(vllm_url: str, tiny_base_model: Path, tmp_path: Path):
    """`judge_on_vllm(store, candidate, retention_source=...)`: the daemon's judge on the session's
    vLLM and `store`, target suites of at least 100 items allowed to approve."""
    from lifelong.daemon.judge import Judge, Judgement, Suites
    from lifelong.daemon.upstream import HttpUpstream
    from lifelong.evals.gate import GatePolicy
    from lifelong.evals.runner import Sampling
    from lifelong.evals.verifier_pool import VerifierPool

    def judge(store: Store, candidate: str, *, retention_source=None) -> Judgement:
        async def judged() -> Judgement:
            upstream = HttpUpstream(vllm_url, timeout_s=120)
            try:
                with VerifierPool(2) as verifiers:
                    return await Judge(
                        sessions=store.sessions, upstream=upstream,
                        base_model_dir=tiny_base_model,
                        suites=Suites(tmp_path / "regression", tmp_path / "retention.jsonl",
                                      lambda: retention_source),
                        policy=GatePolicy(min_items=100), sampling=Sampling(max_tokens=8),
                        verifiers=verifiers,
                    ).judge(candidate)
            finally:
                await upstream.aclose()

        import asyncio

        return asyncio.run(judged())

    return judge


# A skill no base model here was built on; the tiny model learns it, suddenly, in a few hundred
# steps (or, on another CPU, not in 1500: use last_digit where it must be learned).
ECHO = SKILLS["echo"]


@pytest.fixture(scope="session")
def echo() -> Skill:
    return ECHO


@pytest.fixture(scope="session")
def last_digit() -> Skill:
    """A skill no base model here was built on, learned steadily: 0 -> 91-100% in 200 steps
    (3 seeds, 1 or 2 threads)."""
    return SKILLS["last_digit"]


@pytest.fixture(scope="session")
def digits_only_items():
    """200 held-out add2 questions judged only on answering with a number: the tiny model's
    one sure competence (its sums are mostly wrong), so a retention source it nearly all passes."""
    from lifelong.evals.suites import EvalItem

    return [
        EvalItem(id=f"digits-{n}", messages=messages(question), reference="a number",
                 verifier="regex", options={"pattern": r"\d{1,4}"})
        for n, (question, _) in enumerate(heldout_items(SKILLS["add2"], n=200, seed=1))
    ]


@pytest.fixture
def silent_postgres_url() -> Iterator[str]:
    """A PostgreSQL URL whose server accepts connections and never answers (a hung server or a
    black-holed network): a thread accepts and holds every connection, reading nothing. Not a
    fake of PostgreSQL's answers: it is the absence of any, which a real server cannot be made
    to show on demand."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = False

    def hold() -> None:
        while not stop:
            try:
                held.append(listener.accept()[0])
            except OSError:
                return

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    yield f"postgresql+psycopg://postgres@127.0.0.1:{listener.getsockname()[1]}/test"
    stop = True
    listener.close()
    for connection in held:
        connection.close()


@pytest.fixture
def refusing_postgres_url() -> str:
    """A PostgreSQL URL where nothing listens: every connection is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"postgresql+psycopg://postgres@127.0.0.1:{sock.getsockname()[1]}/test"


@pytest.fixture
def fresh_postgres_url(postgres_server_url: str) -> Iterator[str]:
    """A new, empty PostgreSQL database for this test alone (dropped after it)."""
    with fresh_postgres_database(postgres_server_url) as url:
        yield url
