"""The tokenizer: bytes in and out, ChatML special tokens, a standard ChatML chat template."""

from transformers import AutoTokenizer

from lifelong.base_model.tokenizer import IM_END, IM_START, make_tokenizer


def test_any_text_round_trips_one_token_per_byte():
    tokenizer = make_tokenizer()
    text = "What is 47 + 38?\n  Ünïcødé ✓ 中文 \t"
    ids = tokenizer.encode(text)
    assert ids == list(text.encode())
    assert tokenizer.decode(ids) == text


def test_special_tokens_are_single_tokens_and_eos_ends_the_assistant_turn():
    tokenizer = make_tokenizer()
    assert tokenizer.eos_token == IM_END
    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.bos_token is None
    assert tokenizer.encode(f"{IM_START}x{IM_END}") == [
        tokenizer.convert_tokens_to_ids(IM_START), ord("x"), tokenizer.eos_token_id
    ]
    assert len({tokenizer.eos_token_id, tokenizer.pad_token_id, *range(256)}) == 258


def test_chat_template_is_chatml_and_opens_the_assistant_turn():
    tokenizer = make_tokenizer()
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    done = [*turns, {"role": "assistant", "content": "Hello"}]
    assert tokenizer.apply_chat_template(done, tokenize=False).endswith(
        "<|im_start|>assistant\nHello<|im_end|>\n"
    )


def test_saved_tokenizer_loads_back_the_same_with_auto_tokenizer(tmp_path):
    tokenizer = make_tokenizer()
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    turns = [{"role": "user", "content": "What is 12 + 34?"}]
    assert loaded.apply_chat_template(turns, add_generation_prompt=True) == (
        tokenizer.apply_chat_template(turns, add_generation_prompt=True)
    )
    assert (loaded.eos_token, loaded.pad_token) == (tokenizer.eos_token, tokenizer.pad_token)
