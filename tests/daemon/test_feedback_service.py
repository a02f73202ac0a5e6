"""Feedback on an interaction still in the log's queue waits for it instead of a 404."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import sessionmaker

from lifelong.daemon.gateway.auth import ALL_SCOPES, Principal
from lifelong.daemon.gateway.feedback.protocol import RatingIn
from lifelong.daemon.gateway.feedback.service import FeedbackService
from lifelong.daemon.metrics import ServingMetrics, VersionLabels
from lifelong.feedback_store.database import make_engine, upgrade
from lifelong.feedback_store.errors import DatabaseUnavailable, UnknownInteraction
from lifelong.feedback_store.feedback_committer import FeedbackCommitter
from lifelong.feedback_store.interaction_log import InteractionLog
from lifelong.feedback_store.records import NewInteraction


@pytest.fixture
def parts(tmp_path):
    path = tmp_path / "lifelong.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    log = InteractionLog(engine, heldout_fraction=0.1)
    committer = FeedbackCommitter(engine)
    metrics = CollectorRegistry()
    service = FeedbackService(
        sessions=sessionmaker(engine), committer=committer, interaction_log=log,
        feedback_wait_s=30, heldout_fraction=0.1, max_text_chars=1000, max_pattern_chars=1000,
        metrics=ServingMetrics(metrics, versions=VersionLabels(), watchers=[],
                               interaction_log=log),
    )
    yield service, log, path, metrics
    log.close(5)
    committer.close(5)
    engine.dispose()


def interaction(interaction_id: str) -> NewInteraction:
    return NewInteraction(
        id=interaction_id, created_at=datetime.now(UTC), endpoint="chat.completions",
        request={"messages": [{"role": "user", "content": "hi"}]}, model="lifelong",
        response_text="hello",
    )


def test_feedback_on_a_queued_interaction_waits_for_it(parts):
    asyncio.run(queued_interaction_waits(*parts))


async def queued_interaction_waits(service, log, path, metrics):
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # hold the write lock: the log cannot commit
    try:
        assert log.submit(interaction("chatcmpl-queued"))
        pending = asyncio.create_task(service.add(
            [RatingIn(interaction_id="chatcmpl-queued", kind="rating", score=1)],
            Principal(None, ALL_SCOPES),
        ))
        await asyncio.sleep(1.0)
        assert not pending.done()  # waiting, not answered 404
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    (stored,) = await asyncio.wait_for(pending, 30)
    assert stored.interaction_id == "chatcmpl-queued" and stored.score == 1
    assert metrics.get_sample_value("lifelong_feedback_received_total",
                                    {"kind": "rating", "result": "committed"}) == 1


def test_feedback_on_an_interaction_another_replica_is_still_writing_waits_for_it(parts):
    """Behind a load balancer, feedback may reach a gateway that did not answer: the
    interaction arrives in the database from the other replica's log a moment later."""
    service, _, path, _ = parts
    service.other_replicas = lambda: True

    async def main() -> None:
        pending = asyncio.create_task(service.add(
            [RatingIn(interaction_id="chatcmpl-elsewhere", kind="rating", score=1)],
            Principal(None, ALL_SCOPES)))
        await asyncio.sleep(0.3)
        assert not pending.done()
        other = InteractionLog(make_engine(f"sqlite:///{path}"), heldout_fraction=0.1)
        assert other.submit(interaction("chatcmpl-elsewhere"))
        await asyncio.to_thread(other.close, 5)
        (stored,) = await asyncio.wait_for(pending, 5)
        assert stored.interaction_id == "chatcmpl-elsewhere"

    asyncio.run(main())


def test_feedback_on_a_never_seen_interaction_is_unknown_at_once(parts):
    service, _, _, metrics = parts
    with pytest.raises(UnknownInteraction):
        asyncio.run(asyncio.wait_for(service.add(
            [RatingIn(interaction_id="chatcmpl-never", kind="rating", score=1)],
            Principal(None, ALL_SCOPES),
        ), 5))
    assert metrics.get_sample_value("lifelong_feedback_received_total",
                                    {"kind": "rating", "result": "refused"}) == 1


@pytest.mark.parametrize("connect_timeout_s, database_timeout_s, raised", [
    (1, 30, OperationalError),  # the driver gives up first: its error, a 503
    (30, 1, DatabaseUnavailable),  # the service's own bound comes first: a 503 too
])
def test_feedback_on_a_database_that_never_answers_fails_within_a_bound(
    silent_postgres_url, connect_timeout_s, database_timeout_s, raised
):
    engine = make_engine(silent_postgres_url, connect_timeout_s=connect_timeout_s)
    log = InteractionLog(engine, heldout_fraction=0.1)
    committer = FeedbackCommitter(engine)
    service = FeedbackService(
        sessions=sessionmaker(engine), committer=committer, interaction_log=log,
        feedback_wait_s=30, heldout_fraction=0.1, max_text_chars=1000, max_pattern_chars=1000,
        metrics=ServingMetrics(CollectorRegistry(), versions=VersionLabels(), watchers=[],
                               interaction_log=log),
        database_timeout_s=database_timeout_s,
    )
    try:
        with pytest.raises(raised):
            # The outer bound only keeps a failure from hanging the run (psycopg: ~130 s).
            asyncio.run(asyncio.wait_for(service.add(
                [RatingIn(interaction_id="chatcmpl-x", kind="rating", score=1)],
                Principal("alice", ALL_SCOPES),
            ), 60))
    finally:
        log.close(0.1)
        committer.close(0.1)
        engine.dispose()
