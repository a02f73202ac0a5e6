"""Feedback requests: an idempotency key per principal, so a retried feedback call never writes twice.

A client whose call timed out cannot know whether its feedback was committed; sending it again
with the same `Idempotency-Key` now returns the rows of the first call. One row per keyed call:
who sent it, the key, a digest of its items (a key reused for other items is refused) and the
ids of the feedback rows it wrote.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the model's types: a migration must not change when models.py does.
Time = sa.DateTime(timezone=True)
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


def upgrade() -> None:
    op.create_table(
        "feedback_requests",
        sa.Column("id", BigId, nullable=False),
        sa.Column("principal", sa.String(), nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=False),
        sa.Column("request_sha256", sa.String(64), nullable=False),
        sa.Column("feedback_ids", Json, nullable=False),
        sa.Column("created_at", Time, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_feedback_requests"),
        sa.UniqueConstraint(
            "principal", "idempotency_key", name="uq_feedback_requests_principal_idempotency_key"
        ),
    )


def downgrade() -> None:
    op.drop_table("feedback_requests")
