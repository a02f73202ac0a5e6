"""Rollouts: a GRPO run's graded samples are stored per round; practice never sees held-out tasks."""

from __future__ import annotations

import pytest

from lifelong.evals.verifiers import usable_verifier
from lifelong.feedback_store.errors import UnknownRun
from lifelong.feedback_store.feedback import add_feedback
from lifelong.feedback_store.interactions import add_interactions
from lifelong.feedback_store.records import NewTask, Outcome
from lifelong.feedback_store.rollouts import (
    OUTCOME_TAG,
    NewRollout,
    add_rollouts,
    list_rollouts,
    practice_tasks,
    round_summaries,
    tasks_from_outcomes,
)
from lifelong.feedback_store.runs import start_training_run
from lifelong.feedback_store.tasks import add_task


def task(session, prompt: str, *, heldout: bool, verifier: str = "exact_match", tags=()):
    return add_task(session, task=NewTask(prompt=prompt, reference="4", verifier=verifier,
                                          heldout=heldout, tags=tuple(tags)),
                    principal=None, heldout_fraction=0.0).id


def test_practice_takes_train_split_tasks_with_a_known_verifier_never_held_out_ones(sessions):
    with sessions.begin() as session:
        practise = task(session, "2+2=", heldout=False, tags=["family:add"])
        task(session, "3+1=", heldout=True, tags=["family:add"])
        task(session, "1+3=", heldout=False, verifier="someone_elses")
        other = task(session, "0+4=", heldout=False, tags=["family:other"])
    with sessions() as session:
        assert [t.id for t in practice_tasks(session, verifiers={"exact_match"})] == [
            practise, other]
        assert [t.id for t in practice_tasks(session, verifiers={"exact_match"},
                                             tag="family:add")] == [practise]


def test_rollouts_are_stored_per_run_and_round_and_summarised(sessions):
    with sessions.begin() as session:
        task_id = task(session, "2+2=", heldout=False)
        run_id = start_training_run(session, method="grpo", parent_version=None, config={}).id
        for round, rewards in ((0, [0.0, 1.0, 0.0, 0.0]), (1, [1.0, 1.0, 0.0, 1.0])):
            add_rollouts(session, training_run_id=run_id, round=round, rollouts=[
                NewRollout(task_id=task_id, policy=f"grpo-{round}", sample=k, text=str(k),
                           finish_reason="stop", reward=r, passed=r == 1.0)
                for k, r in enumerate(rewards)])
    with sessions() as session:
        rows = list_rollouts(session, training_run_id=run_id, round=1)
        assert [(r.policy, r.sample, r.reward, r.passed) for r in rows] == [
            ("grpo-1", 0, 1.0, True), ("grpo-1", 1, 1.0, True), ("grpo-1", 2, 0.0, False),
            ("grpo-1", 3, 1.0, True)]
        assert rows[0].created_at.tzinfo is not None
        assert len(list_rollouts(session, training_run_id=run_id)) == 8
        summaries = round_summaries(session, training_run_id=run_id)
        assert [(s.round, s.samples, s.passed) for s in summaries] == [(0, 4, 1), (1, 4, 3)]
        assert summaries[1].mean_reward == pytest.approx(0.75)


def test_rollouts_of_an_unknown_run_are_refused(sessions):
    with sessions.begin() as session:
        task_id = task(session, "2+2=", heldout=False)
        with pytest.raises(UnknownRun):
            add_rollouts(session, training_run_id=999, round=0, rollouts=[
                NewRollout(task_id=task_id, policy="base", sample=0, text="4",
                           finish_reason="stop", reward=1.0, passed=True)])


def log(sessions, record, *, heldout: bool, **outcome) -> str:
    """An interaction on the held-out side or not, with an outcome on it."""
    with sessions.begin() as session:
        add_interactions(session, records=[record], heldout_fraction=1.0 if heldout else 0.0)
        add_feedback(session, items=[Outcome(record.id, **outcome)], principal="alice",
                     admin=True)
    return record.id


def test_logged_prompts_whose_outcome_names_a_verifier_and_reference_become_practice_tasks(
    sessions, interaction_record
):
    ok = {"passed": False, "verifier": "exact_match", "details": {"reference": "46"}}
    log(sessions, interaction_record(question="What is 12 + 34?"), heldout=False, **ok)
    log(sessions, interaction_record(question="What is 12 + 34?"), heldout=False, **ok)  # again
    log(sessions, interaction_record(question="What is 10 + 5?"), heldout=False, passed=True,
        verifier="numeric", details={"reference": "15", "options": {"abs_tol": 1}})
    # None of these can be practised on:
    log(sessions, interaction_record(question="What is 1 + 1?"), heldout=True, **ok)  # held out
    log(sessions, interaction_record(question="What is 2 + 2?"), heldout=False, passed=True,
        verifier="exact_match")  # no reference
    log(sessions, interaction_record(question="What is 3 + 3?"), heldout=False, passed=True,
        verifier="someone_elses", details={"reference": "6"})  # not a verifier here
    log(sessions, interaction_record(question="What is 4 + 4?"), heldout=False, passed=True,
        verifier="numeric", details={"reference": "eight"})  # unusable by its verifier
    with sessions.begin() as session:  # a held-out task's prompt stays the judge's
        add_task(session, task=NewTask(messages=[{"role": "user", "content": "What is 7 + 7?"}],
                                       reference="14", verifier="exact_match", heldout=True),
                 principal=None, heldout_fraction=0.0)
    log(sessions, interaction_record(question="What is 7 + 7?"), heldout=False,
        passed=True, verifier="exact_match", details={"reference": "14"})

    verifiers = {"exact_match", "numeric"}
    with sessions.begin() as session:
        made = tasks_from_outcomes(session, verifiers=verifiers, usable=usable_verifier)
    with sessions.begin() as session:
        assert tasks_from_outcomes(session, verifiers=verifiers, usable=usable_verifier) == 0
    assert made == 2
    with sessions() as session:
        tasks = practice_tasks(session, verifiers=verifiers)
        assert [(t.messages[0]["content"], t.reference, t.verifier, t.options, t.tags)
                for t in tasks] == [
            ("What is 12 + 34?", "46", "exact_match", {}, [OUTCOME_TAG]),
            ("What is 10 + 5?", "15", "numeric", {"abs_tol": 1}, [OUTCOME_TAG])]
        assert {t.principal for t in tasks} == {"alice"}
