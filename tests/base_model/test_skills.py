"""The synthetic skills: correct answers, and a held-out share that training never sees."""

import random

import pytest

from lifelong.base_model.skills import (
    CORPUS_SKILLS,
    NEIGHBOUR_SKILLS,
    SKILLS,
    NotEnoughHeldOutItems,
    heldout_items,
    is_heldout,
    messages,
    training_items,
)


def test_answers_are_the_arithmetic():
    rng = random.Random(0)
    for name in ("add2", "sub2", "add3"):
        for _ in range(50):
            question, answer = SKILLS[name].draw(rng)
            expression = question.removeprefix("What is ").removesuffix("?")
            assert int(answer) == eval(expression)  # noqa: S307 - our own "a + b" strings


def test_echo_answers_repeat_the_number():
    rng = random.Random(0)
    for _ in range(50):
        question, answer = SKILLS["echo"].draw(rng)
        assert question == f"Repeat {answer}." and len(answer) == 4


def test_neighbours_are_never_in_the_corpus():
    assert set(CORPUS_SKILLS).isdisjoint(NEIGHBOUR_SKILLS)
    assert set(CORPUS_SKILLS) | set(NEIGHBOUR_SKILLS) <= set(SKILLS)


def test_training_items_never_include_a_heldout_question():
    stream = training_items(SKILLS["add2"], random.Random(0))
    drawn = [next(stream) for _ in range(5000)]
    assert not any(is_heldout(question) for question, _ in drawn)


def test_heldout_items_are_distinct_heldout_and_fixed_by_the_seed():
    items = heldout_items(SKILLS["add2"], n=100, seed=3)
    assert len({question for question, _ in items}) == 100
    assert all(is_heldout(question) for question, _ in items)
    assert heldout_items(SKILLS["add2"], n=100, seed=3) == items
    assert heldout_items(SKILLS["add2"], n=100, seed=4) != items


def test_heldout_share_is_about_a_tenth_of_the_questions():
    questions = {f"What is {a} + {b}?" for a in range(10, 100) for b in range(10, 100)}
    share = sum(map(is_heldout, questions)) / len(questions)
    assert 0.08 < share < 0.12


def test_asking_for_more_heldout_items_than_exist_is_refused():
    with pytest.raises(NotEnoughHeldOutItems):
        heldout_items(SKILLS["add2"], n=2000, seed=0)


def test_messages_are_chat_turns_with_an_optional_system_prompt():
    assert messages("What is 1 + 2?") == [{"role": "user", "content": "What is 1 + 2?"}]
    assert messages("q", "a", system="s") == [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"},
    ]
