"""Adapters: the `approved` status, for a candidate the gate let through and not yet promoted.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD = "status IN ('candidate', 'champion', 'retired', 'rejected')"
NEW = "status IN ('candidate', 'approved', 'champion', 'retired', 'rejected')"


def _status_check(condition: str) -> None:
    name = op.f("ck_adapters_status")
    with op.batch_alter_table("adapters") as batch:
        batch.drop_constraint(name, type_="check")
        batch.create_check_constraint(name, condition)


def upgrade() -> None:
    _status_check(NEW)


def downgrade() -> None:
    # Approved but never promoted: a candidate again, to be judged anew.
    op.execute("UPDATE adapters SET status = 'candidate' WHERE status = 'approved'")
    _status_check(OLD)
