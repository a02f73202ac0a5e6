"""`lifelong data erase|export`: a principal's or an end user's data, straight from the store
(no daemon needed: an erasure request must not wait for a gateway to be up). The admin API's
`POST /admin/data/erasures` and `GET /admin/data/export` do the same through a running daemon."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from lifelong.daemon.cli.options import ConfigOption, DataDirOption, fail, settings_from

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from lifelong.daemon.settings import Settings
    from lifelong.feedback_store.deletion import Subject

app = typer.Typer(no_args_is_help=True, help="Users' data: erase on request, export.")
T = TypeVar("T")

PrincipalOption = Annotated[str | None, typer.Option(
    "--principal", help="An API key's principal: its answers, the feedback on them and the "
    "feedback it gave, its tasks.")]
UserKeyOption = Annotated[str | None, typer.Option(
    "--user-key", help="An end user as your application named them (OpenAI `user` field or "
    "x-lifelong-user header): their answers and the feedback on them.")]


@app.command("erase")
def erase_command(
    principal: PrincipalOption = None,
    user_key: UserKeyOption = None,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Delete all data of one principal or one end user, in batches, and print the receipt
    (JSON: counts per table, start and end). Adapters already trained on it are flagged by
    `lifelong adapters show`."""
    from lifelong.feedback_store.deletion import erase

    settings = settings_from(config, data_dir=data_dir)
    subject = _subject(principal, user_key)
    r = settings.retention
    receipt = _with_sessions(settings, lambda sessions: erase(
        sessions, subject=subject, batch_size=r.batch_size, pause_s=r.pause_ms / 1000))
    typer.echo(json.dumps(receipt.to_dict()))


@app.command("export")
def export_command(
    principal: PrincipalOption = None,
    user_key: UserKeyOption = None,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Print all data of one principal or one end user as JSON lines (`type`: interaction,
    feedback or task, and the row's columns)."""
    from lifelong.feedback_store.export import export

    settings = settings_from(config, data_dir=data_dir)
    subject = _subject(principal, user_key)

    def write(sessions: sessionmaker[Session]) -> None:
        for row in export(sessions, subject=subject, batch_size=settings.retention.batch_size):
            typer.echo(json.dumps(row, separators=(",", ":")))

    _with_sessions(settings, write)


def _subject(principal: str | None, user_key: str | None) -> Subject:
    from lifelong.feedback_store.deletion import Subject
    from lifelong.feedback_store.errors import InvalidSubject

    try:
        return Subject(principal=principal, user_key=user_key)
    except InvalidSubject:
        fail("give exactly one of --principal NAME and --user-key KEY, not empty")


def _with_sessions(settings: Settings, work: Callable[[sessionmaker[Session]], T]) -> T:
    with _sessions(settings) as sessions:
        return work(sessions)


@contextmanager
def _sessions(settings: Settings) -> Iterator[sessionmaker[Session]]:
    from sqlalchemy.orm import sessionmaker

    from lifelong.feedback_store.database import ensure_migrated, make_engine
    from lifelong.feedback_store.errors import DatabaseNotMigrated

    engine = make_engine(settings.database_url,
                         sqlite_synchronous=settings.database.sqlite_synchronous)
    try:
        ensure_migrated(engine)
        yield sessionmaker(engine, expire_on_commit=False)
    except DatabaseNotMigrated as exc:
        fail(str(exc))
    finally:
        engine.dispose()
