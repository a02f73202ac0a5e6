"""The database: engines, migrations from empty, and models that match the migrations."""

from __future__ import annotations

import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import OperationalError

from lifelong.feedback_store.database import (
    DatabaseWatch,
    alembic_config,
    current_revision,
    ensure_migrated,
    head_revision,
    make_engine,
    upgrade,
)
from lifelong.feedback_store.errors import DatabaseNotMigrated, StoreError
from lifelong.feedback_store.models import Base

TABLES = {"interactions", "feedback", "tasks", "adapters", "training_runs", "eval_runs"}


def test_upgrade_from_empty_reaches_head_with_every_table(empty_engine: Engine):
    assert current_revision(empty_engine) is None
    upgrade(empty_engine)
    assert current_revision(empty_engine) == head_revision()
    assert set(inspect(empty_engine).get_table_names()) >= TABLES
    ensure_migrated(empty_engine)  # does not raise


def test_upgrade_twice_is_a_no_op(empty_engine: Engine):
    upgrade(empty_engine)
    upgrade(empty_engine)
    assert current_revision(empty_engine) == head_revision()


def test_downgrade_to_base_removes_every_table(empty_engine: Engine):
    upgrade(empty_engine)
    config = alembic_config()
    with empty_engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "base")
    assert current_revision(empty_engine) is None
    assert not TABLES & set(inspect(empty_engine).get_table_names())


def test_unmigrated_database_raises_database_not_migrated(empty_engine: Engine):
    with pytest.raises(DatabaseNotMigrated, match="run `lifelong db upgrade`") as raised:
        ensure_migrated(empty_engine)
    assert isinstance(raised.value, StoreError)


def test_an_empty_database_asked_to_be_created_is_migrated_to_head(empty_engine: Engine):
    ensure_migrated(empty_engine, create_if_empty=True)
    assert current_revision(empty_engine) == head_revision()
    assert set(inspect(empty_engine).get_table_names()) >= TABLES


def test_a_database_at_an_older_revision_is_refused_even_when_creating(empty_engine: Engine):
    upgrade(empty_engine, "0006")
    with pytest.raises(DatabaseNotMigrated, match="behind .*run `lifelong db upgrade`"):
        ensure_migrated(empty_engine, create_if_empty=True)
    assert current_revision(empty_engine) == "0006"


def test_tables_without_a_revision_are_refused_even_when_creating(empty_engine: Engine):
    with empty_engine.begin() as connection:
        connection.execute(text("CREATE TABLE notes (id INTEGER PRIMARY KEY)"))
    with pytest.raises(DatabaseNotMigrated, match="run `lifelong db upgrade`"):
        ensure_migrated(empty_engine, create_if_empty=True)
    assert current_revision(empty_engine) is None


def test_database_from_a_newer_lifelong_raises_database_not_migrated(empty_engine: Engine):
    upgrade(empty_engine)
    with empty_engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(DatabaseNotMigrated, match="upgrade lifelong"):
        ensure_migrated(empty_engine)


def test_models_match_the_migrations(engine: Engine):
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_sqlite_engine_is_durable_and_creates_its_folder(tmp_path: Path):
    path = tmp_path / "deep" / "er" / "lifelong.db"
    engine = make_engine(f"sqlite:///{path}")
    with engine.connect() as connection:
        pragmas = {
            name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()
            for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
        }
    engine.dispose()
    assert path.parent.is_dir()
    assert pragmas == {"journal_mode": "wal", "synchronous": 2, "foreign_keys": 1,
                       "busy_timeout": 5000}


def test_sqlite_synchronous_normal_is_applied(tmp_path: Path):
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}", sqlite_synchronous="NORMAL")
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 1
    engine.dispose()


def test_unknown_sqlite_synchronous_level_is_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="FULL or NORMAL"):
        make_engine(f"sqlite:///{tmp_path / 'x.db'}", sqlite_synchronous="OFF")  # type: ignore[arg-type]


