"""Exact-match accuracy of a model folder on a skill's held-out questions (greedy, chat format)."""

from __future__ import annotations

from pathlib import Path

from lifelong.base_model.generation import load, replies
from lifelong.base_model.skills import SKILLS, heldout_items, messages


def exact_match(model_dir: Path, *, skill: str, n: int, seed: int = 0) -> float:
    """Share of `n` held-out `skill` questions whose greedy reply is exactly the answer.

    Raises KeyError for an unknown skill, NotEnoughHeldOutItems if `n` exceeds its held-out share.
    """
    items = heldout_items(SKILLS[skill], n=n, seed=seed)
    model, tokenizer = load(model_dir)
    # Room for the longest answer and its <|im_end|>; a reply that runs on is wrong anyway.
    longest = max(len(tokenizer.encode(answer)) for _, answer in items)
    got = replies(
        model, tokenizer, [messages(question) for question, _ in items], max_new_tokens=longest + 2
    )
    return sum(reply == answer for reply, (_, answer) in zip(got, items, strict=True)) / n
