"""The learning test: feedback on a skill the base model lacks teaches it, on questions never trained.

What it shows: the whole path (the model's own wrong answers logged, corrected and verified in
the store; `run_training`; the verified adapter folder loaded by peft onto the base model)
carries a behaviour the base model does not have to held-out questions. Exact match is measured
greedily through transformers + peft on 200 held-out questions that no training row contains.

Why `echo` ("Repeat 4817." -> "4817") and not `sub2`: the tiny fixture model (2 layers, 300
pretraining steps) barely does the arithmetic it was trained on (0-6% on add2), so LoRA cannot
teach it subtraction in CI time: 600 SFT steps on 2,000 sub2 corrections moved held-out exact
match from 0% to 8%. Copying digits needs a new attention pattern, not arithmetic, and the tiny
model can find it in a few hundred steps. This does not show that arithmetic is learned.

Measured with this test as written (seed -> held-out exact match of the adapter; the base model
scores 0% every time): 0 -> 100%, 1 -> 80%, 2 -> 100%, 3 -> 91.5%. How soon the pattern is found
depends on the seed (at learning rates of 5e-3 and up some seeds never found it), hence a margin
of 50 points rather than a pinned number.
"""

from __future__ import annotations

import random

from peft import PeftModel

from lifelong.adapters import LoraTrainingConfig, run_training, verify
from lifelong.base_model import Skill, heldout_items, messages, training_items
from lifelong.base_model.generation import load, replies
from lifelong.feedback_store.records import Correction, Outcome

SEED = 0
TRAIN_QUESTIONS = 1000
HELDOUT_QUESTIONS = 200
MARGIN = 0.5  # the adapter must beat the base model by 50 points of exact match
CONFIG = LoraTrainingConfig(rank=8, alpha=16, learning_rate=3e-3, warmup_steps=20, batch_size=32,
                            epochs=20, max_steps=500)


def _echo(rng: random.Random) -> tuple[str, str]:
    number = rng.randint(1000, 9999)
    return f"Repeat {number}.", str(number)


ECHO = Skill("echo", "repeat a four-digit number: 'Repeat 4817.' -> '4817'", _echo)


def exact_match(model, tokenizer, items: list[tuple[str, str]]) -> float:
    said = replies(model, tokenizer, [messages(question) for question, _ in items],
                   max_new_tokens=8)
    return sum(reply == answer for reply, (_, answer) in zip(said, items, strict=True)) / len(items)


def test_feedback_teaches_a_skill_the_base_model_lacks_on_questions_it_never_saw(
    store, tiny_base_model, tmp_path
):
    stream = training_items(ECHO, random.Random(SEED))
    train = [next(stream) for _ in range(TRAIN_QUESTIONS)]
    heldout = heldout_items(ECHO, n=HELDOUT_QUESTIONS, seed=0)
    assert not {q for q, _ in train} & {q for q, _ in heldout}

    # What the daemon would have logged: the base model's own answers, two in three corrected;
    # for the rest, a right answer that a verifier passed (and the wrong one it failed).
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
    for start in range(0, len(feedback), 1000):
        store.give(*feedback[start : start + 1000])

    outcome = run_training(
        db_url=store.url, base_model_dir=tiny_base_model, adapters_dir=tmp_path / "adapters",
        methods=("sft",), config=CONFIG, seed=SEED, device="cpu", progress=False,
    )
    verify(outcome.adapter_path, tiny_base_model)
    adapted = PeftModel.from_pretrained(load(tiny_base_model)[0], str(outcome.adapter_path))
    adapted.eval()

    before = exact_match(base, tokenizer, heldout)
    after = exact_match(adapted, tokenizer, heldout)
    assert outcome.metrics["data"]["examples"]["sft"]["new"] == TRAIN_QUESTIONS
    assert after >= before + MARGIN, f"exact match {before:.1%} -> {after:.1%} (seed {SEED})"
