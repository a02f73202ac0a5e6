"""Export: every row an erasure of the same subject would delete that holds what a person sent
(interactions, the feedback on them or given by the principal, the principal's tasks), as plain
JSON-ready dicts, one per row, for a data-access request. Rollouts and eval answers, which
erasure also deletes, are the model's own samples and are left out.

Read in batches of `batch_size`, each in a short session of its own, so a large export never
holds one long transaction open against the writers.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, sessionmaker

from lifelong.feedback_store.deletion import Subject
from lifelong.feedback_store.models import Base, Feedback, Interaction, Task


def export(
    sessions: sessionmaker[Session], *, subject: Subject, batch_size: int = 500
) -> Iterator[dict[str, Any]]:
    """The subject's rows, each a dict with `type` ("interaction", "feedback" or "task") and
    its columns (times in ISO 8601): each interaction followed by the feedback naming it, then
    (for a principal) the feedback it gave on others' interactions, then its tasks."""
    seen: set[int] = set()  # feedback naming two of the subject's interactions: written once
    last = ""
    while True:
        with sessions() as session:
            interactions = list(session.scalars(
                select(Interaction).where(subject.interactions(), Interaction.id > last)
                .order_by(Interaction.id).limit(batch_size)))
            ids = [row.id for row in interactions]
            feedback = list(session.scalars(
                select(Feedback)
                .where(or_(Feedback.interaction_id.in_(ids), Feedback.preferred_over.in_(ids)))
                .order_by(Feedback.id))) if ids else []
        if not interactions:
            break
        by_interaction: dict[str, list[Feedback]] = {}
        for row in feedback:
            by_interaction.setdefault(row.interaction_id, []).append(row)
        for interaction in interactions:
            yield _record("interaction", interaction)
            for row in by_interaction.get(interaction.id, []):
                seen.add(row.id)
                yield _record("feedback", row)
        for row in feedback:  # those naming one of these only as `preferred_over`
            if row.id not in seen:
                seen.add(row.id)
                yield _record("feedback", row)
        last = ids[-1]
    if subject.principal is None:
        return
    after = 0
    while True:
        with sessions() as session:
            given = list(session.scalars(
                select(Feedback).where(Feedback.principal == subject.principal, Feedback.id > after)
                .order_by(Feedback.id).limit(batch_size)))
        if not given:
            break
        yield from (_record("feedback", row) for row in given if row.id not in seen)
        after = given[-1].id
    last = ""
    while True:
        with sessions() as session:
            tasks = list(session.scalars(
                select(Task).where(Task.principal == subject.principal, Task.id > last)
                .order_by(Task.id).limit(batch_size)))
        if not tasks:
            break
        yield from (_record("task", row) for row in tasks)
        last = tasks[-1].id


def _record(kind: str, row: Base) -> dict[str, Any]:
    values = {column.key: getattr(row, column.key) for column in row.__table__.columns}
    return {"type": kind, **{key: value.isoformat() if isinstance(value, datetime) else value
                             for key, value in values.items()}}
