"""The base model's tokenizer: one token per byte, ChatML special tokens and chat template.

Built offline with the `tokenizers` library (no hub, no training): token id `b` is byte `b`, so
any text encodes, and digits are single tokens, which is what arithmetic wants. The three special
tokens follow ChatML as Qwen uses it, so vLLM's chat endpoint, transformers' `apply_chat_template`
and peft all treat the model like any other ChatML model.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
END_OF_TEXT = "<|endoftext|>"
SPECIAL_TOKENS = (IM_START, IM_END, END_OF_TEXT)

# Standard ChatML. `add_generation_prompt` opens the assistant turn; the assistant ends its turn
# with <|im_end|>, the eos token, which is where vLLM and `generate` stop.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map, the alphabet of `ByteLevel`."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = {b: chr(b) for b in printable}
    shift = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + shift)
            shift += 1
    return chars


def make_tokenizer() -> PreTrainedTokenizerFast:
    """The tokenizer: ids 0-255 are bytes, then <|im_start|>, <|im_end|>, <|endoftext|>."""
    vocab = {char: byte for byte, char in _bytes_to_unicode().items()}
    # A BPE model without merges is a plain byte lookup once ByteLevel has mapped the bytes.
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token=IM_END,
        pad_token=END_OF_TEXT,
        additional_special_tokens=[IM_START],
        chat_template=CHAT_TEMPLATE,
        model_max_length=512,
        clean_up_tokenization_spaces=False,
    )
