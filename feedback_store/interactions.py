"""Interactions: turning logged requests into rows, and reading them back.

The gateway writes interactions through the `InteractionLog` (off the request path); these
functions build the rows it inserts and serve the reads. Like every store function they take a
session first and flush, never commit: the caller frames the transaction.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, insert, select
from sqlalchemy.orm import Session, selectinload

from lifelong.feedback_store.errors import ForeignInteraction, UnknownInteraction
from lifelong.feedback_store.models import Interaction
from lifelong.feedback_store.records import NewInteraction
from lifelong.feedback_store.split import is_heldout


def prompt_key(*, messages: Any = None, prompt: Any = None) -> str:
    """sha256 of the canonical JSON of the messages or the prompt (whichever is given).

    Sampling parameters and key order do not change it, so answers to the same prompt share a
    key; a chat and a text prompt never do (the JSON names which one it is).
    """
    shape = {"messages": messages} if messages is not None else {"prompt": prompt}
    canonical = json.dumps(shape, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def interaction_row(record: NewInteraction, *, heldout_fraction: float) -> dict[str, Any]:
    """The column values of `record`, with its prompt key and held-out side computed.
    Raises ValueError for a heldout fraction outside [0, 1]."""
    return {
        "id": record.id,
        "created_at": record.created_at,
        "endpoint": record.endpoint,
        "model": record.model,
        "adapter_version": record.adapter_version,
        "request": record.request,
        "response_text": record.response_text,
        "finish_reason": record.finish_reason,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "latency_ms": record.latency_ms,
        "principal": record.principal,
        "user_key": record.user_key,
        "prompt_key": prompt_key(
            messages=record.request.get("messages"), prompt=record.request.get("prompt")
        ),
        "heldout": is_heldout(record.id, heldout_fraction),
    }


def add_interactions(
    session: Session, *, records: Sequence[NewInteraction], heldout_fraction: float
) -> None:
    """Insert `records` in one statement. Raises IntegrityError (SQLAlchemy) on a duplicate id."""
    if records:
        rows = [interaction_row(record, heldout_fraction=heldout_fraction) for record in records]
        session.execute(insert(Interaction), rows)


def get_interaction(
    session: Session, *, interaction_id: str, principal: str | None = None, admin: bool = True
) -> Interaction:
    """The interaction with its feedback loaded. Raises UnknownInteraction; ForeignInteraction
    when a non-admin `principal` asks for another principal's interaction."""
    row = session.scalar(
        select(Interaction)
        .where(Interaction.id == interaction_id)
        .options(selectinload(Interaction.feedback))
    )
    if row is None:
        raise UnknownInteraction(
            f"no interaction {interaction_id!r}", field="interaction_id"
        )
    check_owner(row.id, row.principal, principal=principal, admin=admin, field="interaction_id")
    return row


def owners(
    session: Session | Connection, *, interaction_ids: Iterable[str]
) -> dict[str, str | None]:
    """interaction id -> principal, for those of `interaction_ids` that exist."""
    ids = set(interaction_ids)
    if not ids:
        return {}
    rows = session.execute(
        select(Interaction.id, Interaction.principal).where(Interaction.id.in_(ids))
    )
    return {row.id: row.principal for row in rows}


def check_owner(
    interaction_id: str,
    owner: str | None,
    *,
    principal: str | None,
    admin: bool,
    field: str,
    index: int | None = None,
) -> None:
    """Raises ForeignInteraction unless `principal` may refer to an interaction made by `owner`:
    admins and anonymous callers (an open gateway) may refer to any; others only to their own."""
    if principal is None or admin or owner == principal:
        return
    raise ForeignInteraction(
        f"interaction {interaction_id!r} belongs to another principal", field=field, index=index
    )
