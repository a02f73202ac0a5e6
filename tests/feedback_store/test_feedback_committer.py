"""Group commit: many callers share a transaction; each is answered after it, alone if it erred."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import func, select

from lifelong.feedback_store.errors import (
    ForeignInteraction,
    IdempotencyKeyReused,
    RatingOutOfRange,
    TextTooLong,
    UnknownInteraction,
)
from lifelong.feedback_store.feedback_committer import FeedbackCommitter
from lifelong.feedback_store.models import Feedback
from lifelong.feedback_store.records import Correction, Rating


@pytest.fixture
def committer(engine) -> Iterator[FeedbackCommitter]:
    with FeedbackCommitter(engine, max_text_chars=1000) as running:
        yield running


def count_feedback(sessions) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(Feedback))


def test_concurrent_callers_are_committed_together_and_all_acknowledged(
    sessions, committer, stored_interaction
):
    interaction_id = stored_interaction()
    results: dict[int, list[Feedback]] = {}
    start = threading.Barrier(16)

    def caller(n: int) -> None:
        start.wait()
        for i in range(20):
            rows = committer.add(
                [Rating(interaction_id, score=1), Correction(interaction_id, text=f"{n}/{i}")],
                principal="alice", admin=False,
            )
            results[n * 100 + i] = rows

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    returned = {row.id: (row.kind, row.score, row.text) for rows in results.values() for row in rows}
    assert len(returned) == 16 * 20 * 2
    with sessions() as session:
        stored = {row.id: (row.kind, row.score, row.text) for row in session.scalars(
            select(Feedback))}
    assert stored == returned  # every caller got its own rows back, ids and all
    stats = committer.stats()
    assert stats.committed == 640
    assert stats.groups < 320  # callers shared transactions


def test_rows_come_back_as_stored(committer, stored_interaction):
    interaction_id = stored_interaction()
    (row,) = committer.add([Rating(interaction_id, score=-1)], principal="alice", admin=False)
    assert (row.kind, row.score, row.principal, row.interaction_id) == (
        "rating", -1.0, "alice", interaction_id
    )
    assert row.created_at.tzinfo is not None


def test_checks_without_the_database_fail_in_the_callers_thread(sessions, committer,
                                                                 stored_interaction):
    interaction_id = stored_interaction()
    with pytest.raises(RatingOutOfRange):
        committer.submit([Rating(interaction_id, score=3)], principal="alice", admin=False)
    with pytest.raises(TextTooLong):
        committer.submit([Correction(interaction_id, text="x" * 1001)], principal="alice",
                         admin=False)
    assert count_feedback(sessions) == 0


def test_one_callers_bad_batch_fails_only_that_caller(sessions, committer, stored_interaction):
    alices, bobs = stored_interaction(principal="alice"), stored_interaction(principal="bob")
    futures = [
        committer.submit([Rating(alices, score=1)], principal="alice", admin=False),
        committer.submit([Rating(alices, score=1), Rating("chatcmpl-nope", score=1)],
                         principal="alice", admin=False),
        committer.submit([Rating(alices, score=1)], principal="bob", admin=False),
        committer.submit([Rating(bobs, score=0)], principal="bob", admin=False),
    ]
    assert len(futures[0].result(10)) == 1
    with pytest.raises(UnknownInteraction) as raised:
        futures[1].result(10)
    assert (raised.value.index, raised.value.field) == (1, "interaction_id")
    with pytest.raises(ForeignInteraction):
        futures[2].result(10)
    assert len(futures[3].result(10)) == 1
    assert count_feedback(sessions) == 2  # the bad batch wrote nothing, not even its good item
    assert committer.stats().refused == 2


def test_close_commits_what_is_queued_then_refuses_more(sessions, engine, stored_interaction):
    interaction_id = stored_interaction()
    committer = FeedbackCommitter(engine)
    futures = [
        committer.submit([Rating(interaction_id, score=1)], principal=None, admin=False)
        for _ in range(50)
    ]
    committer.close(10)
    assert all(future.done() and not future.exception() for future in futures)
    assert count_feedback(sessions) == 50
    with pytest.raises(RuntimeError, match="closed"):
        committer.submit([Rating(interaction_id, score=1)], principal=None, admin=False)


@contextmanager
def feedback_writes_held(engine) -> Iterator[None]:
    """Hold off every feedback insert until the block ends."""
    with engine.connect() as connection:
        if connection.dialect.name == "sqlite":
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            connection.exec_driver_sql("LOCK TABLE feedback IN EXCLUSIVE MODE")
        try:
            yield
        finally:
            connection.rollback()


def test_when_the_shared_transaction_fails_each_caller_is_retried_alone(
    sessions, engine, committer, stored_interaction
):
    interaction_id = stored_interaction()

    def submit(text: str):
        return committer.submit([Correction(interaction_id, text=text)], principal=None,
                                admin=False)

    with feedback_writes_held(engine):
        first = submit("first")
        time.sleep(0.3)  # let the committer take it and wait on the lock
        # A lone surrogate passes every check but no driver can encode it: a database-side
        # failure of the shared transaction, on both dialects.
        group = [submit("good"), submit("bad \ud800"), submit("good too")]
    assert len(first.result(10)) == 1
    assert len(group[0].result(10)) == 1 and len(group[2].result(10)) == 1
    with pytest.raises(Exception, match="surrogate|encode"):
        group[1].result(10)
    assert count_feedback(sessions) == 3
    assert committer.stats().failed == 1


def test_a_batch_cancelled_while_queued_is_never_written(sessions, engine, committer,
                                                         stored_interaction):
    interaction_id = stored_interaction()
    with feedback_writes_held(engine):
        first = committer.submit([Rating(interaction_id, score=1)], principal=None, admin=False)
        time.sleep(0.3)  # the committer holds `first`, waiting on the lock
        cancelled = committer.submit([Rating(interaction_id, score=-1)], principal=None,
                                     admin=False)
        assert cancelled.cancel()
        kept = committer.submit([Rating(interaction_id, score=0)], principal=None, admin=False)
    assert len(first.result(10)) == 1 and len(kept.result(10)) == 1
    with sessions() as session:
        assert sorted(session.scalars(select(Feedback.score))) == [0.0, 1.0]


def test_a_retry_with_the_same_key_returns_the_first_rows_and_writes_nothing(
    sessions, committer, stored_interaction
):
    interaction_id = stored_interaction()
    items = [Rating(interaction_id=interaction_id, score=1),
             Correction(interaction_id=interaction_id, text="46")]
    first = committer.add(items, principal="alice", admin=False, idempotency_key="call-1")
    again = committer.add(items, principal="alice", admin=False, idempotency_key="call-1")
    assert [row.id for row in again] == [row.id for row in first]
    assert [row.kind for row in again] == ["rating", "correction"]
    assert count_feedback(sessions) == 2


def test_concurrent_retries_with_one_key_write_once(sessions, committer, stored_interaction):
    # The client timed out while its call was queued and sent it again: both reach the
    # committer, possibly in one group.
    interaction_id = stored_interaction()
    items = [Rating(interaction_id=interaction_id, score=1)]
    futures = [committer.submit(items, principal="alice", admin=False, idempotency_key="k")
               for _ in range(8)]
    ids = {tuple(row.id for row in future.result(30)) for future in futures}
    assert len(ids) == 1
    assert count_feedback(sessions) == 1


def test_keys_are_per_principal(sessions, committer, stored_interaction):
    interaction_id = stored_interaction(principal="alice")
    items = [Rating(interaction_id=interaction_id, score=1)]
    mine = committer.add(items, principal="alice", admin=False, idempotency_key="k")
    admins = committer.add(items, principal="ops", admin=True, idempotency_key="k")
    assert mine[0].id != admins[0].id
    assert count_feedback(sessions) == 2


def test_a_key_reused_for_other_items_is_refused(sessions, committer, stored_interaction):
    interaction_id = stored_interaction()
    committer.add([Rating(interaction_id=interaction_id, score=1)], principal="alice",
                  admin=False, idempotency_key="k")
    with pytest.raises(IdempotencyKeyReused, match="new key"):
        committer.add([Rating(interaction_id=interaction_id, score=-1)], principal="alice",
                      admin=False, idempotency_key="k")
    assert count_feedback(sessions) == 1


def test_a_refused_call_does_not_use_up_its_key(sessions, committer, stored_interaction):
    interaction_id = stored_interaction()
    with pytest.raises(UnknownInteraction):
        committer.add([Rating(interaction_id="chatcmpl-unknown", score=1)], principal="alice",
                      admin=False, idempotency_key="k")
    committer.add([Rating(interaction_id=interaction_id, score=1)], principal="alice",
                  admin=False, idempotency_key="k")
    assert count_feedback(sessions) == 1


def test_the_anonymous_principal_keys_collide_too(sessions, committer, stored_interaction):
    # No API keys configured: principal None. SQL NULLs never collide in a unique constraint,
    # so the store keeps "" for it.
    interaction_id = stored_interaction(principal=None)
    items = [Rating(interaction_id=interaction_id, score=1)]
    committer.add(items, principal=None, admin=True, idempotency_key="k")
    committer.add(items, principal=None, admin=True, idempotency_key="k")
    assert count_feedback(sessions) == 1
