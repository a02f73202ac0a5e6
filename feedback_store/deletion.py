"""Deleting data on purpose: erasing everything of one principal or one end user (a person's
erasure request), and expiring rows past their retention period. Export (`export.py`) reads the
same rows that erasure deletes.

What goes with what (children first, so no foreign key is ever left dangling):
- an interaction takes every feedback row naming it (as `interaction_id` or `preferred_over`,
  whoever gave it) and the eval answers to it as a held-out item (`eval_results.item_id`);
- a feedback row takes the idempotency records (`feedback_requests`) that list its id: a retry
  with that key would otherwise answer with rows that no longer exist;
- a task takes its rollouts and its eval answers.
Held-out rows the gate judges on go the same way: the gate's suites are read from the store at
each judgement, so they simply shrink. Keeping frozen copies would keep the very text an erasure
or a retention period promised to remove.

Both work in batches of `batch_size` rows, each its own short transaction, so the interaction
log and the feedback committer wait for at most one batch (SQLite's one write lock; PostgreSQL's
row locks), and an interrupted run leaves whole batches done and can simply run again.
Functions here take a `sessionmaker`, not a session, for that reason.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, CursorResult, Delete, delete, or_, select
from sqlalchemy.orm import Session, sessionmaker

from lifelong.feedback_store.errors import InvalidSubject
from lifelong.feedback_store.models import (
    EvalResult,
    Feedback,
    FeedbackRequest,
    Interaction,
    Rollout,
    Task,
)


@dataclass(frozen=True)
class Subject:
    """Whose data: exactly one of an API key's principal and the caller's end-user key (the
    OpenAI `user` field or the x-lifelong-user header, `interactions.user_key`)."""

    principal: str | None = None
    user_key: str | None = None

    def __post_init__(self) -> None:
        given = [name for name in ("principal", "user_key") if getattr(self, name) is not None]
        if len(given) != 1:
            raise InvalidSubject("name exactly one of principal and user_key", field="principal")
        if not getattr(self, given[0]):
            raise InvalidSubject(f"{given[0]} must not be empty", field=given[0])

    def interactions(self) -> ColumnElement[bool]:
        """The interactions that are this subject's."""
        if self.principal is not None:
            return Interaction.principal == self.principal
        return Interaction.user_key == self.user_key

    def describe(self) -> str:
        return (f"principal {self.principal!r}" if self.principal is not None
                else f"user key {self.user_key!r}")


@dataclass(frozen=True)
class Deleted:
    """How many rows of each table went."""

    interactions: int = 0
    feedback: int = 0
    feedback_requests: int = 0
    tasks: int = 0
    rollouts: int = 0
    eval_results: int = 0

    def __add__(self, other: Deleted) -> Deleted:
        return Deleted(**{f.name: getattr(self, f.name) + getattr(other, f.name)
                          for f in fields(self)})

    @property
    def total(self) -> int:
        return sum(getattr(self, f.name) for f in fields(self))

    def to_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Receipt:
    """What an erasure deleted, and when it started and ended (UTC)."""

    subject: Subject
    deleted: Deleted
    started_at: datetime
    finished_at: datetime
    batches: int

    def to_dict(self) -> dict[str, Any]:
        return {"principal": self.subject.principal, "user_key": self.subject.user_key,
                "deleted": self.deleted.to_dict(), "started_at": self.started_at.isoformat(),
                "finished_at": self.finished_at.isoformat(), "batches": self.batches}


def erase(
    sessions: sessionmaker[Session], *, subject: Subject, batch_size: int = 500,
    pause_s: float = 0.0,
) -> Receipt:
    """Delete every interaction of `subject` (with all feedback on it), and for a principal also
    the feedback it gave on others' interactions, its idempotency records and its tasks (with
    their rollouts), all created up to its start: a request still in flight then may be written
    after its last batch, and is left (run it again). `pause_s` between batches lets writers in.
    Raises ValueError for a `batch_size` below 1."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    started = datetime.now(UTC)
    total, batches = Deleted(), 0

    def run(batch: Any) -> None:
        nonlocal total, batches
        while True:
            with sessions.begin() as session:
                deleted = batch(session)
            total, batches = total + deleted, batches + 1
            if deleted.total == 0:
                return
            if pause_s:
                time.sleep(pause_s)

    # Only rows from before the start: a subject still sending must not keep it going forever.
    run(lambda session: _interaction_batch(
        session, subject.interactions() & (Interaction.created_at <= started), batch_size))
    if subject.principal is not None:
        principal = subject.principal
        run(lambda session: _feedback_batch(
            session, (Feedback.principal == principal) & (Feedback.created_at <= started),
            batch_size))
        run(lambda session: _task_batch(
            session, (Task.principal == principal) & (Task.created_at <= started), batch_size))
        run(lambda session: Deleted(feedback_requests=_count(
            session, delete(FeedbackRequest).where(FeedbackRequest.principal == principal))))
    return Receipt(subject=subject, deleted=total, started_at=started,
                   finished_at=datetime.now(UTC), batches=batches)


def expire(
    sessions: sessionmaker[Session], *, interactions_before: datetime | None = None,
    feedback_before: datetime | None = None, rollouts_before: datetime | None = None,
    batch_size: int = 500, pause_s: float = 0.0, max_batches: int | None = None,
) -> Deleted:
    """Delete interactions (with their feedback), feedback and rollouts created before the given
    times (None: keep that kind), oldest first, at most `max_batches` batches in all (None: until
    nothing is left). Raises ValueError for a `batch_size` below 1."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    kinds = []
    if interactions_before is not None:
        cutoff_i = interactions_before
        kinds.append(lambda s: _interaction_batch(s, Interaction.created_at < cutoff_i, batch_size))
    if feedback_before is not None:
        cutoff_f = feedback_before
        kinds.append(lambda s: _feedback_batch(s, Feedback.created_at < cutoff_f, batch_size))
    if rollouts_before is not None:
        cutoff_r = rollouts_before
        kinds.append(lambda s: _rollout_batch(s, Rollout.created_at < cutoff_r, batch_size))
    total, done = Deleted(), 0
    for batch in kinds:
        while max_batches is None or done < max_batches:
            with sessions.begin() as session:
                deleted = batch(session)
            total, done = total + deleted, done + 1
            if deleted.total == 0:
                break
            if pause_s:
                time.sleep(pause_s)
    return total


