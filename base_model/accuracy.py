"""Exact-match accuracy of a model on question/answer pairs (greedy, chat format)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lifelong.base_model.generation import load, replies
from lifelong.base_model.skills import SKILLS, heldout_items, messages


def exact_match(model_dir: Path, *, skill: str, n: int, seed: int = 0) -> float:
    """Share of `n` held-out `skill` questions whose greedy reply is exactly the answer.

    Raises KeyError for an unknown skill, NotEnoughHeldOutItems if `n` exceeds its held-out share.
    """
    items = heldout_items(SKILLS[skill], n=n, seed=seed)
    model, tokenizer = load(model_dir)
    return share_right(model, tokenizer, items)


def share_right(model: Any, tokenizer: Any, items: list[tuple[str, str]]) -> float:
    """Share of `items` (question, answer) whose greedy reply from `model` (a transformers or
    peft model, on any device) is exactly the answer."""
    # Room for the longest answer and its <|im_end|>; a reply that runs on is wrong anyway.
    longest = max(len(tokenizer.encode(answer)) for _, answer in items)
    got = replies(
        model, tokenizer, [messages(question) for question, _ in items], max_new_tokens=longest + 2
    )
    return sum(reply == answer for reply, (_, answer) in zip(got, items, strict=True)) / len(items)
