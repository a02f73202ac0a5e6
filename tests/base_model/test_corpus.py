"""The training corpus: chat-template text, loss on the answer and its <|im_end|> only."""

from lifelong.base_model.corpus import IGNORE_INDEX, batches, encode_conversation
from lifelong.base_model.skills import messages
from lifelong.base_model.tokenizer import make_tokenizer


def test_only_the_answer_and_its_im_end_carry_a_loss():
    tokenizer = make_tokenizer()
    ids, labels = encode_conversation(tokenizer, messages("What is 47 + 38?", "85"))
    assert tokenizer.decode(ids) == tokenizer.apply_chat_template(
        messages("What is 47 + 38?", "85"), tokenize=False
    )
    assert tokenizer.decode([label for label in labels if label != IGNORE_INDEX]) == (
        "85<|im_end|>"
    )


def test_batches_are_right_padded_and_fixed_by_the_seed():
    tokenizer = make_tokenizer()
    first = next(batches(tokenizer, skills=("add2",), seed=1, batch_size=16))
    again = next(batches(tokenizer, skills=("add2",), seed=1, batch_size=16))
    other = next(batches(tokenizer, skills=("add2",), seed=2, batch_size=16))
    assert first.input_ids.equal(again.input_ids) and first.labels.equal(again.labels)
    assert not first.input_ids.equal(other.input_ids)
    pad = tokenizer.pad_token_id
    for row, labels in zip(first.input_ids.tolist(), first.labels.tolist(), strict=True):
        end = max(i for i, token in enumerate(row) if token != pad) + 1
        assert tokenizer.decode(row[:end]).startswith("<|im_start|>")
        assert set(labels[end:]) <= {IGNORE_INDEX}
