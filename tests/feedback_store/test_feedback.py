"""Feedback: each kind stored, every bad item refused with a typed error, nothing partial written."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from lifelong.feedback_store.errors import (
    ForeignInteraction,
    InvalidFeedback,
    RatingOutOfRange,
    SelfPreference,
    StoreError,
    TextTooLong,
    UnknownInteraction,
)
from lifelong.feedback_store.feedback import add_feedback, feedback_for
from lifelong.feedback_store.interactions import get_interaction
from lifelong.feedback_store.models import Feedback
from lifelong.feedback_store.records import Correction, Outcome, Preference, Rating


def count_feedback(sessions) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(Feedback))


def add(sessions, items, *, principal="alice", admin=False, **limits):
    with sessions.begin() as session:
        return add_feedback(session, items=items, principal=principal, admin=admin, **limits)


def test_every_kind_of_feedback_is_stored_with_its_interaction(sessions, stored_interaction):
    mine, other = stored_interaction(), stored_interaction(response_text="45")
    rows = add(sessions, [
        Rating(mine, score=1),
        Preference(mine, preferred_over=other),
        Preference(mine, rejected_text="47"),
        Correction(other, text="46"),
        Outcome(mine, reward=1.0, passed=True, verifier="exact_match", details={"expected": "46"}),
    ])
    assert [row.kind for row in rows] == [
        "rating", "preference", "preference", "correction", "outcome"
    ]
    assert all(row.id is not None and row.principal == "alice" for row in rows)
    assert rows[0].id < rows[-1].id
    with sessions() as session:
        stored = feedback_for(session, interaction_id=mine)
        assert [(r.kind, r.score, r.preferred_over, r.rejected_text) for r in stored[:3]] == [
            ("rating", 1.0, None, None),
            ("preference", None, other, None),
            ("preference", None, None, "47"),
        ]
        assert (stored[3].reward, stored[3].passed, stored[3].verifier, stored[3].details) == (
            1.0, True, "exact_match", {"expected": "46"}
        )
        assert stored[0].created_at.tzinfo is not None
        assert [r.kind for r in get_interaction(session, interaction_id=other).feedback] == [
            "correction"
        ]


def test_outcome_with_only_reward_or_only_passed_is_accepted(sessions, stored_interaction):
    interaction_id = stored_interaction()
    rows = add(sessions, [Outcome(interaction_id, reward=0.25), Outcome(interaction_id, passed=False)])
    assert [(r.reward, r.passed, r.details) for r in rows] == [(0.25, None, None), (None, False, None)]


def test_feedback_on_unknown_interaction_raises(sessions, stored_interaction):
    known = stored_interaction()
    with pytest.raises(UnknownInteraction) as raised:
        add(sessions, [Rating(known, score=1), Rating("chatcmpl-nope", score=1)])
    assert (raised.value.field, raised.value.index) == ("interaction_id", 1)
    assert "item 1" in str(raised.value)
    assert count_feedback(sessions) == 0


def test_preference_over_unknown_interaction_raises(sessions, stored_interaction):
    with pytest.raises(UnknownInteraction) as raised:
        add(sessions, [Preference(stored_interaction(), preferred_over="chatcmpl-nope")])
    assert raised.value.field == "preferred_over"
    assert count_feedback(sessions) == 0


@pytest.mark.parametrize("score", [1.5, -1.01, float("nan"), float("inf")])
def test_rating_out_of_range_raises(sessions, stored_interaction, score):
    interaction_id = stored_interaction()
    with pytest.raises(RatingOutOfRange) as raised:
        add(sessions, [Rating(interaction_id, score=1), Rating(interaction_id, score=score)])
    assert (raised.value.field, raised.value.index) == ("score", 1)
    assert count_feedback(sessions) == 0


def test_rating_range_is_the_callers(sessions, stored_interaction):
    interaction_id = stored_interaction()
    rows = add(sessions, [Rating(interaction_id, score=5)], rating_min=1, rating_max=5)
    assert rows[0].score == 5.0
    with pytest.raises(RatingOutOfRange):
        add(sessions, [Rating(interaction_id, score=0)], rating_min=1, rating_max=5)


def test_preference_for_itself_raises_self_preference(sessions, stored_interaction):
    interaction_id = stored_interaction()
    with pytest.raises(SelfPreference) as raised:
        add(sessions, [Preference(interaction_id, preferred_over=interaction_id)])
    assert raised.value.field == "preferred_over"
    assert count_feedback(sessions) == 0


@pytest.mark.parametrize("targets", [{}, {"preferred_over": "x", "rejected_text": "y"}])
def test_preference_needs_exactly_one_target(sessions, stored_interaction, targets):
    with pytest.raises(InvalidFeedback, match="exactly one"):
        add(sessions, [Preference(stored_interaction(), **targets)])
    assert count_feedback(sessions) == 0


def test_outcome_with_neither_reward_nor_passed_raises(sessions, stored_interaction):
    with pytest.raises(InvalidFeedback) as raised:
        add(sessions, [Outcome(stored_interaction(), verifier="exact_match")])
    assert raised.value.field == "passed"


def test_outcome_details_must_be_plain_json(sessions, stored_interaction):
    with pytest.raises(InvalidFeedback) as raised:
        add(sessions, [Outcome(stored_interaction(), passed=True, details={"x": object()})])
    assert raised.value.field == "details"


def test_empty_batch_is_invalid(sessions):
    with pytest.raises(InvalidFeedback):
        add(sessions, [])


@pytest.mark.parametrize(
    ("item", "field"),
    [
        (lambda i: Correction(i, text="x" * 101), "text"),
        (lambda i: Preference(i, rejected_text="x" * 101), "rejected_text"),
        (lambda i: Outcome(i, passed=True, details={"log": "x" * 101}), "details"),
    ],
)
def test_text_longer_than_the_limit_raises_text_too_long(sessions, stored_interaction, item, field):
    interaction_id = stored_interaction()
    with pytest.raises(TextTooLong) as raised:
        add(sessions, [Correction(interaction_id, text="x" * 100), item(interaction_id)],
            max_text_chars=100)
    assert (raised.value.field, raised.value.index) == (field, 1)
    assert count_feedback(sessions) == 0


def test_feedback_on_another_principals_interaction_raises_foreign_interaction(
    sessions, stored_interaction
):
    alices = stored_interaction(principal="alice")
    bobs = stored_interaction(principal="bob")
    with pytest.raises(ForeignInteraction) as raised:
        add(sessions, [Rating(bobs, score=1), Rating(alices, score=1)], principal="bob")
    assert (raised.value.field, raised.value.index) == ("interaction_id", 1)
    with pytest.raises(ForeignInteraction) as raised:
        add(sessions, [Preference(bobs, preferred_over=alices)], principal="bob")
    assert raised.value.field == "preferred_over"
    assert count_feedback(sessions) == 0


def test_admin_and_anonymous_callers_may_rate_anyones_interaction(sessions, stored_interaction):
    bobs = stored_interaction(principal="bob")
    assert add(sessions, [Rating(bobs, score=1)], principal="ops", admin=True)[0].principal == "ops"
    assert add(sessions, [Rating(bobs, score=1)], principal=None)[0].principal is None


def test_every_store_error_names_a_store_error_base():
    for error in (UnknownInteraction, RatingOutOfRange, SelfPreference, TextTooLong,
                  InvalidFeedback, ForeignInteraction):
        assert issubclass(error, StoreError)
