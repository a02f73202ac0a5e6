"""Group commit for feedback: many callers, one transaction, each caller acknowledged after it.

With SQLite at synchronous=FULL every commit costs an fsync, and one transaction per feedback
call caps ingest at a few hundred writes/s under concurrency. Here callers hand their batch to
one committer thread and block on a future; the thread takes everything queued, validates each
caller's batch against one shared read of the referenced interactions, inserts the good ones in
one transaction and resolves every future after the commit. A caller whose batch is invalid gets
its typed error and nobody else notices; if the shared transaction itself fails, each batch is
retried in a transaction of its own, so one cannot fail the others.

A batch may carry an idempotency key (per principal): the key, a digest of the items and the new
ids are stored in the same transaction as the rows, so a retry of a call whose answer was lost
(the client timed out, the commit went through) gets the first rows back and writes nothing.
A second batch with a key already in the group waits for the next group, where it finds the
first one committed; the table's unique constraint settles races with other processes.

Checks that need no database run in the caller's thread, before queueing, so a malformed batch
fails fast. From asyncio, `await asyncio.wrap_future(committer.submit(...))` waits without a
thread; `add` blocks (for a threadpool).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
import time
from collections import defaultdict, deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, insert, select, tuple_

from lifelong.feedback_store.errors import IdempotencyKeyReused, StoreError
from lifelong.feedback_store.feedback import (
    check_items,
    check_references,
    feedback_values,
    lock_for_insert,
    referenced_ids,
)
from lifelong.feedback_store.interactions import owners
from lifelong.feedback_store.models import Feedback, FeedbackRequest
from lifelong.feedback_store.records import FeedbackItem

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CommitterStats:
    groups: int  # transactions committed
    committed: int  # feedback rows committed
    refused: int  # caller batches refused by validation
    failed: int  # caller batches whose transaction failed (the caller got the exception)


@dataclass
class _Batch:
    items: Sequence[FeedbackItem]
    principal: str | None
    admin: bool
    future: Future[list[Feedback]]
    key: str | None = None  # the idempotency key
    digest: str = ""  # of the items, to tell a retry from a reused key
    started: bool = False  # its future is running (a deferred batch is taken up again)

    @property
    def scope(self) -> tuple[str, str]:
        assert self.key is not None
        return (self.principal or "", self.key)


_Accepted = list[tuple[_Batch, list[dict[str, Any]]]]  # batches with their rows' values
_Refused = list[tuple[_Batch, StoreError]]
_Replayed = list[tuple[_Batch, list[Feedback]]]  # keyed batches committed before


def items_digest(items: Sequence[FeedbackItem]) -> str:
    """sha256 of the items as sent: a retry has the same, a key reused for others does not."""
    shaped = [[type(item).__name__, dataclasses.asdict(item)] for item in items]
    return hashlib.sha256(json.dumps(shaped, sort_keys=True, default=str).encode()).hexdigest()


class FeedbackCommitter:
    """One background thread committing everyone's feedback together. Use as a context manager
    or call `close`. The limits are those of `feedback.add_feedback`."""

    def __init__(
        self,
        engine: Engine,
        *,
        rating_min: float = -1.0,
        rating_max: float = 1.0,
        max_text_chars: int = 200_000,
        max_group_items: int = 5000,
        linger_s: float = 0.001,
    ) -> None:
        self._engine = engine
        self._connection: Connection | None = None  # used by the committer thread only
        self._limits = {
            "rating_min": rating_min, "rating_max": rating_max, "max_text_chars": max_text_chars
        }
        self._max_group_items = max_group_items
        self._linger_s = linger_s
        self._queue: deque[_Batch] = deque()
        self._wakeup = threading.Condition()
        self._closed = False
        self._groups = self._committed = self._refused = self._failed = 0
        self._thread = threading.Thread(target=self._run, name="feedback-committer", daemon=True)
        self._thread.start()

    def __enter__(self) -> FeedbackCommitter:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def submit(
        self,
        items: Sequence[FeedbackItem],
        *,
        principal: str | None,
        admin: bool,
        idempotency_key: str | None = None,
    ) -> Future[list[Feedback]]:
        """Queue a batch; the future resolves to its rows once committed, or to the typed error
        of `add_feedback`. With `idempotency_key`, a batch already committed under that key by
        the same principal resolves to the rows it wrote then (nothing new is written), and one
        with other items to IdempotencyKeyReused. Raises at once what needs no database
        (InvalidFeedback, RatingOutOfRange, SelfPreference, TextTooLong), and RuntimeError
        once closed."""
        check_items(items, **self._limits)
        batch = _Batch(list(items), principal, admin, Future(), key=idempotency_key,
                       digest=items_digest(items) if idempotency_key is not None else "")
        with self._wakeup:
            if self._closed:
                raise RuntimeError("the feedback committer is closed")
            self._queue.append(batch)
            self._wakeup.notify()
        return batch.future

    def add(
        self,
        items: Sequence[FeedbackItem],
        *,
        principal: str | None,
        admin: bool,
        idempotency_key: str | None = None,
        timeout: float | None = None,
    ) -> list[Feedback]:
        """Submit and wait until committed: the rows, ids assigned. Raises what `submit` and
        `feedback.add_feedback` raise, and TimeoutError after `timeout` seconds (the batch may
        still be committed later: retry with an idempotency key)."""
        future = self.submit(items, principal=principal, admin=admin,
                             idempotency_key=idempotency_key)
        return future.result(timeout)

    def stats(self) -> CommitterStats:
        with self._wakeup:
            return CommitterStats(self._groups, self._committed, self._refused, self._failed)

    def close(self, timeout: float | None = None) -> None:
        """Commit what is queued, then stop the thread."""
        with self._wakeup:
            self._closed = True
            self._wakeup.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        answered = 0  # callers the last group answered
        while True:
            with self._wakeup:
                while not self._queue and not self._closed:
                    self._wakeup.wait()
                if not self._queue:
                    self._disconnect()
                    return
                if answered > 1 and not self._closed:
                    # Callers just answered tend to come straight back; without a short wait
                    # they miss this group and callers split into halves that alternate, each
                    # paying a full commit (PostgreSQL's commit_delay answers the same problem).
                    target = len(self._queue) + answered
                    deadline = time.monotonic() + self._linger_s
                    while len(self._queue) < target:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            break
                        self._wakeup.wait(remaining)
                group = [self._queue.popleft()]
                size = len(group[0].items)
                while self._queue and size + len(self._queue[0].items) <= self._max_group_items:
                    size += len(self._queue[0].items)
                    group.append(self._queue.popleft())
            # A caller may have cancelled its future while queued (asyncio cancels the
            # wrapped future when the request goes away): skip those, and make the others
            # uncancellable from here on, so each one is answered exactly once.
            group = [batch for batch in group
                     if batch.started or batch.future.set_running_or_notify_cancel()]
            if not group:
                continue
            for batch in group:
                batch.started = True
            answered = len(group)
            try:
                self._commit(group)
            except Exception as exc:  # the thread must outlive any one group
                if len(group) == 1:
                    self._fail(group[0], exc)
                else:
                    logger.warning("group commit of %d batches failed, retrying each: %s",
                                   len(group), exc)
                    for batch in group:
                        if not batch.future.done():
                            try:
                                self._commit([batch])
                            except Exception as alone:
                                self._fail(batch, alone)

    def _commit(self, group: list[_Batch]) -> None:
        # Core, not the ORM: this thread is the ceiling of the whole path, and the unit of work
        # costs several times more per row than an executemany. One connection kept open: a
        # pool checkout pings the server and resets on return, two round trips per group.
        if self._connection is None:
            self._connection = self._engine.connect()
        # A second batch with a key already in this group goes to the next one, which finds
        # the first committed (or not) and answers it from there.
        seen: set[tuple[str, str]] = set()
        deferred = []
        for batch in group:
            if batch.key is not None:
                if batch.scope in seen:
                    deferred.append(batch)
                seen.add(batch.scope)
        group = [batch for batch in group if all(batch is not d for d in deferred)]
        try:
            with self._connection.begin():
                accepted, refused, replayed, ids = self._write(self._connection, group)
        except Exception:
            # Whatever broke (a server restart, a refused row), start the next group afresh.
            # The caller retries every batch alone, in order, the deferred ones too.
            self._disconnect()
            raise
        with self._wakeup:
            self._queue.extendleft(reversed(deferred))
        # Resolve only after the commit: a caller acknowledged is a caller persisted.
        with self._wakeup:
            self._groups += bool(accepted)
            self._committed += len(ids)
            self._refused += len(refused)
        for batch, error in refused:
            batch.future.set_exception(error)
        for batch, rows in replayed:
            batch.future.set_result(rows)
        next_id = iter(ids)
        for batch, rows in accepted:
            batch.future.set_result([Feedback(id=next(next_id), **values) for values in rows])

    def _write(
        self, connection: Connection, group: list[_Batch]
    ) -> tuple[_Accepted, _Refused, _Replayed, list[int]]:
        """Validate each batch against one read of the interactions, insert the good ones.
        Returns (accepted batches with their rows, refused batches with their error, keyed
        batches committed before with their rows then, new ids)."""
        earlier = _earlier_requests(connection, {b.scope for b in group if b.key is not None})
        replayed: _Replayed = []
        refused: _Refused = []
        fresh = []
        for batch in group:
            before = earlier.get(batch.scope) if batch.key is not None else None
            if before is None:
                fresh.append(batch)
            elif before[0] != batch.digest:
                refused.append((batch, IdempotencyKeyReused(
                    f"Idempotency-Key {batch.key!r} was first used for other feedback items; "
                    "use a new key for new feedback", field="Idempotency-Key")))
            else:
                replayed.append((batch, before[1]))
        group = fresh
        found = owners(
            connection, interaction_ids=set().union(*(referenced_ids(b.items) for b in group))
        )
        now = datetime.now(UTC)
        accepted: _Accepted = []
        for batch in group:
            try:
                check_references(batch.items, found, principal=batch.principal, admin=batch.admin)
            except StoreError as exc:
                refused.append((batch, exc))
                continue
            rows = [feedback_values(i, principal=batch.principal, created_at=now)
                    for i in batch.items]
            accepted.append((batch, rows))
        if not accepted:
            return accepted, refused, replayed, []
        lock_for_insert(connection)
        rows = [values for _, batch_rows in accepted for values in batch_rows]
        # One INSERT per set of non-null columns (usually one: all ratings): a statement naming
        # 13 columns per row is several times longer to build and parse than one naming 5.
        by_columns: dict[tuple[str, ...], list[int]] = defaultdict(list)
        for index, values in enumerate(rows):
            by_columns[tuple(key for key, value in values.items() if value is not None)].append(
                index
            )
        ids = [0] * len(rows)
        for columns, indexes in by_columns.items():
            inserted = connection.execute(
                insert(Feedback).returning(Feedback.id, sort_by_parameter_order=True),
                [{column: rows[index][column] for column in columns} for index in indexes],
            )
            for index, new_id in zip(indexes, inserted.scalars(), strict=True):
                ids[index] = new_id
        keyed, start = [], 0
        for batch, batch_rows in accepted:
            if batch.key is not None:
                keyed.append({
                    "principal": batch.principal or "", "idempotency_key": batch.key,
                    "request_sha256": batch.digest, "created_at": now,
                    "feedback_ids": ids[start:start + len(batch_rows)],
                })
            start += len(batch_rows)
        if keyed:
            connection.execute(insert(FeedbackRequest), keyed)
        return accepted, refused, replayed, ids

    def _disconnect(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()  # rolls back what is open; returns it to the pool
            except Exception:
                logger.warning("feedback committer: closing a broken connection failed",
                               exc_info=True)
            self._connection = None

    def _fail(self, batch: _Batch, exc: Exception) -> None:
        logger.error("feedback batch failed: %s", exc)
        with self._wakeup:
            self._failed += 1
        if not batch.future.done():
            batch.future.set_exception(exc)


def _earlier_requests(
    connection: Connection, scopes: set[tuple[str, str]]
) -> dict[tuple[str, str], tuple[str, list[Feedback]]]:
    """For each (principal, key) committed before: its items' digest and the rows it wrote."""
    if not scopes:
        return {}
    requests = connection.execute(
        select(FeedbackRequest.principal, FeedbackRequest.idempotency_key,
               FeedbackRequest.request_sha256, FeedbackRequest.feedback_ids)
        .where(tuple_(FeedbackRequest.principal, FeedbackRequest.idempotency_key).in_(scopes))
    ).all()
    wanted = {feedback_id for request in requests for feedback_id in request.feedback_ids}
    rows = {
        row.id: Feedback(**row._mapping)
        for row in connection.execute(select(Feedback.__table__).where(Feedback.id.in_(wanted)))
    }
    return {
        (request.principal, request.idempotency_key):
            (request.request_sha256, [rows[i] for i in request.feedback_ids])
        for request in requests
    }
