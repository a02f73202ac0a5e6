"""Feedback: validating submitted items and storing them, all or nothing.

Validation runs in two steps so the group-commit path (`feedback_committer.py`) can share it:
`check_items` needs no database (shapes, ranges, lengths); `check_references` needs the owners
of the referenced interactions. Both finish before any row is added, so a batch with one bad
item writes nothing. Errors carry the item's `index` in the batch and the offending `field`.

Feedback ids are the watermark training reads from, so on PostgreSQL every transaction that
inserts feedback holds a shared advisory lock, which `settled_max_id` takes exclusively to find
an id below which nothing is still in flight (see `training_data.feedback_since`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, func, select, text
from sqlalchemy.orm import Session

from lifelong.feedback_store.errors import (
    InvalidFeedback,
    RatingOutOfRange,
    SelfPreference,
    TextTooLong,
    UnknownInteraction,
)
from lifelong.feedback_store.interactions import check_owner, owners
from lifelong.feedback_store.models import Feedback
from lifelong.feedback_store.records import Correction, FeedbackItem, Outcome, Preference, Rating

MAX_BATCH = 1000
_VALUE_COLUMNS = [column.key for column in Feedback.__table__.columns if column.key != "id"]
_WATERMARK_LOCK = 0x6C69_6665_6662_6B00  # any constant; the same in every process


def check_items(
    items: Sequence[FeedbackItem],
    *,
    rating_min: float = -1.0,
    rating_max: float = 1.0,
    max_text_chars: int = 200_000,
) -> None:
    """Validate what needs no database. Raises InvalidFeedback, RatingOutOfRange,
    SelfPreference or TextTooLong for the first bad item."""
    if not items:
        raise InvalidFeedback("no feedback items given", field="items")
    if len(items) > MAX_BATCH:
        raise InvalidFeedback(f"at most {MAX_BATCH} items per batch", field="items")
    for index, item in enumerate(items):
        _check_item(
            item, index=index, rating_min=rating_min, rating_max=rating_max,
            max_text_chars=max_text_chars,
        )


def _check_text(value: str | None, *, field: str, index: int, max_text_chars: int) -> None:
    if value is not None and len(value) > max_text_chars:
        raise TextTooLong(
            f"{field} has {len(value)} characters, more than the limit of {max_text_chars}",
            field=field, index=index,
        )


def _check_item(
    item: FeedbackItem, *, index: int, rating_min: float, rating_max: float, max_text_chars: int
) -> None:
    if not item.interaction_id:
        raise InvalidFeedback("interaction_id is empty", field="interaction_id", index=index)
    match item:
        case Rating(score=score):
            # `not a <= x <= b` also refuses NaN.
            if not rating_min <= score <= rating_max:
                raise RatingOutOfRange(
                    f"score {score} outside [{rating_min}, {rating_max}]", field="score",
                    index=index,
                )
        case Preference(interaction_id=chosen, preferred_over=other, rejected_text=rejected):
            if (other is None) == (rejected is None):
                raise InvalidFeedback(
                    "give exactly one of preferred_over or rejected_text",
                    field="preferred_over", index=index,
                )
            if other == chosen:
                raise SelfPreference(
                    "an interaction cannot be preferred over itself", field="preferred_over",
                    index=index,
                )
            _check_text(rejected, field="rejected_text", index=index, max_text_chars=max_text_chars)
        case Correction(text=corrected):
            if not corrected:
                raise InvalidFeedback("text is empty", field="text", index=index)
            _check_text(corrected, field="text", index=index, max_text_chars=max_text_chars)
        case Outcome(reward=reward, passed=passed, verifier=verifier, details=details):
            if reward is None and passed is None:
                raise InvalidFeedback(
                    "give passed, reward, or both", field="passed", index=index
                )
            if reward is not None and not math.isfinite(reward):
                raise InvalidFeedback(f"reward {reward} is not finite", field="reward", index=index)
            _check_text(verifier, field="verifier", index=index, max_text_chars=max_text_chars)
            if details is not None:
                _check_details(details, index=index, max_text_chars=max_text_chars)
        case _:
            raise InvalidFeedback(f"unknown feedback type {type(item).__name__}", index=index)


def _check_details(details: object, *, index: int, max_text_chars: int) -> None:
    try:
        encoded = json.dumps(details, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidFeedback(
            f"details is not plain JSON: {exc}", field="details", index=index
        ) from exc
    _check_text(encoded, field="details", index=index, max_text_chars=max_text_chars)


def referenced_ids(items: Sequence[FeedbackItem]) -> set[str]:
    """Every interaction id the items refer to."""
    ids = {item.interaction_id for item in items}
    ids.update(
        item.preferred_over
        for item in items
        if isinstance(item, Preference) and item.preferred_over is not None
    )
    return ids


def check_references(
    items: Sequence[FeedbackItem],
    found: Mapping[str, str | None],
    *,
    principal: str | None,
    admin: bool,
) -> None:
    """Validate the items against `found` (interaction id -> its principal). Raises
    UnknownInteraction or ForeignInteraction for the first bad reference."""
    for index, item in enumerate(items):
        references = [("interaction_id", item.interaction_id)]
        if isinstance(item, Preference) and item.preferred_over is not None:
            references.append(("preferred_over", item.preferred_over))
        for field, interaction_id in references:
            if interaction_id not in found:
                raise UnknownInteraction(
                    f"no interaction {interaction_id[:200]!r}", field=field, index=index
                )
            check_owner(
                interaction_id, found[interaction_id], principal=principal, admin=admin,
                field=field, index=index,
            )


def feedback_values(
    item: FeedbackItem, *, principal: str | None, created_at: datetime
) -> dict[str, Any]:
    """The column values (all but `id`) of the row for a validated item."""
    values: dict[str, Any] = dict.fromkeys(_VALUE_COLUMNS)
    values.update(
        interaction_id=item.interaction_id, principal=principal, created_at=created_at
    )
    match item:
        case Rating():
            values.update(kind="rating", score=float(item.score))
        case Preference():
            values.update(
                kind="preference", preferred_over=item.preferred_over,
                rejected_text=item.rejected_text,
            )
        case Correction():
            values.update(kind="correction", text=item.text)
        case Outcome():
            values.update(
                kind="outcome", reward=None if item.reward is None else float(item.reward),
                passed=item.passed, verifier=item.verifier, details=item.details,
            )
    return values


def lock_for_insert(connection: Connection) -> None:
    """On PostgreSQL, hold the watermark lock in shared mode until this transaction ends: feedback
    writers never wait for each other, only for `settled_max_id`. Take it before the insert."""
    if connection.dialect.name == "postgresql":
        connection.execute(
            text("SELECT pg_advisory_xact_lock_shared(:key)"), {"key": _WATERMARK_LOCK}
        )


def settled_max_id(session: Session) -> int:
    """The highest feedback id such that no lower id can still appear (0 when there is none).

    A PostgreSQL sequence hands out ids in order but transactions commit in any order: while id
    10 is still in flight, 11 may already be visible. So, in a short transaction of its own,
    this takes the watermark lock exclusively, which waits for every inserting transaction to
    end (and holds new ones for the moment it takes to read the maximum). SQLite writes one
    transaction at a time, so its maximum is settled already. Waits as long as an inserting
    transaction stays open, so never call it from one.
    """
    query = select(func.max(Feedback.id))
    if session.get_bind().dialect.name != "postgresql":
        return session.scalar(query) or 0
    with session.get_bind().engine.begin() as connection:
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _WATERMARK_LOCK})
        return connection.scalar(query) or 0


def add_feedback(
    session: Session,
    *,
    items: Sequence[FeedbackItem],
    principal: str | None,
    admin: bool,
    rating_min: float = -1.0,
    rating_max: float = 1.0,
    max_text_chars: int = 200_000,
) -> list[Feedback]:
    """Validate every item, then add them all (flushed, ids assigned; the caller commits).

    `principal` is who gives the feedback; unless `admin`, every interaction referred to must be
    theirs. Raises InvalidFeedback, RatingOutOfRange, SelfPreference, TextTooLong,
    UnknownInteraction or ForeignInteraction, having added nothing.
    """
    check_items(items, rating_min=rating_min, rating_max=rating_max, max_text_chars=max_text_chars)
    found = owners(session, interaction_ids=referenced_ids(items))
    check_references(items, found, principal=principal, admin=admin)
    now = datetime.now(UTC)
    rows = [Feedback(**feedback_values(item, principal=principal, created_at=now)) for item in items]
    lock_for_insert(session.connection())
    session.add_all(rows)
    session.flush()
    return rows


def feedback_for(session: Session, *, interaction_id: str) -> list[Feedback]:
    """The feedback on one interaction, oldest first (empty if none or no such interaction)."""
    return list(
        session.scalars(
            select(Feedback).where(Feedback.interaction_id == interaction_id).order_by(Feedback.id)
        )
    )
