"""The database: engines for SQLite and PostgreSQL, and Alembic migrations configured in code.

No alembic.ini is needed at runtime: `alembic_config` points Alembic at the migrations folder
inside the installed package and hands it an open connection.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, make_url, text

from lifelong.feedback_store.errors import DatabaseNotMigrated

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 5000
# Any constant will do; it only has to be the same for every process migrating this database.
_MIGRATION_LOCK = 0x6C69_6665_6C6F_6E67  # "lifelong"


def make_engine(url: str, *, sqlite_synchronous: Literal["FULL", "NORMAL"] = "FULL") -> Engine:
    """An engine for `url`. For SQLite: WAL, the given synchronous level, a busy timeout and
    foreign keys on every connection, and the file's folder created. Raises ValueError for an
    unknown synchronous level."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        # pre_ping: a restarted server leaves dead connections in the pool.
        return create_engine(parsed, pool_pre_ping=True)
    if sqlite_synchronous not in ("FULL", "NORMAL"):
        raise ValueError(f"sqlite_synchronous must be FULL or NORMAL, got {sqlite_synchronous!r}")
    if parsed.database and parsed.database != ":memory:" and not parsed.database.startswith("file:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute(f"PRAGMA synchronous = {sqlite_synchronous}")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    # pysqlite's own transaction handling is kept on purpose: it opens the transaction at the
    # first write, so reads before it (our validation of append-only rows) never hold a stale
    # WAL snapshot that would make the write fail with SQLITE_BUSY instead of waiting.
    return engine


def alembic_config() -> Config:
    """Alembic's configuration, built in code, pointing at the packaged migrations."""
    config = Config()
    # ConfigParser interpolation: a literal % in the path must be doubled.
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    return config


def head_revision() -> str:
    """The newest revision this code knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "the packaged migrations have no head"
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at; None when it has never been migrated."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply the migrations up to `revision`, in one transaction; concurrent callers take turns."""
    config = alembic_config()
    with engine.connect() as connection:
        if connection.dialect.name == "sqlite":
            # pysqlite would run the DDL outside any transaction; take the write lock first so
            # the whole upgrade is atomic and a second migrating process waits for it.
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
        connection.commit()


def ensure_migrated(engine: Engine) -> None:
    """Return if the database is at the head revision. Raises DatabaseNotMigrated otherwise."""
    where = engine.url.render_as_string(hide_password=True)
    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return
    if current is None:
        raise DatabaseNotMigrated(
            f"the database at {where} has no schema; run `lifelong db upgrade`"
        )
    known = {script.revision for script in ScriptDirectory.from_config(alembic_config()).walk_revisions()}
    if current not in known:
        raise DatabaseNotMigrated(
            f"the database at {where} is at revision {current}, which this version of lifelong "
            "does not know (made by a newer one?); upgrade lifelong, then run `lifelong db upgrade`"
        )
    raise DatabaseNotMigrated(
        f"the database at {where} is at revision {current}, behind {head}; "
        "run `lifelong db upgrade`"
    )
