"""The database: engines, migrations from empty, and models that match the migrations."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, text

from lifelong.feedback_store.database import (
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
