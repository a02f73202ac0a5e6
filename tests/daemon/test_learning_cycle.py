"""The data trigger's back-off: a cycle that failed holds the trigger for a while, others do not.
A candidate the gate left waiting is judged again, on a real vLLM, once enough new held-out items
arrived. (The whole cycle runs for real in test_learning_loop.py.)"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from lifelong.adapters import base_model_identity, manifest_checksum, write_adapter
from lifelong.base_model import SKILLS, heldout_items, messages
from lifelong.daemon.judge import Judge, Suites
from lifelong.daemon.learning_cycle import (
    FAILURE_BACKOFF,
    CycleReport,
    LearningCycle,
    Schedule,
    backing_off,
)
from lifelong.daemon.upstream import HttpUpstream
from lifelong.evals.gate import GatePolicy
from lifelong.evals.runner import Sampling
from lifelong.evals.verifier_pool import VerifierPool
from lifelong.feedback_store import registry
from lifelong.feedback_store.models import EvalRun
from lifelong.feedback_store.records import NewTask
from lifelong.feedback_store.tasks import add_task

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def ended(outcome: str, ago: timedelta) -> CycleReport:
    return CycleReport(trigger="data", started_at=(NOW - ago).isoformat(),
                       finished_at=(NOW - ago).isoformat(), outcome=outcome)


@pytest.mark.parametrize("outcome", ["failed", "interrupted"])
def test_a_recent_failure_holds_the_data_trigger_until_the_back_off_has_passed(outcome):
    assert backing_off(ended(outcome, timedelta(minutes=1)), NOW)
    assert not backing_off(ended(outcome, FAILURE_BACKOFF + timedelta(seconds=1)), NOW)


@pytest.mark.parametrize("outcome", ["promoted", "rejected", "skipped", "not_judged", "approved"])
def test_other_endings_do_not_hold_it(outcome):
    assert not backing_off(ended(outcome, timedelta(seconds=1)), NOW)


def test_no_cycle_yet_or_one_still_running_does_not_hold_it():
    assert not backing_off(None, NOW)
    running = CycleReport(trigger="data", started_at=NOW.isoformat())
    assert not backing_off(running, NOW)


def adapter(store, model_dir: Path, adapters_dir: Path, version: str, *, scrambled: bool) -> None:
    """A registered candidate for the tiny model: a fresh LoRA (it answers as the base model
    does, a number to every sum) or one with random B weights (its answers are not numbers)."""
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    if scrambled:
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, weight in model.named_parameters():
                if "lora_B" in name:
                    weight.copy_(torch.randn(weight.shape, generator=generator) * 2.0)
    path, _ = write_adapter(
        model, adapters_dir=adapters_dir, version=version, parent_version=None,
        base_model=base_model_identity(model_dir), data_watermark=0,
        data={"since": 0, "watermark": 0, "examples": {}}, feedback_ids=[], methods=["sft"],
        hyperparameters={"rank": 4, "alpha": 8, "learning_rate": 0.0, "batch_size": 1}, seed=0,
        metrics={})
    with store.sessions.begin() as session:
        registry.register(session, version=version, path=str(path),
                          checksum=manifest_checksum(path))


def add_number_tasks(store, questions: list[str]) -> None:
    """Held-out tasks passed by any number: what the tiny model always answers, and a
    scrambled adapter seldom does."""
    with store.sessions.begin() as session:
        for question in questions:
            add_task(session, task=NewTask(reference="a number", verifier="regex",
                                           options={"pattern": r"\d{1,4}"},
                                           messages=messages(question), tags=("family:digits",)),
                     principal=None, heldout_fraction=1.0)


@pytest.mark.integration
def test_a_waiting_candidate_is_judged_again_once_enough_new_heldout_items_arrived(
    tmp_path, tiny_base_model, vllm_url, migrated_store
):
    questions = [question for question, _ in heldout_items(SKILLS["add2"], n=30, seed=3)]
    with migrated_store(f"sqlite:///{tmp_path / 'lifelong.db'}") as store:
        adapter(store, tiny_base_model, tmp_path / "adapters", "v0001", scrambled=True)
        adapter(store, tiny_base_model, tmp_path / "adapters", "v0002", scrambled=False)
        with store.sessions.begin() as session:
            registry.set_champion(session, version="v0001", promoted_by="test", forced=True)
        add_number_tasks(store, questions[:5])

        async def scenario() -> CycleReport | None:
            upstream = HttpUpstream(vllm_url, timeout_s=120)
            try:
                with VerifierPool(2) as verifiers:
                    judge = Judge(
                        sessions=store.sessions, upstream=upstream,
                        base_model_dir=tiny_base_model,
                        suites=Suites(tmp_path / "regression", tmp_path / "retention.jsonl",
                                      lambda: None),
                        policy=GatePolicy(min_items=100), sampling=Sampling(max_tokens=8),
                        verifiers=verifiers)
                    cycle = LearningCycle(sessions=store.sessions, trainer=None, judge=judge,
                                          promoter=None, auto_promote=False)
                    # 5 of 5 against (nearly) none is p = 1/32: not beyond doubt on 5 items.
                    first = await judge.judge("v0002")
                    assert first.decision.status == "not_enough_evidence", first.decision.reasons
                    add_number_tasks(store, questions[5:24])
                    assert cycle.waiting_for_evidence(20) is None  # 19 new: not yet
                    add_number_tasks(store, questions[24:25])
                    assert cycle.waiting_for_evidence(20) == "v0002"
                    assert cycle.waiting_for_evidence(21) is None

                    schedule = Schedule(cycle, interval_minutes=None, cron=None,
                                        min_new_feedback=0, check_every_s=0.5,
                                        rejudge_new_heldout=20)
                    await schedule.start()
                    try:
                        deadline = time.monotonic() + 300
                        while cycle.last is None or cycle.last.finished_at is None:
                            assert time.monotonic() < deadline, "not judged again"
                            await asyncio.sleep(0.5)
                    finally:
                        await schedule.stop()
                    return cycle.last
            finally:
                await upstream.aclose()

        report = asyncio.run(scenario())
        assert report is not None and report.trigger == "heldout", report
        assert (report.candidate, report.decision, report.outcome) == (
            "v0002", "approved", "approved"), report  # auto_promote off: approved, not promoted
        with store.sessions() as session:
            assert registry.get(session, version="v0002").status == "approved"
            run = session.get(EvalRun, report.eval_run_id)
            assert run.config["suites"]["target:digits"]["items"] == 25
