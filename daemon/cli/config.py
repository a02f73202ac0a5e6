"""`lifelong config show`: the effective settings."""

from __future__ import annotations

import typer
import yaml

from lifelong.daemon.cli.options import ConfigOption, DataDirOption, settings_from
from lifelong.daemon.settings import masked

app = typer.Typer(no_args_is_help=True, help="Inspect the effective settings.")


@app.command("show")
def config_show(config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """Print the effective settings (file + environment + defaults), secrets masked."""
    settings = settings_from(config, data_dir=data_dir)
    typer.echo(yaml.safe_dump(masked(settings), sort_keys=False), nl=False)
