"""What training reads: feedback past a watermark, SFT, preference and binary examples, by split."""

from __future__ import annotations

import threading
import time

import pytest

from lifelong.feedback_store.feedback import add_feedback
from lifelong.feedback_store.records import Correction, Outcome, Preference, Rating
from lifelong.feedback_store.training_data import (
    Prompt,
    binary_examples,
    feedback_since,
    latest_feedback_id,
    preference_pairs,
    sft_examples,
)

Q = [{"role": "user", "content": "What is 12 + 34?"}]


def give(sessions, *items):
    with sessions.begin() as session:
        return [row.id for row in add_feedback(session, items=list(items), principal=None,
                                                admin=True)]


def test_feedback_since_a_watermark_comes_with_its_interactions(sessions, stored_interaction):
    first, second = stored_interaction(), stored_interaction(response_text="45")
    held = stored_interaction(heldout=True)
    ids = give(sessions, Rating(first, score=1), Rating(second, score=-1),
               Rating(held, score=1), Correction(second, text="46"))
    with sessions() as session:
        rows = feedback_since(session, watermark=ids[0])
        assert [row.id for row in rows] == [ids[1], ids[3]]
        assert [row.interaction.response_text for row in rows] == ["45", "45"]
        assert [row.id for row in feedback_since(session, watermark=0, limit=1)] == [ids[0]]
        assert [row.id for row in feedback_since(session, watermark=0, split="heldout")] == [
            ids[2]
        ]
        assert feedback_since(session, watermark=ids[3]) == []
        assert latest_feedback_id(session) == ids[3]


def test_sft_examples_come_from_corrections_passes_and_high_ratings(sessions, stored_interaction):
    corrected = stored_interaction(response_text="45")
    passed = stored_interaction(response_text="46 (passed)")
    failed = stored_interaction(response_text="47")
    disputed = stored_interaction(response_text="48")
    liked = stored_interaction(response_text="46 (liked)")
    lukewarm = stored_interaction(response_text="46 (meh)")
    ids = give(
        sessions,
        Rating(corrected, score=1), Correction(corrected, text="46"),
        Outcome(passed, passed=True, reward=1.0), Outcome(failed, passed=False),
        Outcome(disputed, passed=True), Outcome(disputed, passed=False),
        Rating(liked, score=1), Rating(liked, score=1),
        Rating(lukewarm, score=1), Rating(lukewarm, score=0),
    )
    with sessions() as session:
        examples = sft_examples(session)
    assert [(e.completion, e.source, e.interaction_ids, e.feedback_ids) for e in examples] == [
        ("46", "correction", (corrected,), (ids[1],)),
        ("46 (passed)", "outcome", (passed,), (ids[2],)),
        ("46 (liked)", "rating", (liked,), (ids[6], ids[7])),
    ]
    assert examples[0].prompt == Prompt("chat.completions", Q, None)
    with sessions() as session:
        assert [e.completion for e in sft_examples(session, min_rating=0.5)][-1] == "46 (meh)"


def test_heldout_interactions_stay_out_of_training_and_make_up_the_heldout_split(
    sessions, stored_interaction
):
    train = stored_interaction(response_text="train")
    held = stored_interaction(response_text="held", heldout=True)
    give(sessions, Rating(train, score=1), Rating(held, score=1), Correction(held, text="fix"),
         Rating(held, score=1))
    with sessions() as session:
        assert [e.completion for e in sft_examples(session)] == ["train"]
        assert [e.completion for e in sft_examples(session, split="heldout")] == ["fix"]
        assert [e.completion for e in binary_examples(session)] == ["train"]
        assert [p.chosen for p in preference_pairs(session)] == []
        assert [p.chosen for p in preference_pairs(session, split="heldout")] == ["fix"]


def test_until_bounds_the_feedback_read(sessions, stored_interaction):
    one, two = stored_interaction(response_text="one"), stored_interaction(response_text="two")
    (first,) = give(sessions, Rating(one, score=1))
    give(sessions, Rating(two, score=1))
    with sessions() as session:
        assert [e.completion for e in sft_examples(session, until=first)] == ["one"]


