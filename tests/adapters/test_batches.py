"""Examples as tokens: the base model's chat template, and a loss on the assistant's tokens only."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from lifelong.adapters.batches import IGNORE_INDEX, collate, encode
from lifelong.feedback_store.training_data import Prompt


@pytest.fixture(scope="module")
def tokenizer(tiny_base_model):
    return AutoTokenizer.from_pretrained(tiny_base_model)


def labelled(tokenizer, encoded) -> str:
    return tokenizer.decode([t for t in encoded.labels if t != IGNORE_INDEX])


def test_a_chat_example_is_the_served_prompt_and_only_the_answer_carries_a_loss(tokenizer):
    turns = [{"role": "system", "content": "Answer briefly."},
             {"role": "user", "content": "What is 47 - 38?"}]
    encoded = encode(tokenizer, Prompt("chat.completions", turns, None), "9", max_length=512)

    served = tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=True,
                                           return_dict=False)
    assert encoded.input_ids[: len(served)] == served
    assert encoded.labels[: len(served)] == [IGNORE_INDEX] * len(served)
    # The answer and the end of the turn, nothing after it.
    assert labelled(tokenizer, encoded) == "9<|im_end|>"
    assert tokenizer.decode(encoded.input_ids[len(served):]) == "9<|im_end|>"


def test_content_parts_are_read_as_their_text(tokenizer):
    parts = [{"role": "user", "content": [{"type": "text", "text": "What is "},
                                          {"type": "text", "text": "1 + 1?"}]}]
    plain = [{"role": "user", "content": "What is 1 + 1?"}]
    assert encode(tokenizer, Prompt("chat.completions", parts, None), "2", max_length=64) == \
        encode(tokenizer, Prompt("chat.completions", plain, None), "2", max_length=64)


def test_a_text_prompt_is_continued_by_the_completion_and_eos(tokenizer):
    encoded = encode(tokenizer, Prompt("completions", None, "12 + 34 ="), " 46", max_length=64)
    assert tokenizer.decode(encoded.input_ids) == "12 + 34 = 46<|im_end|>"
    assert labelled(tokenizer, encoded) == " 46<|im_end|>"


def test_a_long_example_loses_its_first_tokens_not_its_answer(tokenizer):
    turns = [{"role": "user", "content": "x" * 100 + " What is 1 + 1?"}]
    encoded = encode(tokenizer, Prompt("chat.completions", turns, None), "2", max_length=32)
    assert len(encoded.input_ids) == len(encoded.labels) == 32
    assert labelled(tokenizer, encoded) == "2<|im_end|>"
    assert encoded.truncated  # counted by the trainer and reported, never silent
    assert not encode(tokenizer, Prompt("chat.completions", turns, None), "2",
                      max_length=512).truncated


def test_batches_are_right_padded_with_the_padding_masked(tokenizer):
    short = encode(tokenizer, Prompt("completions", None, "1"), "2", max_length=64)
    long = encode(tokenizer, Prompt("completions", None, "1 + 1 ="), " 2", max_length=64)
    batch = collate([short, long], pad_id=tokenizer.pad_token_id)
    assert batch.input_ids.shape == (2, len(long.input_ids))
    assert batch.attention_mask[0].tolist() == [1] * len(short.input_ids) + [0] * (
        len(long.input_ids) - len(short.input_ids))
    assert batch.labels[0, len(short.input_ids):].eq(IGNORE_INDEX).all()
    assert batch.tokens() == len(short.input_ids) + len(long.input_ids)
