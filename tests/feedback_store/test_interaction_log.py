"""The interaction log: never blocks the caller, commits in groups, survives database errors.

To make the database fail for real, the tests rename the interactions table away while the
writer runs (every insert then fails, as after a bad deploy or a lost connection) and back.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import Engine, func, select, text

from lifelong.feedback_store.interaction_log import InteractionLog
from lifelong.feedback_store.interactions import add_interactions, get_interaction
from lifelong.feedback_store.models import Interaction


@contextmanager
def interactions_table_away(engine: Engine) -> Iterator[None]:
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE interactions RENAME TO interactions_away"))
    try:
        yield
    finally:
        with engine.begin() as connection:
            connection.execute(text("ALTER TABLE interactions_away RENAME TO interactions"))


def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


@pytest.fixture
def open_log(engine: Engine) -> Iterator[Callable[..., InteractionLog]]:
    """Open InteractionLogs on the test database; all closed at the end."""
    logs: list[InteractionLog] = []

    def open_(**options: object) -> InteractionLog:
        settings = {"heldout_fraction": 0.0, "retry_initial_s": 0.01, "retry_max_s": 0.05}
        log = InteractionLog(engine, **{**settings, **options})  # type: ignore[arg-type]
        logs.append(log)
        return log

    yield open_
    for log in logs:
        log.close(5.0)


def count_interactions(sessions) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(Interaction))


def test_submitted_interactions_are_committed_in_groups(
    engine, sessions, open_log, interaction_record
):
    log = open_log()
    records = [interaction_record() for _ in range(500)]
    with interactions_table_away(engine):  # hold the writer so the queue fills
        for record in records:
            assert log.submit(record)
        until(lambda: log.stats().failed_batches >= 1)
    assert log.flush(10.0)
    stats = log.stats()
    assert (stats.written, stats.queued, stats.dropped, stats.rejected) == (500, 0, 0, 0)
    assert stats.batches <= 3  # the one in flight, then the rest together
    assert count_interactions(sessions) == 500


def test_full_queue_drops_and_counts(engine, sessions, open_log, interaction_record):
    log = open_log(max_queue=5)
    with interactions_table_away(engine):
        assert log.submit(interaction_record())
        until(lambda: log.stats().failed_batches >= 1)  # that one is in flight now
        assert all(log.submit(interaction_record()) for _ in range(5))
        assert not log.submit(interaction_record())
        assert not log.submit(interaction_record())
        stats = log.stats()
        assert (stats.queued, stats.dropped, stats.written) == (5, 2, 0)
    assert log.flush(10.0)
    assert log.stats().written == 6
    assert count_interactions(sessions) == 6


def test_wait_for_returns_once_the_interaction_is_committed(
    engine, sessions, open_log, interaction_record
):
    log = open_log()
    record = interaction_record()
    with interactions_table_away(engine):
        assert log.submit(record)
        assert not log.wait_for(record.id, 0.2)
    assert log.wait_for(record.id, 10.0)
    with sessions() as session:
        assert get_interaction(session, interaction_id=record.id).response_text == "46"
    assert log.wait_for("chatcmpl-never-submitted", 0.0)  # not ours to wait for


def test_close_flushes_what_is_queued(sessions, open_log, interaction_record):
    log = open_log()
    for _ in range(200):
        log.submit(interaction_record())
    stats = log.close(10.0)
    assert (stats.written, stats.queued, stats.lost) == (200, 0, 0)
    assert count_interactions(sessions) == 200
    assert not log.submit(interaction_record())
    assert log.stats().dropped == 1


def test_database_errors_are_retried_and_counted_without_killing_the_writer(
    engine, sessions, open_log, interaction_record
):
    log = open_log()
    with interactions_table_away(engine):
        log.submit(interaction_record())
        until(lambda: log.stats().failed_batches >= 3)
    assert log.flush(10.0)
    log.submit(interaction_record())
    assert log.flush(10.0)
    assert log.stats().written == 2
    assert count_interactions(sessions) == 2


def test_a_row_the_database_refuses_does_not_block_the_others(
    engine, sessions, open_log, interaction_record
):
    duplicate = interaction_record()
    with sessions.begin() as session:
        add_interactions(session, records=[duplicate], heldout_fraction=0.0)
    unstorable = interaction_record(response_text="lone surrogate \ud800")  # no driver encodes it
    log = open_log()
    good = [interaction_record() for _ in range(3)]
    with interactions_table_away(engine):
        log.submit(interaction_record())
        until(lambda: log.stats().failed_batches >= 1)
        for record in (good[0], duplicate, good[1], unstorable, good[2]):  # queued as one batch
            log.submit(record)
    assert log.flush(10.0)
    stats = log.stats()
    assert (stats.written, stats.rejected) == (4, 2)
    assert count_interactions(sessions) == 5
    assert all(log.wait_for(record.id, 0.0) for record in good)
    assert not log.wait_for(unstorable.id, 0.0)


def test_submit_never_waits_for_the_database(engine, open_log, interaction_record):
    log = open_log(max_queue=2000)
    records = [interaction_record() for _ in range(1000)]
    with interactions_table_away(engine):
        started = time.perf_counter()
        accepted = [log.submit(record) for record in records]
        elapsed = time.perf_counter() - started
    assert all(accepted)
    assert elapsed < 0.5  # ~1 µs each; a database round trip each would take far longer


def test_close_gives_up_on_a_dead_database_and_counts_the_loss(
    engine, open_log, interaction_record
):
    log = open_log()
    with interactions_table_away(engine):
        log.submit(interaction_record())
        log.submit(interaction_record())
        started = time.monotonic()
        stats = log.close(0.3)
        assert time.monotonic() - started < 5.0
    assert (stats.written, stats.lost) == (0, 2)


def test_heldout_side_is_computed_at_insert(sessions, open_log, interaction_record):
    log = open_log(heldout_fraction=1.0)
    record = interaction_record()
    log.submit(record)
    assert log.flush(10.0)
    with sessions() as session:
        assert get_interaction(session, interaction_id=record.id).heldout is True


def test_bad_heldout_fraction_is_refused_at_construction(engine):
    with pytest.raises(ValueError):
        InteractionLog(engine, heldout_fraction=2.0)
