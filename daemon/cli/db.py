"""`lifelong db upgrade`, and the migrated store the registry commands read."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import typer

from lifelong.daemon.cli.options import ConfigOption, DataDirOption, fail, settings_from
from lifelong.daemon.settings import Settings, masked

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

T = TypeVar("T")

app = typer.Typer(no_args_is_help=True, help="The feedback database.")


@app.command("upgrade")
def db_upgrade(config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """Apply the database migrations (creates the SQLite file on first use)."""
    from lifelong.feedback_store.database import current_revision, make_engine, upgrade

    settings = settings_from(config, data_dir=data_dir)
    engine = make_engine(settings.database_url, sqlite_synchronous=settings.database.sqlite_synchronous)
    try:
        before = current_revision(engine)
        upgrade(engine)
        after = current_revision(engine)
    except Exception as exc:  # a refused connection, a bad URL: say which and stop
        fail(f"cannot migrate {masked(settings)['database']['effective_url']}: {exc}")
    finally:
        engine.dispose()
    typer.echo(f"database at revision {after}" + ("" if before == after else f" (was {before})"))


def with_store(settings: Settings, read: Callable[[Session], T]) -> T:
    """Run `read` in a session on the migrated store, or exit naming the fix."""
    from sqlalchemy.orm import Session as OrmSession

    from lifelong.feedback_store.database import ensure_migrated, make_engine
    from lifelong.feedback_store.errors import DatabaseNotMigrated

    engine = make_engine(settings.database_url, sqlite_synchronous=settings.database.sqlite_synchronous)
    try:
        ensure_migrated(engine)
        with OrmSession(engine) as session:
            found = read(session)
    except DatabaseNotMigrated as exc:
        fail(str(exc))
    finally:
        engine.dispose()
    return found
