"""Real databases for the store tests: a SQLite file per test and one PostgreSQL database per run.

`engine` runs each test on both: SQLite (a fresh copy of a migrated file) and PostgreSQL (a
database created for this test session on the server at $LIFELONG_TEST_POSTGRES_URL, migrated
once, its tables emptied before each test, dropped at the end). PostgreSQL cases carry the
`postgres` marker and fail when the server cannot be reached (skipped, saying why, only with
LIFELONG_TEST_SKIP_POSTGRES=1).

The URL fixtures (`sqlite_url`, `postgres_url`) import nothing but the store, so they can move
to the root conftest for the gateway tests as they are.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, make_url, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from lifelong.feedback_store.database import make_engine, upgrade
from lifelong.feedback_store.interactions import add_interactions
from lifelong.feedback_store.models import Base
from lifelong.feedback_store.records import NewInteraction

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


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def chat(question: str = "What is 12 + 34?") -> list[dict[str, str]]:
    return [{"role": "user", "content": question}]


@pytest.fixture
def interaction_record() -> Callable[..., NewInteraction]:
    """Build a NewInteraction: a chat answer by alice unless told otherwise."""

    def build(**fields: Any) -> NewInteraction:
        question = fields.pop("question", "What is 12 + 34?")
        values: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "created_at": datetime.now(UTC),
            "endpoint": "chat.completions",
            "request": {"model": "lifelong", "messages": chat(question), "temperature": 0},
            "model": "lifelong",
            "response_text": "46",
            "finish_reason": "stop",
            "prompt_tokens": 12,
            "completion_tokens": 1,
            "latency_ms": 5.0,
            "principal": "alice",
        }
        return NewInteraction(**{**values, **fields})

    return build


@pytest.fixture
def stored_interaction(
    sessions: sessionmaker[Session], interaction_record: Callable[..., NewInteraction]
) -> Callable[..., str]:
    """Store one interaction (fields as `interaction_record`, plus `heldout`) and return its id."""

    def store(*, heldout: bool = False, **fields: Any) -> str:
        record = interaction_record(**fields)
        with sessions.begin() as session:
            add_interactions(session, records=[record], heldout_fraction=float(heldout))
        return record.id

    return store
