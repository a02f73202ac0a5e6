"""`lifelong adapters list|show`: the adapter registry, read from the store (no daemon needed)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from lifelong.daemon.cli.db import with_store
from lifelong.daemon.cli.options import ConfigOption, DataDirOption, fail, settings_from

app = typer.Typer(no_args_is_help=True, help="The adapter registry.")


@app.command("list")
def adapters_list(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per adapter.")] = False,
) -> None:
    """Every registered adapter, oldest first: status (what the gate said, where the registry's
    status alone would hide it), lineage, data and final losses."""
    from lifelong.daemon.adapter_report import adapter_rows, shown_status

    settings = settings_from(config, data_dir=data_dir)
    rows = with_store(settings, adapter_rows)
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row))
        return
    if not rows:
        typer.echo("no adapters yet; `lifelong train` makes one from feedback")
        return
    header = ("VERSION", "STATUS", "PARENT", "CREATED", "RUN", "EXAMPLES", "LOSS")
    table = [header] + [
        (row["version"], shown_status(row["status"], row["gate"])
         + (" (forced)" if row["forced"] else ""),
         row["parent_version"] or "-", row["created_at"][:19].replace("T", " "),
         str(row["training_run_id"] or "-"), row["examples"], row["losses"])
        for row in rows
    ]
    widths = [max(len(str(line[i])) for line in table) for i in range(len(header))]
    for line in table:
        cells = (str(cell).ljust(width) for cell, width in zip(line, widths, strict=True))
        typer.echo("  ".join(cells).rstrip())


@app.command("show")
def adapters_show(
    version: Annotated[str, typer.Argument(help="An adapter version, e.g. v0003.")],
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Everything, as one JSON object.")] = False,
) -> None:
    """One adapter: registry row, manifest (data counts, hyperparameters), loss curve summary,
    and how much of the data it (and its ancestors) learned from has been deleted since."""
    from lifelong.daemon.adapter_report import adapter_detail, describe_detail
    from lifelong.feedback_store.errors import UnknownAdapter

    settings = settings_from(config, data_dir=data_dir)
    try:
        detail = with_store(settings, lambda session: adapter_detail(
            session, version=version, base_model_dir=settings.base_model_path))
    except UnknownAdapter:
        fail(f"no adapter {version!r}; `lifelong adapters list` shows the registered ones")
    typer.echo(json.dumps(detail, indent=2) if as_json else describe_detail(detail))
