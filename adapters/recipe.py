"""A training recipe: the methods a run applies, in order, and the one rule they follow.

The feedback methods (sft, dpo, kto: `lora_trainer`) learn from the store's feedback; grpo
practises through vLLM on verifiable tasks (`grpo_run`), starting from what the feedback methods
taught, so it comes last, once, or alone. `check_recipe` is that rule for every caller: the
daemon's `training.recipe` setting, `lifelong train -m`, the admin API's `POST /admin/train`
and `run_training`. Cheap to import (no torch): the settings read it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

Method = Literal["sft", "dpo", "kto", "grpo"]
# A feedback method -> the kind of training-set examples it learns from.
METHOD_EXAMPLES = {"sft": "sft", "dpo": "pairs", "kto": "binary"}
METHODS = tuple(METHOD_EXAMPLES)  # the feedback methods
PRACTICE_METHOD = "grpo"
DEFAULT_RECIPE: tuple[Method, ...] = ("sft", "dpo")


class UnknownMethod(ValueError):
    """A recipe names a method other than sft, dpo, kto and grpo."""


class InvalidRecipe(ValueError):
    """A recipe is empty, names a method twice, or has grpo other than last."""


def check_recipe(methods: Sequence[str]) -> tuple[str, ...]:
    """`methods` as a tuple, if they are a recipe: known methods, at least one, each once, grpo
    last. Raises UnknownMethod, InvalidRecipe (both ValueErrors, so pydantic validators may
    call it)."""
    methods = list(methods)
    unknown = [method for method in methods if method not in (*METHODS, PRACTICE_METHOD)]
    if unknown:
        raise UnknownMethod(f"unknown training methods {unknown}; choose from "
                            f"{[*METHODS, PRACTICE_METHOD]}")
    if PRACTICE_METHOD in methods and (methods.count(PRACTICE_METHOD) > 1
                                       or methods[-1] != PRACTICE_METHOD):
        raise InvalidRecipe(f"grpo comes last in a recipe, once (it practises on what the "
                            f"feedback methods taught), got {methods}")
    if not methods or len(set(methods)) != len(methods):
        raise InvalidRecipe(f"a recipe names each method once, at least one: got {methods}")
    return tuple(methods)


def split_recipe(methods: Sequence[str]) -> tuple[tuple[str, ...], bool]:
    """The feedback methods of a recipe, in order, and whether it ends by practising (grpo).
    Raises UnknownMethod, InvalidRecipe."""
    recipe = check_recipe(methods)
    return tuple(m for m in recipe if m != PRACTICE_METHOD), PRACTICE_METHOD in recipe
