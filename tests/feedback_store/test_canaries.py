"""Canary and watch rows, and the live window a trial is judged on, on SQLite and PostgreSQL:
one open trial at a time; a window counts only the alias's traffic of one version in its time
span, each interaction once by its latest outcome; the user key is stored with the interaction."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from lifelong.feedback_store import canaries
from lifelong.feedback_store.feedback import add_feedback
from lifelong.feedback_store.models import Canary, Interaction
from lifelong.feedback_store.records import Outcome


def test_one_trial_is_open_at_a_time_and_ends_with_its_decision(sessions):
    with sessions.begin() as session:
        first = canaries.start(session, kind="canary", version="v0002", baseline_version="v0001",
                               share=0.1, by="gate")
        with pytest.raises(canaries.TrialOpen, match="canary of v0002"):
            canaries.start(session, kind="watch", version="v0003", baseline_version=None,
                           share=1.0, by="ops")
    with sessions.begin() as session:
        row = canaries.open_trial(session)
        assert row is not None and row.id == first.id
        canaries.end(session, row, decision="rollback", reason="worse", stats={"n": 3})
    with sessions.begin() as session:
        assert canaries.open_trial(session) is None
        watch = canaries.start(session, kind="watch", version="v0003", baseline_version=None,
                               share=1.0, by="ops")
    with sessions() as session:
        listed = canaries.trials(session)
        assert [(t.id, t.kind, t.decision) for t in listed] == [
            (watch.id, "watch", None), (first.id, "canary", "rollback")]
        assert canaries.trials(session, version="v0002")[0].stats == {"n": 3}
        ended = session.get(Canary, first.id)
        assert ended is not None and ended.ended_at is not None and ended.reason == "worse"


def test_a_decision_outside_the_known_ones_is_refused_by_the_database(sessions):
    from sqlalchemy.exc import IntegrityError

    with pytest.raises(IntegrityError), sessions.begin() as session:
        row = canaries.start(session, kind="canary", version="v1", baseline_version=None,
                             share=0.5, by="gate")
        canaries.end(session, row, decision="maybe", reason="?")


def outcome(sessions, interaction_id: str, *, passed: bool | None = None,
            reward: float | None = None) -> None:
    with sessions.begin() as session:
        add_feedback(session, items=[Outcome(interaction_id, passed=passed, reward=reward)],
                     principal=None, admin=True)


def test_a_window_counts_the_alias_traffic_of_one_version_in_its_span(sessions,
                                                                      stored_interaction):
    start = datetime.now(UTC) - timedelta(minutes=10)
    at = lambda minutes: start + timedelta(minutes=minutes)  # noqa: E731
    # v0002 through the alias, in the window: two passes (one reported twice: the latest counts)
    a = stored_interaction(adapter_version="v0002", created_at=at(1), latency_ms=10.0)
    b = stored_interaction(adapter_version="v0002", created_at=at(2), latency_ms=30.0,
                           user_key="user-7")
    outcome(sessions, a, passed=False, reward=0.0)
    outcome(sessions, a, passed=True, reward=1.0)
    outcome(sessions, b, passed=True)
    # Not this window's: v0002 pinned by name, v0002 before the window, the champion's answer.
    pinned = stored_interaction(adapter_version="v0002", model="v0002", created_at=at(3))
    early = stored_interaction(adapter_version="v0002", created_at=start - timedelta(minutes=1))
    champion = stored_interaction(adapter_version=None, created_at=at(4), latency_ms=20.0)
    for other in (pinned, early):
        outcome(sessions, other, passed=False)
    outcome(sessions, champion, passed=False, reward=0.5)

    with sessions() as session:
        window = canaries.window(session, version="v0002", model="lifelong", since=start)
        assert sorted(window.passes) == [True, True]
        assert window.rewards == [1.0]
        assert sorted(window.latencies_ms) == [10.0, 30.0]
        base = canaries.window(session, version=None, model="lifelong", since=start)
        assert (base.passes, base.rewards, base.latencies_ms) == ([False], [0.5], [20.0])
        before = canaries.window(session, version="v0002", model="lifelong",
                                 since=start - timedelta(minutes=5), until=start)
        assert before.passes == [False]
        assert session.scalar(select(Interaction.user_key).where(Interaction.id == b)) == "user-7"
