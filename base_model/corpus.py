"""The training corpus: chat conversations drawn from the corpus skills, tokenized into batches.

Each conversation is rendered by the tokenizer's own chat template, so the model learns exactly
the text vLLM and `apply_chat_template` will show it. Only the assistant's answer and the
<|im_end|> that closes it carry a loss: the questions are given, and learning to stop is what
makes vLLM's chat endpoint end the turn.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerFast

from lifelong.base_model.skills import SKILLS, messages, training_items

IGNORE_INDEX = -100  # the label cross-entropy skips, as transformers' models expect

# A share of batches opens every conversation with a system prompt, so that a client sending
# one still gets the trained behaviour rather than a model that has never seen a system turn.
# Whole batches, not single rows: one long row would pad the whole batch to its length.
SYSTEM_PROMPTS = ("You are a helpful assistant.", "Answer briefly.")
SYSTEM_PROMPT_SHARE = 0.1


@dataclass(frozen=True)
class Batch:
    """Right-padded token ids and their labels (IGNORE_INDEX outside the answers)."""

    input_ids: torch.Tensor
    labels: torch.Tensor


def encode_conversation(
    tokenizer: PreTrainedTokenizerFast, turns: list[dict[str, str]]
) -> tuple[list[int], list[int]]:
    """Token ids of `turns` (ending with the assistant's) and labels for its answer + <|im_end|>."""
    prompt = tokenizer.apply_chat_template(
        turns[:-1], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    ids = tokenizer.apply_chat_template(turns, tokenize=True, return_dict=False)
    assert ids[: len(prompt)] == prompt, "the chat template must extend the generation prompt"
    end = ids.index(tokenizer.eos_token_id, len(prompt)) + 1
    labels = [IGNORE_INDEX] * len(prompt) + ids[len(prompt) : end]
    # The template's newline after <|im_end|> is layout, not something to generate.
    labels += [IGNORE_INDEX] * (len(ids) - end)
    return ids, labels


def batches(
    tokenizer: PreTrainedTokenizerFast, *, skills: tuple[str, ...], seed: int, batch_size: int
) -> Iterator[Batch]:
    """An endless, seed-determined stream of batches mixing `skills` evenly."""
    rng = random.Random(seed)
    streams = [training_items(SKILLS[name], rng) for name in skills]
    # The same conversation recurs many times over a build; render and tokenize it once.
    encoded: dict[tuple[str | None, str, str], tuple[list[int], list[int]]] = {}
    while True:
        rows = []
        with_system = rng.random() < SYSTEM_PROMPT_SHARE
        for _ in range(batch_size):
            question, answer = next(rng.choice(streams))
            system = rng.choice(SYSTEM_PROMPTS) if with_system else None
            key = (system, question, answer)
            if key not in encoded:
                encoded[key] = encode_conversation(
                    tokenizer, messages(question, answer, system=system)
                )
            rows.append(encoded[key])
        yield _collate(rows, pad_id=tokenizer.pad_token_id)


def _collate(rows: list[tuple[list[int], list[int]]], *, pad_id: int) -> Batch:
    # Right padding needs no attention mask: causal attention never lets a real token see
    # the pads after it, and the pads carry no loss.
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for row, (ids, row_labels) in enumerate(rows):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(row_labels)] = torch.tensor(row_labels)
    return Batch(input_ids=input_ids, labels=labels)
