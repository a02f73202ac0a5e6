"""The `lifelong` command line: builds settings once, then calls the libraries with plain values.

One module per room, and this one as the table of contents (the order is `lifelong --help`'s):
serve (vLLM and the gateway), train, trainer (a worker training the runs the gateways queue),
evaluate (`eval`), admin (`promote`, `rollback`, `status` through the running daemon's admin API:
admin_client, status), demo, and the groups config, adapters, data, db, base and keys. options holds
what every command shares.

Every failure a user can fix ends as one line on stderr naming the fix, and exit status 2.
Importing this package imports no torch, vLLM or SQLAlchemy: each command imports what it runs,
so that `lifelong --help` stays quick.
"""

from __future__ import annotations

import logging
import sys

import typer

from lifelong.daemon.cli import (
    adapters,
    admin,
    base,
    config,
    data,
    db,
    demo,
    evaluate,
    keys,
    serve,
    train,
    trainer,
)

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="lifelong: serve a model with vLLM, learn LoRA adapters from its feedback, gate, hot-swap.",
)
app.command("serve")(serve.serve)
app.command("train")(train.train)
app.command("trainer")(trainer.trainer)
app.command("eval")(evaluate.eval_)
app.command("promote")(admin.promote)
app.command("rollback")(admin.rollback)
app.command("stop-canary")(admin.stop_canary)
app.command("status")(admin.status)
app.command("demo")(demo.demo)
app.add_typer(config.app, name="config")
app.add_typer(adapters.app, name="adapters")
app.add_typer(data.app, name="data")
app.add_typer(db.app, name="db")
app.add_typer(base.app, name="base")
app.add_typer(keys.app, name="keys")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        logging.getLogger(__name__).info("interrupted")
        sys.exit(130)
