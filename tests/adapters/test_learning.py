"""The learning test: feedback on a skill the base model lacks teaches it, on questions never trained.

What it shows: the whole path (the model's own wrong answers logged, corrected and verified in
the store; `run_training`; the verified adapter folder loaded at runtime into a real vLLM server)
carries a behaviour the base model does not have to held-out questions. Exact match is measured
greedily through vLLM (the evals runner, base and adapter on the same 200 held-out questions that
no training row contains), and again through transformers + peft: the two must agree.

The second test hands the same adapter to the daemon's judge: the genuine-improvement half of
the gate's tests (the poisoned half is in tests/daemon/test_judge.py).

Why `last_digit` ("Say the last digit of 4817." -> "7") and not `sub2`: the tiny fixture model
(2 layers, 300 pretraining steps) barely does the arithmetic it was trained on (0-6% on add2), so
LoRA cannot teach it subtraction in CI time: 600 SFT steps on 2,000 sub2 corrections moved
held-out exact match from 0% to 8%. Copying a digit needs a new attention pattern, not
arithmetic. This does not show that arithmetic is learned.

Why not `echo` (copying four digits), which this test used before: it is learned suddenly, at a
step that moved with the CPU (one machine learned it in 400 steps, another not in 1,520 at the
same settings). last_digit is learned steadily: 0 -> 91-100% by step 200 with 3 seeds, on 1 or
2 threads (1,000 of its questions and 200 sums, these settings, the tiny model); through the
daemon (tests/daemon/test_learning_loop.py, the same data and settings) 0 -> 99% on 200
held-out questions, retention held.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from peft import PeftModel

from lifelong.adapters import LoraTrainingConfig, RunOutcome, run_training, verify
from lifelong.base_model import heldout_items, messages, training_items
from lifelong.base_model.accuracy import share_right
from lifelong.base_model.generation import load, replies
from lifelong.base_model.skills import SKILLS
from lifelong.evals.runner import Sampling, compare
from lifelong.evals.suites import EvalItem, Suite
from lifelong.feedback_store import registry
from lifelong.feedback_store.records import Correction, Outcome

# Outside CI for time (`make test-slow`): test_real_model proves learning through the daemon there.
pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEED = 0
TRAIN_QUESTIONS = 1000
SUM_QUESTIONS = 200
HELDOUT_QUESTIONS = 200
MARGIN = 0.5  # the adapter must beat the base model by 50 points of exact match
CONFIG = LoraTrainingConfig(rank=8, alpha=16, learning_rate=3e-3, warmup_steps=20, batch_size=32,
                            epochs=10, max_steps=None, max_length=512)  # 380 steps


def served_exact_match(vllm_url: str, adapter: str, items: list[tuple[str, str]]
                       ) -> tuple[float, float]:
    """Held-out exact match of the base model and of `adapter`, both answering through vLLM."""
    suite = Suite("last_digit", "target", tuple(
        EvalItem(id=str(n), messages=messages(question), reference=answer, verifier="exact_match")
        for n, (question, answer) in enumerate(items)))
    (comparison,) = asyncio.run(compare(vllm_url, candidate=adapter, champion="base",
                                        suites=[suite], sampling=Sampling(max_tokens=8)))
    return comparison.champion.summary.pass_rate, comparison.candidate.summary.pass_rate


@dataclass
class Learned:
    store: Any
    outcome: RunOutcome
    heldout: list[tuple[str, str]]


@pytest.fixture(scope="module")
def vllm_url(tiny_base_model, tmp_path_factory, start_vllm):
    """A server of this module's own: on the shared one, after other modules' adapter loads,
    vLLM 0.32 once answered held-out echo for the base model at 28% (it knows none): a stale
    LoRA (README)."""
    with start_vllm(tiny_base_model, tmp_path_factory.mktemp("vllm")) as url:
        yield url


@pytest.fixture(scope="module")
def learned(tiny_base_model, migrated_store, last_digit, tmp_path_factory) -> Iterator[Learned]:
    """An adapter trained from logged feedback on `last_digit`, a skill the base model lacks."""
    folder = tmp_path_factory.mktemp("learning")
    stream = training_items(last_digit, random.Random(SEED))
    train = [next(stream) for _ in range(TRAIN_QUESTIONS)]
    heldout = heldout_items(last_digit, n=HELDOUT_QUESTIONS, seed=0)
    assert not {q for q, _ in train} & {q for q, _ in heldout}

    with migrated_store(f"sqlite:///{folder / 'lifelong.db'}") as store:
        # What the daemon would have logged: the base model's own answers, two in three
        # corrected; for the rest, a right answer that a verifier passed (and the wrong one it
        # failed).
        base, tokenizer = load(tiny_base_model)
        said = replies(base, tokenizer, [messages(q) for q, _ in train], max_new_tokens=8)
        logged = store.ask_many([(q, reply) for (q, _), reply in zip(train, said, strict=True)])
        feedback: list[Correction | Outcome] = []
        for n, (interaction, (question, answer)) in enumerate(zip(logged, train, strict=True)):
            if n % 3:
                feedback.append(Correction(interaction, text=answer))
            else:
                (right,) = store.ask_many([(question, answer)])
                feedback += [Outcome(right, passed=True), Outcome(interaction, passed=False)]
        # Real traffic mixes skills: sums the model got wrong, corrected. Without them, a new
        # skill alone taught the model to answer 6% of sums with nothing (the gate rejected it).
        sums = training_items(SKILLS["add2"], random.Random(SEED + 1))
        asked = [next(sums) for _ in range(SUM_QUESTIONS)]
        said = replies(base, tokenizer, [messages(q) for q, _ in asked], max_new_tokens=8)
        for interaction, (_, answer) in zip(
                store.ask_many([(q, r) for (q, _), r in zip(asked, said, strict=True)]), asked,
                strict=True):
            feedback.append(Correction(interaction, text=answer))
        for start in range(0, len(feedback), 1000):
            store.give(*feedback[start : start + 1000])

        outcome = run_training(
            db_url=store.url, base_model_dir=tiny_base_model, adapters_dir=folder / "adapters",
            methods=("sft",), config=CONFIG, seed=SEED, device="cpu", progress=False,
        )
        yield Learned(store, outcome, heldout)


def test_feedback_teaches_a_skill_the_base_model_lacks_on_questions_it_never_saw(
    learned, tiny_base_model, vllm_url
):
    outcome, heldout = learned.outcome, learned.heldout
    assert outcome.metrics["data"]["examples"]["sft"]["new"] == TRAIN_QUESTIONS + SUM_QUESTIONS
    verify(outcome.adapter_path, tiny_base_model)

    name = f"learning-{outcome.adapter_version}"
    loaded = httpx.post(f"{vllm_url}/v1/load_lora_adapter",
                        json={"lora_name": name, "lora_path": str(outcome.adapter_path)}, timeout=60)
    assert loaded.status_code == 200, loaded.text
    before, after = served_exact_match(vllm_url, name, heldout)
    base, tokenizer = load(tiny_base_model)
    adapted = PeftModel.from_pretrained(load(tiny_base_model)[0], str(outcome.adapter_path))
    adapted.eval()
    in_peft = share_right(adapted, tokenizer, heldout), share_right(base, tokenizer, heldout)
    assert after >= before + MARGIN, f"served: exact match {before:.1%} -> {after:.1%} (seed {SEED})"
    # vLLM's kernels and transformers' differ in float rounding, so a greedy answer may differ
    # now and then; the adapter must mean the same thing in both.
    assert abs(in_peft[0] - after) <= 0.05 and abs(in_peft[1] - before) <= 0.05, (in_peft, before, after)


def test_the_gate_approves_what_was_learned(learned, judge_on_vllm, digits_only_items):
    """The genuine improvement: judged on held-out last_digit tasks (target) and on answering add2
    questions with a number (retention), the candidate wins without regressing."""
    learned.store.add_heldout_tasks(learned.heldout, family="last_digit")
    judgement = judge_on_vllm(learned.store, learned.outcome.adapter_version,
                              retention_source=digits_only_items)
    checks = {check.suite: check for check in judgement.decision.suites}
    assert judgement.decision.status == "approved", judgement.decision.reasons
    target = checks["target:last_digit"]
    assert target.outcome == "improved" and target.n == 200
    assert checks["retention"].outcome == "held"
    assert judgement.registry_status == "approved"
    with learned.store.sessions() as session:
        assert registry.champion(session) is None  # approval is not promotion
