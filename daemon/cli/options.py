"""What every command shares: the --config and --data-dir options, the settings they build (once,
at the start of a command), and the one-line failure that names the fix (exit status 2)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from lifelong.daemon import log
from lifelong.daemon.settings import Settings, SettingsError, load_settings
from lifelong.evals import sandbox

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML settings file (env LIFELONG_* overrides it).",
                 envvar="LIFELONG_CONFIG"),
]
DataDirOption = Annotated[
    Path | None, typer.Option("--data-dir", help="Data directory (LIFELONG_DATA_DIR).")
]


def quiet_openmp() -> None:
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
    sandbox.configure(settings.evals.sandbox.policy())  # python_tests, here and in `train`
    return settings


def vllm_url(settings: Settings) -> str:
    """The vLLM server to talk to: the first configured upstream, else the daemon's own (its
    current URL, noted in <data_dir>/run/vllm.url, moves when the supervisor replaces it)."""
    noted = settings.data_dir / "run" / "vllm.url"
    if not settings.vllm.upstreams and noted.exists():
        return noted.read_text().strip()
    return settings.vllm_urls[0]
