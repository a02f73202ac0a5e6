"""The embedded default base models: SmolLM2-135M-Instruct imported from a pinned GGUF file, and
a tiny Llama trained from scratch on a synthetic corpus (the demo's and the tests').

`import_gguf(gguf_file, out_dir)` and `build(out_dir, seed=..., steps=...)` make (or find) a
Hugging Face model folder that transformers, peft and vLLM load unchanged; `exact_match` and
`answer` ask it questions.

Importing this package is cheap: each name loads its module (torch, for the builder) on first
use, so the gateway can read the skills without loading torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "BaseModelFolderTaken": "lifelong.base_model.builder",
    "BuildParams": "lifelong.base_model.builder",
    "BuildReport": "lifelong.base_model.builder",
    "CORPUS_SKILLS": "lifelong.base_model.skills",
    "DEFAULT_STEPS": "lifelong.base_model.builder",
    "GgufImportError": "lifelong.base_model.gguf_import",
    "HALF_TRAINED": "lifelong.base_model.builder",
    "ImportReport": "lifelong.base_model.gguf_import",
    "MARKER": "lifelong.base_model.builder",
    "NEIGHBOUR_SKILLS": "lifelong.base_model.skills",
    "NotEnoughHeldOutItems": "lifelong.base_model.skills",
    "SKILLS": "lifelong.base_model.skills",
    "Skill": "lifelong.base_model.skills",
    "answer": "lifelong.base_model.generation",
    "build": "lifelong.base_model.builder",
    "exact_match": "lifelong.base_model.accuracy",
    "heldout_items": "lifelong.base_model.skills",
    "import_gguf": "lifelong.base_model.gguf_import",
    "is_heldout": "lifelong.base_model.skills",
    "make_tokenizer": "lifelong.base_model.tokenizer",
    "messages": "lifelong.base_model.skills",
    "smollm2_gguf": "lifelong.base_model.gguf_import",
    "training_items": "lifelong.base_model.skills",
}

if TYPE_CHECKING:
    from lifelong.base_model.accuracy import exact_match
    from lifelong.base_model.builder import (
        DEFAULT_STEPS,
        HALF_TRAINED,
        MARKER,
        BaseModelFolderTaken,
        BuildParams,
        BuildReport,
        build,
    )
    from lifelong.base_model.generation import answer
    from lifelong.base_model.gguf_import import (
        GgufImportError,
        ImportReport,
        import_gguf,
        smollm2_gguf,
    )
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


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


__all__ = [
    "CORPUS_SKILLS",
    "DEFAULT_STEPS",
    "HALF_TRAINED",
    "MARKER",
    "NEIGHBOUR_SKILLS",
    "SKILLS",
    "BaseModelFolderTaken",
    "BuildParams",
    "BuildReport",
    "GgufImportError",
    "ImportReport",
    "NotEnoughHeldOutItems",
    "Skill",
    "answer",
    "build",
    "exact_match",
    "heldout_items",
    "import_gguf",
    "is_heldout",
    "make_tokenizer",
    "messages",
    "smollm2_gguf",
    "training_items",
]
