"""The judge on a real vLLM: a candidate trained on poisoned feedback is rejected with the
regression named, the champion untouched, every answer on record. (The genuine-improvement half
is in tests/adapters/test_learning.py, which judges the adapter it trains.)"""

from __future__ import annotations

import random

import pytest
from sqlalchemy import func, select

from lifelong.adapters import LoraTrainingConfig, run_training
from lifelong.base_model import heldout_items, training_items
from lifelong.base_model.skills import SKILLS
from lifelong.feedback_store import registry
from lifelong.feedback_store.models import EvalResult, EvalRun
from lifelong.feedback_store.records import Outcome, Rating

pytestmark = pytest.mark.integration

POISON = "I am not sure."


@pytest.fixture
def poisoned(tmp_path, tiny_base_model, migrated_store, echo):
    """A store whose feedback marks a wrong, wordy answer as passed and rates it top, and the
    candidate trained on it."""
    with migrated_store(f"sqlite:///{tmp_path / 'lifelong.db'}") as store:
        # Poison on sums too, and 100 steps (one epoch was 10): on echo prompts alone, one epoch
        # once spread to sums (retention 0.93) and later did not (1.00): the regression was luck.
        stream = training_items(echo, random.Random(0))
        sums = training_items(SKILLS["add2"], random.Random(1))
        questions = [next(stream)[0] for _ in range(300)] + [next(sums)[0] for _ in range(100)]
        logged = store.ask_many([(question, POISON) for question in questions])
        store.give(*[item for interaction in logged
                     for item in (Outcome(interaction, passed=True), Rating(interaction, score=1.0))])
        store.add_heldout_tasks(heldout_items(echo, n=200, seed=0), family="echo")
        outcome = run_training(
            db_url=store.url, base_model_dir=tiny_base_model, adapters_dir=tmp_path / "adapters",
            methods=("sft",), seed=0, device="cpu", progress=False,
            config=LoraTrainingConfig(learning_rate=3e-3, batch_size=32, epochs=8, max_steps=100,
                                      max_length=512),
        )
        yield store, outcome.adapter_version


def test_poisoned_feedback_makes_a_candidate_the_gate_rejects_naming_the_regression(
    poisoned, judge_on_vllm, digits_only_items
):
    store, candidate = poisoned
    judgement = judge_on_vllm(store, candidate, retention_source=digits_only_items)
    checks = {check.suite: check for check in judgement.decision.suites}
    assert judgement.decision.status == "rejected"
    assert checks["retention"].outcome == "regressed", judgement.decision.reasons
    # Measured: none of the frozen items answered with a number any more (1.00 -> 0.00, McNemar
    # p = 6e-61), and empty answers failed a hard check too.
    assert checks["retention"].difference < -checks["retention"].tolerance
    # Not improved; in the full suite "regressed": the session's vLLM, after serving other
    # tests' adapters, let the base model answer 7.5% of echo (the stale-LoRA quirk in README).
    assert checks["target:echo"].outcome in ("not_improved", "regressed")
    assert any("retention" in reason and "regress" in reason for reason in judgement.decision.reasons), \
        judgement.decision.reasons
    assert judgement.registry_status == "rejected"
    with store.sessions() as session:
        assert registry.get(session, version=candidate).status == "rejected"
        assert registry.champion(session) is None
        run = session.get(EvalRun, judgement.eval_run_id)
        assert run.status == "succeeded" and run.summary["decision"]["status"] == "rejected"
        answered = session.scalar(select(func.count()).select_from(EvalResult)
                                  .where(EvalResult.eval_run_id == run.id))
        assert answered == 2 * (200 + checks["retention"].n)


def test_the_retention_suite_is_frozen_once_from_what_the_base_model_passes(
    poisoned, judge_on_vllm, digits_only_items, tmp_path
):
    store, candidate = poisoned
    judge_on_vllm(store, candidate, retention_source=digits_only_items)
    frozen = (tmp_path / "retention.jsonl").read_text().splitlines()
    assert 0 < len(frozen) <= len(digits_only_items)
    judge_on_vllm(store, candidate, retention_source=digits_only_items[:10])
    assert (tmp_path / "retention.jsonl").read_text().splitlines() == frozen  # never re-frozen
