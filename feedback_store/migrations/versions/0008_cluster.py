"""Cluster state: the learning loop's leadership lease, and a heartbeat row per gateway replica.

`leases`: one row per lease name ("learning"): who holds it, its fencing epoch (raised at every
change of holder, so a deposed leader's late writes can be refused) and when it expires, in the
database's own clock (seconds since 1970), so replicas' clocks never matter.
`replicas`: one row per gateway replica, rewritten at every heartbeat: where it answers, whether
it leads, the champion it routes the alias to, and what every vLLM server it talks to serves.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the model's types: a migration must not change when models.py does.
Time = sa.DateTime(timezone=True)
Json = sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("holder", sa.String(255), nullable=False),
        sa.Column("holder_url", sa.String(), nullable=True),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.Column("acquired_at", Time, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_leases"),
    )
    op.create_table(
        "replicas",
        sa.Column("replica_id", sa.String(255), nullable=False),
        sa.Column("url", sa.String(), nullable=True),
        sa.Column("started_at", Time, nullable=False),
        sa.Column("seen_at", sa.Double(), nullable=False),
        sa.Column("leader", sa.Boolean(), nullable=False),
        sa.Column("champion", sa.String(), nullable=True),
        sa.Column("servers", Json, nullable=False),
        sa.PrimaryKeyConstraint("replica_id", name="pk_replicas"),
    )


def downgrade() -> None:
    op.drop_table("replicas")
    op.drop_table("leases")
