"""`lifelong promote|rollback|status`: commands that ask the running daemon, through its admin
API (admin_client), with an admin key that never goes on the command line."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from lifelong.daemon.cli.admin_client import AdminClient, AdminError, Promoted
from lifelong.daemon.cli.keys import KEY_ON_ARGV, read_key
from lifelong.daemon.cli.options import ConfigOption, DataDirOption, fail, settings_from
from lifelong.daemon.cli.status import describe_status
from lifelong.daemon.settings import Settings

UrlOption = Annotated[str | None, typer.Option(
    "--url", help="The running daemon; default http://<gateway.host>:<gateway.port>.")]
KeyOption = Annotated[str | None, typer.Option("--key", hidden=True, help="Refused (argv).")]
KeyFileOption = Annotated[Path | None, typer.Option(
    "--key-file", help="A file holding an API key with the admin scope ('-': stdin); "
    "default: $LIFELONG_API_KEY.")]


def admin_key(key: str | None, key_file: Path | None) -> str | None:
    """The admin key from --key-file or LIFELONG_API_KEY; `--key KEY` is refused."""
    if key is not None:
        fail(f"--key {KEY_ON_ARGV}; set LIFELONG_API_KEY or use --key-file FILE")
    if key_file is not None:
        return read_key(key_file)
    return os.environ.get("LIFELONG_API_KEY") or None


def admin_client(settings: Settings, url: str | None, key: str | None) -> AdminClient:
    return AdminClient(url or f"http://{settings.gateway.host}:{settings.gateway.port}", key)


def promote(
    version: Annotated[str, typer.Argument(help="The adapter to serve, e.g. v0003.")],
    force: Annotated[bool, typer.Option(
        "--force", help="Without the gate's approval; recorded as forced, with who did it.")] = False,
    canary: Annotated[bool, typer.Option(
        "--canary", help="First on promotion.canary.share of the users: their live outcomes "
        "promote it or roll it back.")] = False,
    reason: Annotated[str | None, typer.Option(help="Why, for the promotion log.")] = None,
    url: UrlOption = None,
    key: KeyOption = None,
    key_file: KeyFileOption = None,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Serve VERSION under the public alias, through the running daemon (hot-swap, no downtime)."""
    settings = settings_from(config, data_dir=data_dir)
    client = admin_client(settings, url, admin_key(key, key_file))
    if canary and force:
        fail("--canary tries an approved adapter on live users; --force skips the gate: "
             "choose one")
    try:
        if canary:
            trial = client.start_canary(version)
            typer.echo(f"canary: {trial.version} serves {trial.share:.0%} of the users of the "
                       f"alias, against {trial.baseline} (`lifelong status` follows it)")
            return
        moved = client.promote(version, force=force, reason=reason)
    except AdminError as exc:
        fail(str(exc))
    typer.echo(f"champion: {moved.champion} (was {moved.previous})"
               + (" [forced]" if moved.forced else "") + _lagging(moved))


def rollback(
    to: Annotated[str | None, typer.Option(
        help="A version or `base`; default: what the champion replaced.")] = None,
    reason: Annotated[str | None, typer.Option(help="Why, for the promotion log.")] = None,
    url: UrlOption = None,
    key: KeyOption = None,
    key_file: KeyFileOption = None,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Return the public alias to the previous champion, through the running daemon."""
    settings = settings_from(config, data_dir=data_dir)
    client = admin_client(settings, url, admin_key(key, key_file))
    try:
        moved = client.rollback(to=to, reason=reason)
    except AdminError as exc:
        fail(str(exc))
    typer.echo(f"champion: {moved.champion} (was {moved.previous})" + _lagging(moved))


def stop_canary(
    url: UrlOption = None,
    key: KeyOption = None,
    key_file: KeyFileOption = None,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """End the open canary: every user back on the champion (the candidate stays approved)."""
    settings = settings_from(config, data_dir=data_dir)
    client = admin_client(settings, url, admin_key(key, key_file))
    try:
        trial = client.stop_canary()
    except AdminError as exc:
        fail(str(exc))
    typer.echo(f"canary of {trial.version} stopped; {trial.baseline} serves every user")


def _lagging(moved: Promoted) -> str:
    return (f"; not yet followed by replicas {', '.join(moved.lagging)} (see `lifelong status`)"
            if moved.lagging else "")


def status(
    url: UrlOption = None,
    key: KeyOption = None,
    key_file: KeyFileOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="The whole status as JSON.")] = False,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """What the running daemon serves and learns: champion, waiting candidates, the learning
    cycle, the next scheduled run, recent training runs, decisions and promotions."""
    settings = settings_from(config, data_dir=data_dir)
    client = admin_client(settings, url, admin_key(key, key_file))
    try:
        if as_json:  # the document as sent, fields the CLI does not read included
            typer.echo(json.dumps(client.call("/admin/status", None), indent=2))
            return
        found = client.status()
    except AdminError as exc:
        fail(str(exc))
    typer.echo(describe_status(found))