def test_explicit_preferences_pair_answers_to_the_same_prompt(sessions, stored_interaction):
    good, bad = stored_interaction(response_text="46"), stored_interaction(response_text="45")
    elsewhere = stored_interaction(question="What is 1 + 1?", response_text="2")
    held = stored_interaction(response_text="44", heldout=True)
    ids = give(
        sessions,
        Preference(good, preferred_over=bad),
        Preference(good, rejected_text="forty-six?"),
        Preference(good, preferred_over=elsewhere),  # another prompt: no pair
        Preference(good, preferred_over=held),  # across splits: no pair
    )
    with sessions() as session:
        pairs = preference_pairs(session)
    assert [(p.chosen, p.rejected, p.source, p.interaction_ids, p.feedback_ids) for p in pairs] == [
        ("46", "45", "preference", (good, bad), (ids[0],)),
        ("46", "forty-six?", "preference", (good,), (ids[1],)),
    ]


def test_corrections_pair_the_correction_over_the_original(sessions, stored_interaction):
    wrong = stored_interaction(response_text="45")
    (correction,) = give(sessions, Correction(wrong, text="46"))
    with sessions() as session:
        (pair,) = preference_pairs(session)
    assert (pair.chosen, pair.rejected, pair.source) == ("46", "45", "correction")
    assert (pair.interaction_ids, pair.feedback_ids) == ((wrong,), (correction,))


def test_implicit_pairs_from_outcomes_and_ratings_on_the_same_prompt(sessions, stored_interaction):
    passed, failed = stored_interaction(response_text="46"), stored_interaction(response_text="45")
    liked, disliked = stored_interaction(response_text="46!"), stored_interaction(
        response_text="44"
    )
    other_prompt = stored_interaction(question="What is 1 + 1?", response_text="3")
    ids = give(
        sessions,
        Outcome(passed, passed=True), Outcome(failed, passed=False),
        Rating(liked, score=1), Rating(disliked, score=-1), Outcome(other_prompt, passed=False),
    )
    with sessions() as session:
        pairs = preference_pairs(session)
    assert [(p.chosen, p.rejected, p.source, p.interaction_ids, p.feedback_ids) for p in pairs] == [
        ("46", "45", "outcome", (passed, failed), (ids[0], ids[1])),
        ("46!", "44", "rating", (liked, disliked), (ids[2], ids[3])),
    ]


def test_implicit_pairs_are_capped_per_prompt(sessions, stored_interaction):
    good = [stored_interaction(response_text=f"46 #{i}") for i in range(4)]
    bad = [stored_interaction(response_text=f"45 #{i}") for i in range(4)]
    give(sessions, *[Outcome(i, passed=True) for i in good],
         *[Outcome(i, passed=False) for i in bad])
    with sessions() as session:
        assert len(preference_pairs(session)) == 16
        assert len(preference_pairs(session, max_pairs_per_prompt=5)) == 5


@pytest.mark.parametrize(("scores", "desirable"), [((1,), True), ((-1,), False), ((1, -0.5), True),
                                                    ((1, -1), None)])
def test_binary_examples_label_rated_answers_by_their_mean(
    sessions, stored_interaction, scores, desirable
):
    interaction_id = stored_interaction()
    ids = give(sessions, *[Rating(interaction_id, score=s) for s in scores])
    with sessions() as session:
        examples = binary_examples(session)
    if desirable is None:
        assert examples == []
    else:
        (example,) = examples
        assert (example.desirable, example.completion) == (desirable, "46")
        assert (example.interaction_ids, example.feedback_ids) == ((interaction_id,), tuple(ids))


# PostgreSQL only: SQLite commits one transaction at a time, so its ids cannot commit out of order.
@pytest.mark.parametrize("engine", [pytest.param("postgres", marks=pytest.mark.postgres)],
                         indirect=True)
def test_feedback_since_never_passes_a_lower_id_still_in_flight(sessions, stored_interaction):
    interaction_id = stored_interaction()
    slow = sessions()
    (first,) = add_feedback(slow, items=[Rating(interaction_id, score=1)], principal=None,
                            admin=True)  # id taken, not committed
    (second,) = give(sessions, Rating(interaction_id, score=-1))  # a higher id, committed
    assert first.id < second
    read: list[list[int]] = []

    def reader() -> None:
        with sessions() as session:
            read.append([row.id for row in feedback_since(session, watermark=0)])

    thread = threading.Thread(target=reader)
    thread.start()
    time.sleep(0.3)
    assert thread.is_alive()  # waiting for the lower id to settle, not skipping it
    slow.commit()
    slow.close()
    thread.join(10)
    assert read == [[first.id, second]]
