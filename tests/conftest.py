"""Fixtures every test folder shares: a tiny base model, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from lifelong.base_model import build

# The real build() on a shape small enough for seconds: 2 layers, 2 heads of 64. Enough steps
# that it answers in the chat format (digits, then <|im_end|>); accuracy is not the point.
TINY_BUILD = {"seed": 0, "steps": 300, "layers": 2, "hidden": 128, "batch_size": 32,
              "eval_items": 20}


@pytest.fixture(scope="session")
def tiny_base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of a tiny embedded base model (transformers, peft and vLLM load it)."""
    return build(tmp_path_factory.mktemp("base_model") / "tiny", **TINY_BUILD, progress=False).path
