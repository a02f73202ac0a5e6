"""Interactions: stored as logged, keyed by prompt, held out by a stable hash of their id."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from lifelong.feedback_store.errors import ForeignInteraction, UnknownInteraction
from lifelong.feedback_store.interactions import add_interactions, get_interaction, prompt_key
from lifelong.feedback_store.models import Interaction
from lifelong.feedback_store.split import is_heldout


def test_interaction_is_stored_as_logged(sessions, interaction_record):
    record = interaction_record(
        created_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2))),
        adapter_version="v7",
    )
    with sessions.begin() as session:
        add_interactions(session, records=[record], heldout_fraction=0.0)
    with sessions() as session:
        row = get_interaction(session, interaction_id=record.id)
    assert row.created_at == datetime(2026, 1, 2, 1, 4, 5, tzinfo=UTC)
    assert row.created_at.tzinfo is not None
    assert (row.request, row.response_text, row.model) == (record.request, "46", "lifelong")
    assert (row.finish_reason, row.prompt_tokens, row.completion_tokens) == ("stop", 12, 1)
    assert (row.latency_ms, row.adapter_version, row.principal) == (5.0, "v7", "alice")
    assert row.prompt_key == prompt_key(messages=record.request["messages"])
    assert row.heldout is False and row.feedback == []


def test_text_completion_keys_on_its_prompt(sessions, interaction_record):
    record = interaction_record(
        endpoint="completions", request={"model": "lifelong", "prompt": "12 + 34 ="}
    )
    with sessions.begin() as session:
        add_interactions(session, records=[record], heldout_fraction=0.0)
    with sessions() as session:
        assert get_interaction(session, interaction_id=record.id).prompt_key == prompt_key(
            prompt="12 + 34 ="
        )


def test_prompt_key_ignores_sampling_params_and_key_order():
    one = prompt_key(messages=[{"role": "user", "content": "hi"}])
    same = prompt_key(messages=[{"content": "hi", "role": "user"}])
    assert one == same and len(one) == 64
    assert one != prompt_key(messages=[{"role": "user", "content": "hi!"}])
    assert prompt_key(prompt="hi") != prompt_key(messages=["hi"])


def test_duplicate_interaction_id_is_refused(sessions, interaction_record):
    record = interaction_record()
    with sessions.begin() as session:
        add_interactions(session, records=[record], heldout_fraction=0.0)
    with pytest.raises(IntegrityError), sessions.begin() as session:
        add_interactions(session, records=[record], heldout_fraction=0.0)


def test_unknown_interaction_raises(sessions):
    with sessions() as session, pytest.raises(UnknownInteraction) as raised:
        get_interaction(session, interaction_id="chatcmpl-nope")
    assert raised.value.field == "interaction_id"


def test_reading_another_principals_interaction_raises_foreign_interaction(
    sessions, stored_interaction
):
    interaction_id = stored_interaction(principal="alice")
    with sessions() as session:
        with pytest.raises(ForeignInteraction):
            get_interaction(session, interaction_id=interaction_id, principal="bob", admin=False)
        assert get_interaction(session, interaction_id=interaction_id, principal="bob", admin=True)
        assert get_interaction(session, interaction_id=interaction_id, principal="alice",
                               admin=False)


def test_heldout_side_is_stable_and_grows_with_the_fraction():
    ids = [f"chatcmpl-{i:06d}" for i in range(20_000)]
    at_10 = {i for i in ids if is_heldout(i, 0.1)}
    at_20 = {i for i in ids if is_heldout(i, 0.2)}
    assert at_10 == {i for i in ids if is_heldout(i, 0.1)}  # the same id, the same side
    assert at_10 < at_20  # raising the fraction only adds ids
    assert 0.09 < len(at_10) / len(ids) < 0.11
    assert not any(is_heldout(i, 0.0) for i in ids[:100])
    assert all(is_heldout(i, 1.0) for i in ids[:100])


def test_heldout_fraction_outside_zero_one_is_refused():
    with pytest.raises(ValueError):
        is_heldout("x", 1.5)


def test_stored_heldout_flag_survives_a_change_of_fraction(sessions, interaction_record):
    records = [interaction_record(id=f"chatcmpl-{uuid.uuid4().hex}") for _ in range(200)]
    with sessions.begin() as session:
        add_interactions(session, records=records, heldout_fraction=0.5)
    expected = {r.id: is_heldout(r.id, 0.5) for r in records}
    with sessions.begin() as session:  # later, the deployment lowers the fraction
        add_interactions(session, records=[interaction_record()], heldout_fraction=0.1)
    with sessions() as session:
        rows = session.execute(
            select(Interaction.id, Interaction.heldout).where(Interaction.id.in_(expected))
        )
        stored = {row.id: row.heldout for row in rows}
    assert stored == expected
    assert 0 < sum(stored.values()) < len(stored)
