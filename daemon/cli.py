"""The `lifelong` command line: builds settings once, then calls the libraries with plain values.

Every failure a user can fix ends as one line on stderr naming the fix, and exit status 2.
"""

from __future__ import annotations

import hashlib
import logging
import os
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


def _quiet_openmp() -> None:
    # Must precede torch's import. Spinning OpenMP threads cost 100x on a shared 2-core box
    # (measured: 2.3 s vs 27 ms a training step) and nothing on an idle one.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


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
    _quiet_openmp()
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


@app.command("serve")
def serve(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    host: Annotated[str | None, typer.Option(help="Gateway address (gateway.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Gateway port (gateway.port).")] = None,
) -> None:
    """Start vLLM (unless vllm.upstreams lists running servers) and the OpenAI gateway."""
    gateway = {key: value for key, value in (("host", host), ("port", port)) if value is not None}
    _serve(settings_from(config, data_dir=data_dir, gateway=gateway or None))


def _serve(settings: Settings) -> None:
    import uvicorn

    from lifelong.daemon.gateway.app import create_app
    from lifelong.feedback_store.database import ensure_migrated, make_engine
    from lifelong.feedback_store.errors import DatabaseNotMigrated

    if not settings.vllm.upstreams and not (settings.base_model_path / "config.json").is_file():
        fail(f"no base model at {settings.base_model_path}; run `lifelong base build` "
             "or set base_model.path to a Hugging Face model folder")
    engine = make_engine(settings.database_url, sqlite_synchronous=settings.database.sqlite_synchronous)
    try:
        ensure_migrated(engine)
    except DatabaseNotMigrated as exc:
        fail(str(exc))
    finally:
        engine.dispose()
    if not settings.gateway.api_keys:
        logging.getLogger(__name__).warning(
            "no API keys configured: serving without authentication, bound to %s only",
            settings.gateway.host,
        )
    fatal: list[str] = []
    server: uvicorn.Server | None = None

    def on_fatal(reason: str) -> None:
        fatal.append(reason)
        if server is not None:
            server.should_exit = True

    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, on_fatal=on_fatal),
            host=settings.gateway.host,
            port=settings.gateway.port,
            timeout_graceful_shutdown=int(settings.gateway.drain_timeout_s),
            log_config=None,
            access_log=False,
            lifespan="on",
        )
    )
    server.run()
    if fatal or not server.started:
        fail(fatal[0] if fatal else "the gateway did not start; see the log above")


DEMO_HINT = """
lifelong is starting vLLM and the gateway on http://{host}:{port} (Ctrl-C stops both).
Once it logs "gateway ready", paste into another terminal:

  curl -s {host}:{port}/v1/chat/completions -H 'content-type: application/json' \\
    -d '{{"model": "lifelong", "messages": [{{"role": "user", "content": "What is 12 + 34?"}}]}}'

  curl -s {host}:{port}/v1/feedback -H 'content-type: application/json' \\
    -d '{{"interaction_id": "<the id above>", "kind": "correction", "text": "46"}}'
"""


@app.command("demo")
def demo(config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """Build the embedded base model, show it answering, migrate the database, and serve it."""
    _quiet_openmp()
    from lifelong.base_model import answer, build
    from lifelong.feedback_store.database import make_engine, upgrade

    settings = settings_from(config, data_dir=data_dir)
    out_dir = _require_embedded(settings)
    report = build(out_dir, seed=settings.base_model.seed, steps=settings.base_model.build_steps)
    typer.echo(report.describe())
    for question in ("What is 12 + 34?", "What is 58 - 21?", "What is 345 + 123?"):
        typer.echo(f"  user: {question}\n  model: {answer(out_dir, question)}")
    engine = make_engine(settings.database_url, sqlite_synchronous=settings.database.sqlite_synchronous)
    upgrade(engine)
    engine.dispose()
    typer.echo(DEMO_HINT.format(host=settings.gateway.host, port=settings.gateway.port))
    _serve(settings)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        logging.getLogger(__name__).info("interrupted")
        sys.exit(130)
