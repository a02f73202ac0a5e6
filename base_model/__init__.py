"""The embedded default base model: a small Llama trained from scratch on a synthetic corpus.

`build(out_dir, seed=..., steps=...)` makes (or finds) a Hugging Face model folder that
transformers, peft and vLLM load unchanged; `exact_match` and `answer` ask it questions.
"""

from lifelong.base_model.accuracy import exact_match
from lifelong.base_model.builder import (
    DEFAULT_STEPS,
    MARKER,
    BaseModelFolderTaken,
    BuildParams,
    BuildReport,
    build,
)
from lifelong.base_model.generation import answer
from lifelong.base_model.skills import (
    CORPUS_SKILLS,
    NEIGHBOUR_SKILLS,
    SKILLS,
    NotEnoughHeldOutItems,
    Skill,
    heldout_items,
    is_heldout,
    messages,
    training_items,
)
from lifelong.base_model.tokenizer import make_tokenizer

__all__ = [
    "CORPUS_SKILLS",
    "DEFAULT_STEPS",
    "MARKER",
    "NEIGHBOUR_SKILLS",
    "SKILLS",
    "BaseModelFolderTaken",
    "BuildParams",
    "BuildReport",
    "NotEnoughHeldOutItems",
    "Skill",
    "answer",
    "build",
    "exact_match",
    "heldout_items",
    "is_heldout",
    "make_tokenizer",
    "messages",
    "training_items",
]
