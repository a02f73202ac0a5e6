"""Rollouts: a GRPO run's graded samples are stored per round; practice never sees held-out tasks."""

from __future__ import annotations

import pytest

from lifelong.feedback_store.errors import UnknownRun
from lifelong.feedback_store.records import NewTask
from lifelong.feedback_store.rollouts import (
    NewRollout,
    add_rollouts,
    list_rollouts,
    practice_tasks,
    round_summaries,
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
