"""`lifelong serve`: the checks a user can fix first (base model, schema, eval suites), then vLLM
and the gateway under uvicorn until a signal or a fatal error."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer

from lifelong.daemon.cli.base import ensure_base_model
from lifelong.daemon.cli.options import ConfigOption, DataDirOption, fail, settings_from
from lifelong.daemon.settings import Settings
from lifelong.evals import sandbox

logger = logging.getLogger(__name__)


def serve(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    host: Annotated[str | None, typer.Option(help="Gateway address (gateway.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Gateway port (gateway.port).")] = None,
) -> None:
    """Start vLLM (unless vllm.upstreams lists running servers) and the OpenAI gateway."""
    gateway = {key: value for key, value in (("host", host), ("port", port)) if value is not None}
    run_gateway(settings_from(config, data_dir=data_dir, gateway=gateway or None))


def private_data_dir(data_dir: Path) -> None:
    """Make the daemon's files its user's alone, outside systemd too: the umask for everything
    it and its children create from now on (database, logs, adapters, the trainer's settings
    with the database URL), the data dir 0700, and existing logs and run files 0600."""
    os.umask(0o077)
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o700)
    for folder in (data_dir / "logs", data_dir / "run"):
        if folder.is_dir():
            folder.chmod(0o700)
            for path in folder.iterdir():
                if path.is_file() and not path.is_symlink():
                    path.chmod(0o600)


def run_gateway(settings: Settings) -> None:
    """Serve until stopped; exits naming the fix if start-up fails or a part fails for good."""
    import uvicorn

    from lifelong.daemon.gateway.app import create_app

    private_data_dir(settings.data_dir)
    if not settings.vllm.upstreams:
        ensure_base_model(settings)
    _ensure_schema(settings)
    check_suites(settings)
    found = sandbox.describe()
    logger.info("sandbox: isolation %s, layers %s; python_tests %s%s", found["isolation"],
                ", ".join(found["layers"]), found["python_tests"],
                f" ({found['reason']})" if found["reason"] else "")
    if not settings.gateway.api_keys:
        logger.warning("no API keys configured: serving without authentication, bound to %s only",
                       settings.gateway.host)
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


def _ensure_schema(settings: Settings) -> None:
    from lifelong.feedback_store.database import ensure_migrated, make_engine
    from lifelong.feedback_store.errors import DatabaseNotMigrated

    engine = make_engine(settings.database_url, sqlite_synchronous=settings.database.sqlite_synchronous)
    try:
        # The embedded SQLite file of a fresh data dir gets its schema here; a database the
        # user named (PostgreSQL, their own file) is theirs to migrate, and one at an older
        # revision is upgraded only by `lifelong db upgrade`, never behind their back.
        ensure_migrated(engine, create_if_empty=settings.database.url is None)
    except DatabaseNotMigrated as exc:
        fail(str(exc))
    finally:
        engine.dispose()


def check_suites(settings: Settings) -> None:
    """Refuse to start on an eval suite file with mistakes, naming each file:line."""
    from lifelong.evals.suites import SuiteError, load_regression_suites, load_suite_file

    try:
        if settings.regression_dir.is_dir():
            load_regression_suites(settings.regression_dir)
        if settings.evals.retention_source is not None:
            load_suite_file(settings.evals.retention_source, kind="retention")
    except (SuiteError, OSError) as exc:
        problems = exc.problems if isinstance(exc, SuiteError) else [str(exc)]
        fail("eval suites are invalid:\n  " + "\n  ".join(problems))
