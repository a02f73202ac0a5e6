"""The database: engines for SQLite and PostgreSQL, and Alembic migrations configured in code.

No alembic.ini is needed at runtime: `alembic_config` points Alembic at the migrations folder
inside the installed package and hands it an open connection.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, inspect, make_url, text
from sqlalchemy.pool import NullPool

from lifelong.feedback_store.errors import DatabaseNotMigrated

logger = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# Any constant will do; it only has to be the same for every process migrating this database.
_MIGRATION_LOCK = 0x6C69_6665_6C6F_6E67  # "lifelong"


def make_engine(
    url: str,
    *,
    sqlite_synchronous: Literal["FULL", "NORMAL"] = "FULL",
    connect_timeout_s: float = 10.0,
    statement_timeout_s: float | None = None,
    pooled: bool = True,
) -> Engine:
    """An engine for `url` whose waits are bounded: a connection attempt gives up after
    `connect_timeout_s` (psycopg's own default waits ~130 s on a server that accepts and never
    answers), and so does waiting for a pooled connection; a statement after
    `statement_timeout_s` (PostgreSQL's statement_timeout; SQLite's busy timeout, the wait for
    the write lock: 5 s when None). None: statements are not limited on PostgreSQL.
    `pooled=False`: a new connection each time (a health probe must not reuse one that hangs).

    For SQLite: WAL, the given synchronous level and foreign keys on every connection; the
    file's folder created owner-only and the file itself readable by its owner only (it holds
    what users asked and said; SQLite gives its -wal and -shm files the same mode). Raises
    ValueError for an unknown synchronous level."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        connect_args: dict[str, Any] = {"connect_timeout": max(1, round(connect_timeout_s))}
        if statement_timeout_s is not None and parsed.get_backend_name() == "postgresql":
            connect_args["options"] = f"-c statement_timeout={round(statement_timeout_s * 1000)}"
        # pre_ping: a restarted server leaves dead connections in the pool.
        if not pooled:
            return create_engine(parsed, poolclass=NullPool, connect_args=connect_args)
        return create_engine(
            parsed, pool_pre_ping=True, pool_timeout=connect_timeout_s, connect_args=connect_args
        )
    if sqlite_synchronous not in ("FULL", "NORMAL"):
        raise ValueError(f"sqlite_synchronous must be FULL or NORMAL, got {sqlite_synchronous!r}")
    if parsed.database and parsed.database != ":memory:" and not parsed.database.startswith("file:"):
        _private_file(Path(parsed.database))
    busy_timeout_ms = round((statement_timeout_s or 5.0) * 1000)
    engine = (create_engine(parsed, pool_timeout=connect_timeout_s) if pooled
              else create_engine(parsed, poolclass=NullPool))

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute(f"PRAGMA synchronous = {sqlite_synchronous}")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    # pysqlite's own transaction handling is kept on purpose: it opens the transaction at the
    # first write, so reads before it (our validation of append-only rows) never hold a stale
    # WAL snapshot that would make the write fail with SQLITE_BUSY instead of waiting.
    return engine


def _private_file(path: Path) -> None:
    """Create `path` (and its folder) readable by its owner only; tighten an existing one."""
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700)
    # Never open an existing file: closing any descriptor of it drops every POSIX lock this
    # process holds on it, SQLite's included (another engine's connections then fail with
    # "disk I/O error"). A missing file has no connection in this process to disturb.
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
    for name in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            if name.stat().st_mode & 0o077 and name.stat().st_uid == os.getuid():
                name.chmod(0o600)
        except FileNotFoundError:
            pass


# user:password@ in a URL, and a parameter whose name says secret (password=, sslpassword=,
# api_key=, token=...) in a query string or a libpq key=value list.
_USERINFO = re.compile(r"(?<=://)([^:/@\s]*):([^@/\s]+)@")
_SECRET_PARAMETER = re.compile(
    r"(?i)((?:^|[?&;\s])[\w.-]*(?:pass|secret|token|key|credential)[\w.-]*=)([^&;\s]*)"
)


def mask_secrets(text: str) -> str:
    """`text` (a database URL, a connection string, a log line) with every password or other
    secret a database URL can carry replaced by ***."""
    return _SECRET_PARAMETER.sub(r"\1***", _USERINFO.sub(r"\1:***@", text))


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
            # A migration rewrites whole tables and waits for another migrating process: the
            # engine's per-statement limit is for serving, not for this transaction.
            connection.exec_driver_sql("SET LOCAL statement_timeout = 0")
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
        connection.commit()


def ensure_migrated(engine: Engine, *, create_if_empty: bool = False) -> None:
    """Return if the database is at the head revision. `create_if_empty`: a database without a
    single table is migrated to the head instead (a fresh data dir's own SQLite file); one at an
    older revision is never upgraded here. Raises DatabaseNotMigrated otherwise."""
    where = mask_secrets(engine.url.render_as_string(hide_password=False))
    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return
    if current is None and create_if_empty and not inspect(engine).get_table_names():
        upgrade(engine)
        logger.info("created the database schema at %s (revision %s)", where, head)
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


@dataclass(frozen=True)
class DatabaseState:
    up: bool
    checked_at: float | None  # time.time() of the last finished check; None before the first
    error: str | None  # why the last check failed, for operators (it may name hosts)


class DatabaseWatch:
    """Whether the database answers: `SELECT 1` every `every_s` on a thread of its own, so a
    readiness probe reads the answer at once instead of waiting on a dead server. Give it an
    unpooled engine (`make_engine(..., pooled=False)`): each check connects afresh, bounded by
    the connect timeout. A check still running after `stuck_after_s` counts as down.

    `on_down()` runs when the database stops answering: the gateway drops its pool there, since
    a pooled connection to a server that stopped answering would hang whoever takes it next (no
    client-side timeout covers a query on an open connection). Call `close` at shutdown."""

    def __init__(
        self,
        engine: Engine,
        *,
        every_s: float = 2.0,
        stuck_after_s: float = 10.0,
        on_down: Callable[[], None] = lambda: None,
    ):
        self._engine = engine
        self._on_down = on_down
        self._every_s = every_s
        self._stuck_after_s = stuck_after_s
        self._lock = threading.Lock()
        self._state = DatabaseState(up=True, checked_at=None, error=None)
        self._checking_since: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="database-watch", daemon=True)
        self._thread.start()

    def state(self) -> DatabaseState:
        with self._lock:
            state, since = self._state, self._checking_since
        if since is not None and time.monotonic() - since > self._stuck_after_s:
            return DatabaseState(
                up=False, checked_at=state.checked_at,
                error=f"no answer for {time.monotonic() - since:.0f} s",
            )
        return state

    def close(self) -> None:
        self._stop.set()
        # A check stuck in a connection attempt ends with its timeout; the thread is a daemon.
        self._thread.join(1.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                self._checking_since = time.monotonic()
            try:
                with self._engine.connect() as connection:
                    connection.exec_driver_sql("SELECT 1")
            except Exception as exc:  # any failure means: not answering as it should
                state = DatabaseState(up=False, checked_at=time.time(),
                                      error=f"{type(exc).__name__}: {exc}".splitlines()[0])
                if self._state.up:
                    logger.warning("database: not answering: %s", state.error)
                    self._on_down()
            else:
                state = DatabaseState(up=True, checked_at=time.time(), error=None)
                if not self._state.up:
                    logger.info("database: answering again")
            with self._lock:
                self._state, self._checking_since = state, None
            self._stop.wait(self._every_s)