def connect_in_thread(engine: Engine, bound_s: float = 60.0) -> BaseException | None:
    """Connect and run SELECT 1 on a thread; what it raised, or None. A connection attempt still
    running after `bound_s` (psycopg's own default waits ~130 s) fails the test."""
    raised: list[BaseException | None] = []

    def attempt() -> None:
        try:
            with engine.connect() as connection:
                connection.exec_driver_sql("SELECT 1")
            raised.append(None)
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(bound_s)
    assert raised, f"still waiting for the database after {bound_s} s"
    return raised[0]


def test_a_server_that_accepts_and_never_answers_fails_the_connection(silent_postgres_url):
    engine = make_engine(silent_postgres_url, connect_timeout_s=1)
    assert isinstance(connect_in_thread(engine), OperationalError)
    engine.dispose()


def test_a_refusing_server_fails_the_connection(refusing_postgres_url):
    engine = make_engine(refusing_postgres_url, connect_timeout_s=1)
    assert isinstance(connect_in_thread(engine), OperationalError)
    engine.dispose()


@pytest.mark.postgres
def test_a_statement_past_the_statement_timeout_is_cancelled(postgres_url):
    engine = make_engine(postgres_url, statement_timeout_s=1)
    with pytest.raises(OperationalError, match="statement timeout"), engine.connect() as connection:
        connection.exec_driver_sql("SELECT pg_sleep(30)")
    engine.dispose()


def test_sqlite_waits_for_the_lock_as_long_as_the_statement_timeout(tmp_path: Path):
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}", statement_timeout_s=2)
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 2000
    engine.dispose()


def test_the_sqlite_file_and_its_folder_are_the_owners_alone(tmp_path: Path):
    path = tmp_path / "data" / "lifelong.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    for name in (path, path.with_name("lifelong.db-wal"), path.with_name("lifelong.db-shm")):
        if name.exists():
            assert stat.S_IMODE(name.stat().st_mode) == 0o600, name


def test_an_existing_world_readable_sqlite_file_is_tightened(tmp_path: Path):
    path = tmp_path / "lifelong.db"
    path.touch(mode=0o644)
    path.chmod(0o644)
    make_engine(f"sqlite:///{path}").dispose()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def until(condition, bound_s: float = 60.0) -> None:
    deadline = time.monotonic() + bound_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_the_watch_sees_the_database_answer(engine: Engine):
    watch = DatabaseWatch(engine, every_s=0.1)
    until(lambda: watch.state().checked_at is not None)
    assert watch.state().up and watch.state().error is None
    watch.close()


@pytest.mark.parametrize("server", ["refusing_postgres_url", "silent_postgres_url"])
def test_the_watch_reports_a_refusing_or_silent_database_down(server, request):
    engine = make_engine(request.getfixturevalue(server), connect_timeout_s=1)
    watch = DatabaseWatch(engine, every_s=0.1, stuck_after_s=1)
    until(lambda: not watch.state().up)
    assert watch.state().error
    watch.close()
    engine.dispose()


def test_a_second_engine_on_an_open_sqlite_file_leaves_the_first_ones_connections_working(
        tmp_path: Path):
    # Opening and closing the file once more in this process would drop the POSIX locks that
    # the first engine's connection holds; another process's connection, closing, would then
    # think itself the last, checkpoint and remove the WAL and its index, and the first
    # engine's next write would fail with "disk I/O error" (seen in the daemon, whose database
    # watch makes a second engine, when `lifelong db upgrade` or the trainer came and went).
    path = tmp_path / "lifelong.db"
    first = make_engine(f"sqlite:///{path}")
    with first.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE t (x INTEGER)")
    held = first.connect()
    held.exec_driver_sql("SELECT count(*) FROM t").scalar()
    make_engine(f"sqlite:///{path}", pooled=False).dispose()
    subprocess.run([sys.executable, "-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]);"
                    " c.execute('SELECT count(*) FROM t').fetchone(); c.close()", str(path)],
                   check=True)
    with first.begin() as connection:
        connection.exec_driver_sql("INSERT INTO t VALUES (1)")
    assert held.exec_driver_sql("SELECT count(*) FROM t").scalar() == 1
    held.close()
    first.dispose()
