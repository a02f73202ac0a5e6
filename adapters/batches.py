"""Examples as token ids: the chat template's rendering, labels on the assistant's tokens only.

A chat prompt is rendered by the base model's own chat template (`apply_chat_template`), exactly
as vLLM renders it when serving, and the completion is the assistant's turn that follows; only
that turn's tokens, up to and including the end-of-turn token, carry a loss. A text prompt
(the completions endpoint) is the prompt's tokens followed by the completion's and the eos token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from transformers import PreTrainedTokenizerBase

from lifelong.feedback_store.training_data import Prompt

IGNORE_INDEX = -100  # the label cross-entropy skips, as transformers' models expect


@dataclass(frozen=True)
class Encoded:
    """One sequence: its token ids and labels (IGNORE_INDEX outside the completion)."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False  # longer than max_length: its first tokens were dropped


@dataclass(frozen=True)
class Batch:
    """Right-padded sequences; `attention_mask` marks the real tokens."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    def tokens(self) -> int:
        """Real (non-padding) tokens in the batch: what throughput counts."""
        return int(self.attention_mask.sum())

    def to(self, device: torch.device) -> Batch:
        return Batch(self.input_ids.to(device), self.attention_mask.to(device),
                     self.labels.to(device))


def encode(
    tokenizer: PreTrainedTokenizerBase, prompt: Prompt, completion: str, *, max_length: int
) -> Encoded:
    """`prompt` followed by `completion`, labelled on the completion.

    Longer than `max_length`: the first tokens are dropped, so the completion (at the end) keeps
    its loss while the oldest context goes. Raises ValueError for a prompt with neither
    messages nor text.
    """
    if prompt.messages is not None:
        turns = [_text_turn(turn) for turn in prompt.messages]
        head = _chat_ids(tokenizer, turns, add_generation_prompt=True)
        ids = _chat_ids(tokenizer, [*turns, {"role": "assistant", "content": completion}],
                        add_generation_prompt=False)
        if ids[: len(head)] != head:
            raise ValueError("the chat template does not extend its own generation prompt")
        answer = ids[len(head):]
        # The turn ends at the first end-of-turn token; what the template puts after it (a
        # newline in ChatML) is layout, not something the model should learn to generate.
        if tokenizer.eos_token_id in answer:
            answer = answer[: answer.index(tokenizer.eos_token_id) + 1]
    elif prompt.prompt is not None:
        head = tokenizer.encode(prompt.prompt, add_special_tokens=False)
        answer = [*tokenizer.encode(completion, add_special_tokens=False), tokenizer.eos_token_id]
    else:
        raise ValueError("a prompt needs messages or text")
    input_ids = [*head, *answer][-max_length:]
    labels = ([IGNORE_INDEX] * len(head) + answer)[-max_length:]
    return Encoded(input_ids=input_ids, labels=labels,
                   truncated=len(head) + len(answer) > max_length)


def collate(rows: Sequence[Encoded], *, pad_id: int) -> Batch:
    """`rows` right-padded to the longest."""
    width = max(len(row.input_ids) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row.input_ids)
        input_ids[i, :n] = torch.tensor(row.input_ids)
        attention_mask[i, :n] = 1
        labels[i, :n] = torch.tensor(row.labels)
    return Batch(input_ids=input_ids, attention_mask=attention_mask, labels=labels)


def _chat_ids(
    tokenizer: PreTrainedTokenizerBase, turns: list[dict[str, Any]], *, add_generation_prompt: bool
) -> list[int]:
    ids = tokenizer.apply_chat_template(
        turns, add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=False
    )
    return cast(list[int], ids)  # tokenize=True, return_dict=False: a flat list of ids


def _text_turn(turn: dict[str, Any]) -> dict[str, Any]:
    # OpenAI clients may send content as a list of parts; chat templates of text models expect
    # a string, so the text parts are joined (other parts carry nothing a text model reads).
    content = turn.get("content")
    if isinstance(content, list):
        text = "".join(part.get("text", "") for part in content if part.get("type") == "text")
        return {**turn, "content": text}
    return turn
