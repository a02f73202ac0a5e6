"""Greedy chat replies from a model folder with transformers, for measuring and for `base ask`.

Serving goes through vLLM; this is the in-process path, batched with left padding so a few
hundred questions take seconds on a CPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.utils import logging as transformers_logging

from lifelong.base_model.skills import Messages, messages


@contextmanager
def transformers_bars_off() -> Iterator[None]:
    """Silence transformers' per-load and per-save bars, then put the setting back as found.

    A build saves once and loads three times, `base ask` loads once to print one line; neither
    wants "Loading weights" bars between its own output.
    """
    bars = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars:
            transformers_logging.enable_progress_bar()


def load(model_dir: Path) -> tuple[PreTrainedModel, AutoTokenizer]:
    """The model (eval mode) and tokenizer saved in `model_dir`."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with transformers_bars_off():
        model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.eval()
    return model, tokenizer


@torch.inference_mode()
def replies(
    model: PreTrainedModel,
    tokenizer: AutoTokenizer,
    conversations: list[Messages],
    *,
    max_new_tokens: int,
    batch_size: int = 128,
) -> list[str]:
    """The assistant's greedy reply to each conversation, special tokens dropped, stripped."""
    prompts = [
        tokenizer.apply_chat_template(
            turns, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        for turns in conversations
    ]
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        width = max(len(ids) for ids in chunk)
        # Left padding keeps every prompt's last token in the last column, where generation
        # continues; the mask tells the model (and its position ids) where each prompt starts.
        input_ids = torch.tensor(
            [[tokenizer.pad_token_id] * (width - len(ids)) + ids for ids in chunk],
            device=model.device,
        )
        attention_mask = torch.tensor(
            [[0] * (width - len(ids)) + [1] * len(ids) for ids in chunk], device=model.device)
        generated = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
        )
        out.extend(
            tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in generated
        )
    return out


def answer(model_dir: Path, question: str, *, max_new_tokens: int = 32) -> str:
    """The model's greedy answer to one user message."""
    model, tokenizer = load(model_dir)
    return replies(model, tokenizer, [messages(question)], max_new_tokens=max_new_tokens)[0]
