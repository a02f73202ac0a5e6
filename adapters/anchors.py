"""Anchors: the base model's own answers to everyday prompts, replayed beside the feedback.

Feedback teaches one narrow thing, and SFT on it alone moves every answer the model gives: on
SmolLM2-135M, 36 steps on bare-number sums made "What is the capital of France?" come out as
"14766666". Mixing in the base model's answers to other prompts (self-distillation replay) holds
the rest of its behaviour where it was while the new thing is learned.

The anchor half of the shipped general prompts (`lifelong.evals.general`; the eval half judges,
this half trains, so the guard never grades what was trained on) is answered once, greedily,
with the adapter switched off, and kept in a JSONL file named with the base model's identity;
later runs read it back.
"""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path

from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from lifelong.base_model.generation import replies
from lifelong.evals.general import chat, general_prompts
from lifelong.feedback_store.training_data import Prompt, SftExample

logger = logging.getLogger(__name__)

MAX_NEW_TOKENS = 64  # as the eval suites answer (evals.max_tokens' default)


def base_answers(
    model: PeftModel, tokenizer: PreTrainedTokenizerBase, *, cache_file: Path, base_sha256: str
) -> dict[str, str]:
    """prompt -> the base model's greedy answer, for every anchor prompt; read from `cache_file`
    when it was written for this base model (`base_sha256`: the daemon writes it at start-up,
    through vLLM), else generated here and written."""
    cached = cached_answers(cache_file, base_sha256=base_sha256)
    if cached is not None:
        return cached
    prompts = general_prompts("anchor")
    logger.info("answering %d anchor prompts with the base model (once per base model)",
                len(prompts))
    with model.disable_adapter():
        answers = replies(model, tokenizer, [chat(p) for p in prompts],
                          max_new_tokens=MAX_NEW_TOKENS, batch_size=32)
    return write_answers(cache_file, dict(zip(prompts, answers, strict=True)),
                         base_sha256=base_sha256)


def cached_answers(cache_file: Path, *, base_sha256: str) -> dict[str, str] | None:
    """The anchor answers kept in `cache_file` for this base model and the current prompts,
    or None."""
    try:
        cached = json.loads(cache_file.read_text())
        answers = dict(cached["answers"]) if cached.get("base_sha256") == base_sha256 else None
    except (FileNotFoundError, json.JSONDecodeError, AttributeError, KeyError, TypeError):
        return None
    if answers is None or set(answers) != set(general_prompts("anchor")):
        return None
    return answers


def write_answers(cache_file: Path, answers: dict[str, str], *, base_sha256: str) -> dict[str, str]:
    """Keep `answers` in `cache_file` for the base model `base_sha256`, atomically."""
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    partial = cache_file.with_suffix(".partial")
    partial.write_text(json.dumps({"base_sha256": base_sha256, "answers": answers}, indent=1) + "\n")
    os.replace(partial, cache_file)
    return answers


def anchor_examples(answers: dict[str, str], *, count: int, seed: int) -> list[SftExample]:
    """`count` anchor examples (at most one per prompt), chosen with `seed`; empty answers are
    left out."""
    usable = sorted((p, a) for p, a in answers.items() if a.strip())
    chosen = random.Random(seed).sample(usable, min(count, len(usable)))
    return [
        SftExample(prompt=Prompt("chat.completions", chat(prompt), None), completion=answer,
                   source="anchor", interaction_ids=(), feedback_ids=())
        for prompt, answer in chosen
    ]


def anchor_count(sft_examples: int, fraction: float) -> int:
    """Anchors that make `fraction` of an SFT stage of `sft_examples` feedback examples."""
    if sft_examples == 0 or fraction <= 0:
        return 0
    return round(sft_examples * fraction / (1.0 - fraction))
