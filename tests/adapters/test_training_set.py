"""The training set: what each kind of feedback teaches, only the train split, new data plus replay."""

from __future__ import annotations

import pytest

from lifelong.adapters import build_training_set
from lifelong.feedback_store.records import Correction, Outcome, Preference, Rating


def build(store, *, since=0, replay_fraction=0.0, seed=0, **kwargs):
    with store.sessions() as session:
        return build_training_set(session, since=since, replay_fraction=replay_fraction,
                                  seed=seed, **kwargs)


def test_each_kind_of_feedback_lands_in_its_method_with_the_ids_it_came_from(store):
    corrected = store.ask("What is 50 - 20?", "70")
    passed = store.ask("What is 50 - 20?", "30")
    liked = store.ask("What is 9 + 9?", "18")
    thumbs_down = store.ask("What is 7 + 7?", "15")
    better, worse = store.ask("What is 2 + 2?", "4"), store.ask("What is 2 + 2?", "5")
    ids = store.give(
        Correction(corrected, text="30"), Outcome(passed, passed=True),
        Rating(liked, score=1), Rating(thumbs_down, score=-1),
        Preference(better, preferred_over=worse),
    )
    training_set = build(store)

    assert [(e.completion, e.source, e.interaction_ids, e.feedback_ids)
            for e in training_set.sft] == [
        ("30", "correction", (corrected,), (ids[0],)),
        ("30", "outcome", (passed,), (ids[1],)),
        ("18", "rating", (liked,), (ids[2],)),
    ]
    assert {(p.chosen, p.rejected, p.source) for p in training_set.pairs} == {
        ("30", "70", "correction"), ("4", "5", "preference"),
    }
    # Only thumbs with no pair: the liked answer is imitated by SFT and kept as desirable too.
    assert [(e.completion, e.desirable) for e in training_set.binary] == [
        ("18", True), ("15", False),
    ]
    assert training_set.feedback_ids() == ids
    assert training_set.feedback_ids(("pairs",)) == [ids[0], ids[4]]
    assert training_set.watermark == ids[-1]


def test_rated_answers_in_a_pair_are_not_binary_examples(store):
    good, bad = store.ask("What is 3 + 3?", "6"), store.ask("What is 3 + 3?", "7")
    store.give(Rating(good, score=1), Rating(bad, score=-1))
    training_set = build(store)
    assert [(p.chosen, p.rejected, p.source) for p in training_set.pairs] == [("6", "7", "rating")]
    assert training_set.binary == ()


def test_the_heldout_split_is_never_trained_on(store):
    held = store.ask("What is 60 - 6?", "66", heldout=True)
    held_passed = store.ask("What is 60 - 6?", "54", heldout=True)
    train = store.ask("What is 60 - 6?", "50")
    store.give(Correction(held, text="54"), Outcome(held_passed, passed=True),
               Rating(held, score=-1), Preference(held_passed, preferred_over=held),
               Correction(train, text="54"))
    training_set = build(store)
    assert training_set.interaction_ids() == [train]
    assert [e.completion for e in training_set.sft] == ["54"]


def test_only_feedback_after_the_watermark_is_new_and_older_examples_are_replayed(store):
    old = store.ask_many([(f"What is {n} - 1?", "?") for n in range(10, 50)])
    old_ids = store.give(*[Correction(i, text="x") for i in old])
    new = store.ask_many([(f"What is {n} - 2?", "?") for n in range(10, 20)])
    new_ids = store.give(*[Correction(i, text="y") for i in new])
    since = old_ids[-1]

    # One replayed example per new one at 0.5; drawn from the old ones, by the seed.
    first = build(store, since=since, replay_fraction=0.5, seed=1)
    assert (first.portions["sft"].new, first.portions["sft"].replayed) == (10, 10)
    assert [e.feedback_ids[0] for e in first.sft[:10]] == new_ids
    replayed = [e.feedback_ids[0] for e in first.sft[10:]]
    assert set(replayed) <= set(old_ids)
    assert replayed == [e.feedback_ids[0] for e in build(store, since=since, replay_fraction=0.5,
                                                         seed=1).sft[10:]]
    assert replayed != [e.feedback_ids[0] for e in build(store, since=since, replay_fraction=0.5,
                                                         seed=2).sft[10:]]
    # No replay asked, or nothing old to replay: only the new ones.
    assert build(store, since=since).portions["sft"].replayed == 0
    assert build(store, since=0, replay_fraction=0.5).portions["sft"].new == 50


def test_new_feedback_on_an_old_interaction_makes_its_example_new(store):
    answer = store.ask("What is 8 + 8?", "16")
    (rating,) = store.give(Rating(answer, score=1))
    store.give(Outcome(answer, passed=True))
    training_set = build(store, since=rating)
    assert training_set.portions["sft"].new == 1


@pytest.mark.parametrize("fraction", [-0.1, 1.0])
def test_replay_fraction_must_leave_room_for_new_data(store, fraction):
    with pytest.raises(ValueError, match="replay_fraction"):
        build(store, replay_fraction=fraction)
