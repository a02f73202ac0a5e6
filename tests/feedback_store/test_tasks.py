"""Tasks: verifiable prompts, validated, held out by a stable hash of their id."""

from __future__ import annotations

import pytest

from lifelong.feedback_store.errors import InvalidTask, TextTooLong, UnknownTask
from lifelong.feedback_store.interactions import prompt_key
from lifelong.feedback_store.records import NewTask
from lifelong.feedback_store.split import is_heldout
from lifelong.feedback_store.tasks import add_task, get_task, list_tasks

ADD = NewTask(prompt="What is 12 + 34?", reference="46", verifier="exact_match", tags=("add2",))


def add(sessions, task=ADD, **kwargs):
    options = {"principal": "alice", "heldout_fraction": 0.0, **kwargs}
    with sessions.begin() as session:
        return add_task(session, task=task, **options)


def test_task_is_stored_with_an_id_and_its_prompt_key(sessions):
    task = add(sessions)
    assert task.id.startswith("task-")
    with sessions() as session:
        row = get_task(session, task_id=task.id)
    assert (row.prompt, row.messages, row.reference, row.verifier) == (
        "What is 12 + 34?", None, "46", "exact_match"
    )
    assert (row.tags, row.options, row.principal, row.heldout) == (["add2"], {}, "alice", False)
    assert row.prompt_key == prompt_key(prompt="What is 12 + 34?")


def test_chat_task_keeps_its_messages(sessions):
    messages = [{"role": "user", "content": "What is 1 + 1?"}]
    task = add(sessions, NewTask(messages=messages, reference="2", verifier="exact_match",
                                 options={"strip": True}))
    with sessions() as session:
        row = get_task(session, task_id=task.id)
    assert (row.messages, row.prompt, row.options) == (messages, None, {"strip": True})


@pytest.mark.parametrize(
    "task",
    [
        NewTask(reference="2", verifier="exact_match"),
        NewTask(prompt="x", messages=[{"role": "user", "content": "x"}], reference="2",
                verifier="exact_match"),
        NewTask(prompt="", reference="2", verifier="exact_match"),
        NewTask(prompt="x", reference="2", verifier=""),
    ],
)
def test_malformed_task_raises_invalid_task(sessions, task):
    with pytest.raises(InvalidTask):
        add(sessions, task)
    with sessions() as session:
        assert list_tasks(session) == []


def test_task_text_longer_than_the_limit_raises(sessions):
    with pytest.raises(TextTooLong) as raised:
        add(sessions, NewTask(prompt="x", reference="y" * 11, verifier="v"), max_text_chars=10)
    assert raised.value.field == "reference"


def test_unknown_task_raises(sessions):
    with sessions() as session, pytest.raises(UnknownTask):
        get_task(session, task_id="task-nope")


def test_tasks_are_split_by_a_stable_hash_of_their_id(sessions):
    ids = [add(sessions, heldout_fraction=0.5).id for _ in range(20)]
    with sessions() as session:
        heldout = {t.id for t in list_tasks(session, split="heldout")}
        train = {t.id for t in list_tasks(session, split="train")}
        assert [t.id for t in list_tasks(session, tag="add2")] == ids
        assert list_tasks(session, tag="other") == []
    assert heldout == {i for i in ids if is_heldout(i, 0.5)}
    assert train == set(ids) - heldout


def test_a_task_that_names_its_side_keeps_it(sessions):
    with sessions.begin() as session:
        kept = [add_task(session, task=NewTask(prompt="p", reference="r", verifier="exact_match",
                                               heldout=side), principal=None, heldout_fraction=f)
                for side, f in ((True, 0.0), (False, 1.0))]
        assert [task.heldout for task in kept] == [True, False]