def _interaction_batch(session: Session, where: ColumnElement[bool], limit: int) -> Deleted:
    query = select(Interaction.id).where(where).order_by(Interaction.created_at, Interaction.id)
    # PostgreSQL: lock them, so feedback inserted meanwhile either is seen by the delete below
    # or waits and then finds its interaction gone (the committer answers 404).
    ids = list(session.scalars(query.limit(limit).with_for_update()))
    if not ids:
        return Deleted()
    # By condition, not by a list read earlier: on SQLite this first write takes the write lock,
    # so feedback committed between the read above and here is deleted too.
    gone = session.execute(
        delete(Feedback)
        .where(or_(Feedback.interaction_id.in_(ids), Feedback.preferred_over.in_(ids)))
        .returning(Feedback.id, Feedback.created_at)
    ).all()
    requests = _forget_requests(session, gone)
    answers = _count(session, delete(EvalResult).where(EvalResult.item_id.in_(ids)))
    removed = _count(session, delete(Interaction).where(Interaction.id.in_(ids)))
    return Deleted(interactions=removed, feedback=len(gone), feedback_requests=requests,
                   eval_results=answers)


def _feedback_batch(session: Session, where: ColumnElement[bool], limit: int) -> Deleted:
    ids = list(session.scalars(select(Feedback.id).where(where).order_by(Feedback.id)
                               .limit(limit)))
    if not ids:
        return Deleted()
    gone = session.execute(delete(Feedback).where(Feedback.id.in_(ids))
                           .returning(Feedback.id, Feedback.created_at)).all()
    return Deleted(feedback=len(gone), feedback_requests=_forget_requests(session, gone))


def _task_batch(session: Session, where: ColumnElement[bool], limit: int) -> Deleted:
    ids = list(session.scalars(select(Task.id).where(where).order_by(Task.id).limit(limit)
                               .with_for_update()))
    if not ids:
        return Deleted()
    rollouts = _count(session, delete(Rollout).where(Rollout.task_id.in_(ids)))
    answers = _count(session, delete(EvalResult).where(EvalResult.item_id.in_(ids)))
    tasks = _count(session, delete(Task).where(Task.id.in_(ids)))
    return Deleted(tasks=tasks, rollouts=rollouts, eval_results=answers)


def _rollout_batch(session: Session, where: ColumnElement[bool], limit: int) -> Deleted:
    ids = list(session.scalars(select(Rollout.id).where(where).order_by(Rollout.id).limit(limit)))
    if not ids:
        return Deleted()
    return Deleted(rollouts=_count(session, delete(Rollout).where(Rollout.id.in_(ids))))


def _count(session: Session, statement: Delete) -> int:
    """Run a DELETE; the number of rows it deleted."""
    result: CursorResult[Any] = session.execute(statement)  # type: ignore[assignment]
    return result.rowcount


def _forget_requests(session: Session, gone: Sequence[Any]) -> int:
    """Delete the idempotency records listing any of the deleted feedback rows `gone` (id,
    created_at). A record is written in the same transaction as its feedback, with the same
    time, so only those from the earliest deleted row's time on need reading."""
    if not gone:
        return 0
    ids = {row.id for row in gone}
    since = min(row.created_at for row in gone)
    stale = [
        request.id
        for request in session.execute(
            select(FeedbackRequest.id, FeedbackRequest.feedback_ids)
            .where(FeedbackRequest.created_at >= since))
        if ids.intersection(request.feedback_ids)
    ]
    if not stale:
        return 0
    return _count(session, delete(FeedbackRequest).where(FeedbackRequest.id.in_(stale)))
