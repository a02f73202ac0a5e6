"""`lifelong keys hash`, and how every command reads a key: never from the command line."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Annotated

import typer

from lifelong.daemon.cli.options import fail

app = typer.Typer(no_args_is_help=True, help="API keys.")

KEY_ON_ARGV = ("puts the key on the command line, where other users see it (ps, /proc) and "
               "shell history keeps it")


def read_key(key_file: Path | None) -> str:
    """A key from `key_file` ('-': stdin), or typed at a hidden prompt, or piped on stdin;
    surrounding whitespace dropped, as the gateway drops it."""
    if key_file is not None and str(key_file) != "-":
        try:
            key = key_file.read_text()
        except OSError as exc:
            fail(f"cannot read the key file {key_file}: {exc.strerror}; give a readable file")
    elif key_file is None and sys.stdin.isatty():
        key = typer.prompt("API key", hide_input=True, err=True)
    else:
        key = sys.stdin.read()
    if not key.strip():
        fail("no key given; pipe it (`lifelong keys hash < key.txt`) or use --key-file FILE")
    return key.strip()


@app.command("hash")
def keys_hash(
    key: Annotated[str | None, typer.Argument(
        help="Refused: a key here is visible to other users; give '-' for stdin, or leave it "
        "out.", show_default=False)] = None,
    key_file: Annotated[Path | None, typer.Option(
        "--key-file", help="Read the key from this file ('-': stdin).")] = None,
) -> None:
    """Print the sha256 to put in gateway.api_keys (the daemon never stores the key itself).
    The key is read from stdin, a hidden prompt, or --key-file; never from the command line."""
    if key not in (None, "-"):
        fail(f"`keys hash KEY` {KEY_ON_ARGV}; type it at the prompt of `lifelong keys hash`, "
             "pipe it (`lifelong keys hash < key.txt`) or use --key-file FILE")
    typer.echo(hashlib.sha256(read_key(key_file).encode()).hexdigest())
