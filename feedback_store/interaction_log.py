"""The interaction log: the gateway's background writer of interactions, off the request path.

`submit` only appends to a bounded in-memory queue under a lock held for microseconds, so the
event loop never waits on the database; when the queue is full the record is dropped and counted
(an answer already sent is worth more than its log line). One thread drains the queue, writing
everything waiting in one transaction (group commit: one fsync for many rows).

Database errors never stop the thread. A batch that fails for a reason that may pass (connection
lost, database locked, table missing) is retried with exponential backoff until it succeeds or
the log is closed; one that the database refuses for its data (a duplicate id, a value it cannot
store) is split and written row by row, and the rows that still fail are logged and counted as
rejected, so one bad row cannot block the others.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass

from sqlalchemy import Engine, insert
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError

from lifelong.feedback_store.interactions import interaction_row
from lifelong.feedback_store.models import Interaction
from lifelong.feedback_store.records import NewInteraction
from lifelong.feedback_store.split import is_heldout

logger = logging.getLogger(__name__)

_UNWRITTEN_REMEMBERED = 10_000


@dataclass(frozen=True)
class LogStats:
    queued: int  # waiting in the queue now
    written: int  # committed
    dropped: int  # refused by `submit`: queue full, or log closed
    rejected: int  # refused by the database for their data; logged, not retried
    batches: int  # transactions committed
    failed_batches: int  # attempts that failed (each retry counts)
    lost: int  # still queued or in flight when `close` gave up


def _transient(exc: Exception) -> bool:
    """Whether retrying the same rows later may succeed."""
    return isinstance(exc, DBAPIError) and not isinstance(exc, IntegrityError | DataError)


class InteractionLog:
    """A bounded queue of `NewInteraction` and the thread that writes it. Call `close` at
    shutdown (the thread is a daemon so a forgotten log never blocks interpreter exit)."""

    def __init__(
        self,
        engine: Engine,
        *,
        heldout_fraction: float,
        max_queue: int = 10_000,
        max_batch: int = 1000,
        retry_initial_s: float = 0.05,
        retry_max_s: float = 5.0,
    ) -> None:
        is_heldout("", heldout_fraction)  # refuse a bad fraction now, not in the thread
        self._engine = engine
        self._heldout_fraction = heldout_fraction
        self._max_queue = max_queue
        self._max_batch = max_batch
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._queue: deque[NewInteraction] = deque()
        self._pending: Counter[str] = Counter()  # ids queued or in flight
        # Recently rejected or lost ids, so `wait_for` does not report them as written.
        self._unwritten: OrderedDict[str, None] = OrderedDict()
        self._in_flight = 0
        # One lock, two conditions: `submit` wakes only the writer, never every `wait_for`.
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # the writer waits for records
        self._changed = threading.Condition(self._lock)  # waiters wait for records written
        self._closing = False
        self._stop = threading.Event()  # set when close gives up on the database
        self._written = self._dropped = self._rejected = 0
        self._batches = self._failed_batches = self._lost = 0
        self._thread = threading.Thread(target=self._run, name="interaction-log", daemon=True)
        self._thread.start()

    def submit(self, record: NewInteraction) -> bool:
        """Queue `record` for writing. Never blocks on I/O. False when it was dropped: the
        queue is full or the log is closed."""
        with self._lock:
            if self._closing or len(self._queue) >= self._max_queue:
                self._dropped += 1
                return False
            self._queue.append(record)
            self._pending[record.id] += 1
            self._work.notify()
            return True

    def wait_for(self, interaction_id: str, timeout: float) -> bool:
        """Block until `interaction_id` is no longer waiting in this log: True once it was
        committed, or if it was never queued here (the database is then the truth). False when
        it is still queued after `timeout` seconds, or was rejected or lost."""
        with self._changed:
            done = self._changed.wait_for(lambda: interaction_id not in self._pending, timeout)
            return done and interaction_id not in self._unwritten

    def flush(self, timeout: float) -> bool:
        """Block until everything submitted so far is written (or rejected). False on timeout."""
        with self._changed:
            return self._changed.wait_for(
                lambda: not self._queue and not self._in_flight, timeout
            )

    def close(self, timeout: float) -> LogStats:
        """Refuse new records, write what is queued (for up to `timeout` seconds), then stop the
        thread. What could not be written by then is counted as lost. Returns the final stats."""
        with self._lock:
            self._closing = True
            self._work.notify()
        if not self.flush(timeout):
            logger.error("interaction log: closing with records unwritten: %s", self.stats())
        self._stop.set()
        self._thread.join(max(timeout, 1.0))
        return self.stats()

    def stats(self) -> LogStats:
        """A snapshot of the counters."""
        with self._lock:
            return LogStats(
                queued=len(self._queue), written=self._written, dropped=self._dropped,
                rejected=self._rejected, batches=self._batches,
                failed_batches=self._failed_batches, lost=self._lost,
            )

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._closing:
                    self._work.wait()
                if not self._queue or self._stop.is_set():
                    # closing with an empty queue, or close gave up on the database
                    self._lost += len(self._queue)
                    for record in self._queue:
                        self._remember_unwritten(record.id)
                    self._queue.clear()
                    self._pending.clear()
                    self._changed.notify_all()
                    return
                count = min(len(self._queue), self._max_batch)
                batch = [self._queue.popleft() for _ in range(count)]
                self._in_flight = len(batch)
            try:
                written, rejected = self._write(batch)
            except Exception:  # never let the thread die: count it, log it, go on
                logger.exception("interaction log: unexpected error; %d records lost", len(batch))
                written, rejected = [], []
            with self._lock:
                self._written += len(written)
                self._rejected += len(rejected)
                self._lost += len(batch) - len(written) - len(rejected)
                written_ids = {record.id for record in written}
                for record in batch:
                    if record.id not in written_ids:
                        self._remember_unwritten(record.id)
                    self._pending[record.id] -= 1
                    if self._pending[record.id] <= 0:
                        del self._pending[record.id]
                self._in_flight = 0
                self._changed.notify_all()

    def _remember_unwritten(self, interaction_id: str) -> None:
        self._unwritten[interaction_id] = None
        if len(self._unwritten) > _UNWRITTEN_REMEMBERED:
            self._unwritten.popitem(last=False)

    def _write(self, batch: list[NewInteraction]) -> tuple[list[NewInteraction], list[NewInteraction]]:
        """Write `batch` in one transaction, or row by row if the database refuses its data.
        Returns (written, rejected); records neither written nor rejected were given up at close."""
        outcome = self._insert_retrying(batch)
        if outcome is None:
            return [], []
        if outcome is True:
            return batch, []
        written: list[NewInteraction] = []
        rejected: list[NewInteraction] = []
        for record in batch:
            alone = self._insert_retrying([record]) if len(batch) > 1 else False
            if alone is None:
                break
            if alone is True:
                written.append(record)
            else:
                rejected.append(record)
                logger.error("interaction log: database refused %s; not retried", record.id)
        return written, rejected

    def _insert_retrying(self, records: list[NewInteraction]) -> bool | None:
        """True when written; False when the database refused the data; None when the log was
        closed while the database kept failing."""
        delay = self._retry_initial_s
        while True:
            try:
                rows = [interaction_row(r, heldout_fraction=self._heldout_fraction) for r in records]
                with self._engine.begin() as connection:
                    connection.execute(insert(Interaction), rows)
            except Exception as exc:
                with self._lock:
                    self._failed_batches += 1
                if not _transient(exc):
                    logger.warning("interaction log: %d rows refused: %s", len(records), exc)
                    return False
                logger.warning("interaction log: write failed, retrying in %.2fs: %s", delay, exc)
                if self._stop.wait(delay):
                    return None
                delay = min(delay * 2, self._retry_max_s)
            else:
                with self._lock:
                    self._batches += 1
                return True
