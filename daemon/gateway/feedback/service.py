"""Feedback logic: map wire types to store records, wait for still-queued interactions, commit.

Feedback goes through the store's group committer (many requests share one transaction and one
fsync), so a 201 always means committed. Feedback on an interaction that is still in the
interaction log's queue waits for it (bounded by gateway.feedback_wait_s) instead of a 404.
Every wait on the database is bounded by `database_timeout_s`; past it the caller gets
DatabaseUnavailable (a 503) and may retry, with its idempotency key, without duplicating.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from sqlalchemy.orm import Session, sessionmaker

from lifelong.daemon.gateway.auth import Principal
from lifelong.daemon.gateway.feedback.protocol import (
    CorrectionIn,
    FeedbackIn,
    FeedbackOut,
    InteractionOut,
    OutcomeIn,
    PreferenceIn,
    RatingIn,
    TaskIn,
    TaskOut,
)
from lifelong.daemon.metrics import ServingMetrics
from lifelong.evals.verifiers import check_pattern_lengths
from lifelong.feedback_store import records, tasks
from lifelong.feedback_store.errors import DatabaseUnavailable, UnknownInteraction
from lifelong.feedback_store.feedback_committer import FeedbackCommitter
from lifelong.feedback_store.interaction_log import InteractionLog
from lifelong.feedback_store.interactions import get_interaction
from lifelong.feedback_store.models import Feedback

T = TypeVar("T")
OTHER_REPLICA_WAIT_S = 1.0  # how long an unknown interaction may still be on its way


def to_record(item: FeedbackIn) -> records.FeedbackItem:
    match item:
        case RatingIn():
            return records.Rating(interaction_id=item.interaction_id, score=item.score)
        case CorrectionIn():
            return records.Correction(interaction_id=item.interaction_id, text=item.text)
        case PreferenceIn():
            return records.Preference(
                interaction_id=item.interaction_id,
                preferred_over=item.preferred_over,
                rejected_text=item.rejected_text,
            )
        case OutcomeIn():
            return records.Outcome(
                interaction_id=item.interaction_id, reward=item.reward, passed=item.passed,
                verifier=item.verifier, details=item.details,
            )
    raise AssertionError(f"unhandled feedback type {type(item).__name__}")


def to_wire(row: Feedback) -> FeedbackOut:
    return FeedbackOut.model_validate(row, from_attributes=True)


class FeedbackService:
    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        committer: FeedbackCommitter,
        interaction_log: InteractionLog,
        feedback_wait_s: float,
        other_replicas: Callable[[], bool] = lambda: False,
        heldout_fraction: float,
        max_text_chars: int,
        metrics: ServingMetrics,
        max_pattern_chars: int,
        database_timeout_s: float = 60.0,
    ) -> None:
        self.database_timeout_s = database_timeout_s
        self.metrics = metrics
        self.sessions = sessions
        self.committer = committer
        self.interaction_log = interaction_log
        self.feedback_wait_s = feedback_wait_s
        self.other_replicas = other_replicas  # whether other gateway replicas are alive
        self.heldout_fraction = heldout_fraction
        self.max_text_chars = max_text_chars
        self.max_pattern_chars = max_pattern_chars

    async def _wait_until_logged(self, interaction_ids: set[str]) -> None:
        for interaction_id in interaction_ids:
            # A zero-timeout check is a lock and a set lookup; only a queued id costs a thread.
            if not self.interaction_log.wait_for(interaction_id, 0):
                await asyncio.to_thread(
                    self.interaction_log.wait_for, interaction_id, self.feedback_wait_s
                )

    async def _bounded(self, waiting: Awaitable[T]) -> T:
        try:
            return await asyncio.wait_for(waiting, self.database_timeout_s)
        except TimeoutError:
            raise DatabaseUnavailable(
                f"the database did not answer within {self.database_timeout_s:.0f} s"
            ) from None

    async def _in_thread(self, work: Callable[[], T]) -> T:
        # The thread goes on until the driver's own timeouts end it; the caller does not wait.
        return await self._bounded(asyncio.to_thread(work))

    async def add(
        self,
        items: Sequence[FeedbackIn],
        principal: Principal,
        *,
        idempotency_key: str | None = None,
    ) -> list[FeedbackOut]:
        """Commit all `items` or none; with `idempotency_key`, a retry of a committed call gets
        its rows back. Raises the store's typed errors (UnknownInteraction, ForeignInteraction,
        RatingOutOfRange, SelfPreference, TextTooLong, InvalidFeedback, IdempotencyKeyReused),
        DatabaseUnavailable past `database_timeout_s`; PatternTooLong."""
        for item in items:
            if isinstance(item, OutcomeIn) and item.verifier and item.details \
                    and isinstance(item.details.get("reference"), str):
                check_pattern_lengths(item.verifier, item.details.get("options") or {},
                                      item.details["reference"], max_chars=self.max_pattern_chars)
        batch = [to_record(item) for item in items]
        referenced = {item.interaction_id for item in batch}
        referenced |= {i.preferred_over for i in batch if isinstance(i, records.Preference)} - {None}
        await self._wait_until_logged(referenced)  # type: ignore[arg-type]
        kinds = [item.kind for item in items]
        # Behind a load balancer the interaction may have been answered by another gateway
        # replica whose log has not written it yet (it writes within milliseconds): with other
        # replicas alive, an unknown interaction is asked for again for a moment before it is
        # a 404.
        wait_s = min(self.feedback_wait_s, OTHER_REPLICA_WAIT_S) if self.other_replicas() else 0
        other_replica_until = time.monotonic() + wait_s
        try:
            while True:
                future = self.committer.submit(batch, principal=principal.name,
                                               admin=principal.admin,
                                               idempotency_key=idempotency_key)
                try:
                    # A timeout cancels the batch if it is still queued; if it is being
                    # committed, the client's retry with the same key gets its rows.
                    rows = await self._bounded(asyncio.wrap_future(future))
                    break
                except UnknownInteraction:
                    if time.monotonic() >= other_replica_until:
                        raise
                    await asyncio.sleep(0.1)
        except Exception:
            self.metrics.feedback_received(kinds, committed=False)
            raise
        self.metrics.feedback_received(kinds, committed=True)
        return [to_wire(row) for row in rows]

    async def add_task(self, task: TaskIn, principal: Principal) -> TaskOut:
        """Register a verifiable prompt. Raises PatternTooLong, InvalidTask, TextTooLong."""
        check_pattern_lengths(task.verifier, task.options, task.reference,
                              max_chars=self.max_pattern_chars)
        record = records.NewTask(
            reference=task.reference, verifier=task.verifier, prompt=task.prompt,
            messages=task.messages, options=task.options, tags=tuple(task.tags),
            heldout=task.heldout,
        )

        def write() -> TaskOut:
            with self.sessions.begin() as session:
                row = tasks.add_task(
                    session, task=record, principal=principal.name, heldout_fraction=self.heldout_fraction,
                    max_text_chars=self.max_text_chars,
                )
                return TaskOut.model_validate(row, from_attributes=True)

        return await self._in_thread(write)

    async def interaction(self, interaction_id: str, principal: Principal) -> InteractionOut:
        """One interaction with its feedback. Raises UnknownInteraction, ForeignInteraction."""
        await self._wait_until_logged({interaction_id})

        def read() -> InteractionOut:
            with self.sessions() as session:
                row = get_interaction(
                    session, interaction_id=interaction_id, principal=principal.name,
                    admin=principal.admin,
                )
                return InteractionOut.model_validate(row, from_attributes=True)

        return await self._in_thread(read)
