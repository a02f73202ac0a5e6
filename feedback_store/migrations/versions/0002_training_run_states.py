"""Training runs: `skipped` and `interrupted` states, and the host and pid of the trainer process.

`skipped`: the run found too little new data and trained nothing. `interrupted`: the process that
owned a running run died with the daemon (found at the next start). Eval runs get `interrupted`
too. `host` + `pid` let a restarted daemon tell its own dead trainers from live ones elsewhere.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD = "status IN ('running', 'succeeded', 'failed')"
TRAINING = "status IN ('running', 'succeeded', 'failed', 'skipped', 'interrupted')"
EVAL = "status IN ('running', 'succeeded', 'failed', 'interrupted')"


def _replace_status_check(table: str, condition: str) -> None:
    name = op.f(f"ck_{table}_status")
    with op.batch_alter_table(table) as batch:
        batch.drop_constraint(name, type_="check")
        batch.create_check_constraint(name, condition)


def upgrade() -> None:
    with op.batch_alter_table("training_runs") as batch:
        batch.add_column(sa.Column("host", sa.String(), nullable=True))
        batch.add_column(sa.Column("pid", sa.Integer(), nullable=True))
    _replace_status_check("training_runs", TRAINING)
    _replace_status_check("eval_runs", EVAL)


def downgrade() -> None:
    # Runs in the new states cannot be expressed in the old schema: they count as failed.
    op.execute("UPDATE training_runs SET status = 'failed' WHERE status IN ('skipped', 'interrupted')")
    op.execute("UPDATE eval_runs SET status = 'failed' WHERE status = 'interrupted'")
    _replace_status_check("eval_runs", OLD)
    _replace_status_check("training_runs", OLD)
    with op.batch_alter_table("training_runs") as batch:
        batch.drop_column("pid")
        batch.drop_column("host")
