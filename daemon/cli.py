"""The `lifelong` command line: builds settings once, then calls the libraries with plain values.

Every failure a user can fix ends as one line on stderr naming the fix, and exit status 2.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
import yaml

from lifelong.daemon import log
from lifelong.daemon.settings import Settings, SettingsError, load_settings, masked

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="lifelong: serve a model with vLLM, learn LoRA adapters from its feedback, gate, hot-swap.",
)
config_app = typer.Typer(no_args_is_help=True, help="Inspect the effective settings.")
db_app = typer.Typer(no_args_is_help=True, help="The feedback database.")
base_app = typer.Typer(no_args_is_help=True, help="The embedded default base model.")
keys_app = typer.Typer(no_args_is_help=True, help="API keys.")
app.add_typer(config_app, name="config")
app.add_typer(db_app, name="db")
app.add_typer(base_app, name="base")
app.add_typer(keys_app, name="keys")

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML settings file (env LIFELONG_* overrides it).",
                 envvar="LIFELONG_CONFIG"),
]
DataDirOption = Annotated[
    Path | None, typer.Option("--data-dir", help="Data directory (LIFELONG_DATA_DIR).")
]


def fail(message: str) -> NoReturn:
    typer.echo(f"lifelong: {message}", err=True)
    raise typer.Exit(2)


def settings_from(config: Path | None, **overrides: object) -> Settings:
    """Load and validate settings, or exit with the list of bad keys."""
    try:
        settings = load_settings(config, **overrides)
    except SettingsError as exc:
        fail(str(exc))
    log.configure(settings.log_level)
    return settings


@config_app.command("show")
def config_show(config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """Print the effective settings (file + environment + defaults), secrets masked."""
    settings = settings_from(config, data_dir=data_dir)
    typer.echo(yaml.safe_dump(masked(settings), sort_keys=False), nl=False)


@db_app.command("upgrade")
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


def _require_embedded(settings: Settings) -> Path:
    if settings.base_model.path is not None:
        fail(
            f"base_model.path is set to {settings.base_model.path}, your own model; "
            "unset it to use the embedded default"
        )
    return settings.base_model_path


@base_app.command("build")
def base_build(config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """Build the embedded default base model into <data_dir>/base_model (cached)."""
    from lifelong.base_model import build

    settings = settings_from(config, data_dir=data_dir)
    out_dir = _require_embedded(settings)
    report = build(out_dir, seed=settings.base_model.seed, steps=settings.base_model.build_steps)
    typer.echo(report.describe())


@base_app.command("ask")
def base_ask(
    question: Annotated[str, typer.Argument(help="A user message, e.g. 'What is 12 + 34?'.")],
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Answer one chat message with the base model (transformers, greedy), without serving."""
    from lifelong.base_model import answer

    settings = settings_from(config, data_dir=data_dir)
    path = settings.base_model_path
    if not (path / "config.json").is_file():
        fail(f"no model at {path}; run `lifelong base build` first")
    typer.echo(answer(path, question))


@keys_app.command("hash")
def keys_hash(
    key: Annotated[str, typer.Argument(help="The secret key a client will send as Bearer token.")],
) -> None:
    """Print the sha256 to put in gateway.api_keys (the daemon never stores the key itself)."""
    typer.echo(hashlib.sha256(key.encode()).hexdigest())


@app.command("demo")
def demo(config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """Build the embedded base model, print its accuracy, and show it answering."""
    from lifelong.base_model import answer, build

    settings = settings_from(config, data_dir=data_dir)
    out_dir = _require_embedded(settings)
    report = build(out_dir, seed=settings.base_model.seed, steps=settings.base_model.build_steps)
    typer.echo(report.describe())
    for question in ("What is 12 + 34?", "What is 58 - 21?", "What is 345 + 123?"):
        typer.echo(f"  user: {question}\n  model: {answer(out_dir, question)}")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        logging.getLogger(__name__).info("interrupted")
        sys.exit(130)
