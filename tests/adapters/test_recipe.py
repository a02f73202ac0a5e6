"""The one recipe rule, as settings, CLI, admin API and `run_training` all apply it."""

from __future__ import annotations

import pytest

from lifelong.adapters.recipe import InvalidRecipe, UnknownMethod, check_recipe, split_recipe


@pytest.mark.parametrize(("methods", "feedback", "practises"), [
    (["sft", "dpo"], ("sft", "dpo"), False),
    (["kto", "sft", "grpo"], ("kto", "sft"), True),
    (["grpo"], (), True),
])
def test_grpo_comes_last_or_alone(methods, feedback, practises):
    assert check_recipe(methods) == tuple(methods)
    assert split_recipe(methods) == (feedback, practises)


@pytest.mark.parametrize(("methods", "error", "message"), [
    (["grpo", "sft"], InvalidRecipe, "grpo comes last in a recipe, once"),
    (["sft", "grpo", "grpo"], InvalidRecipe, "grpo comes last in a recipe, once"),
    (["sft", "dpo", "sft"], InvalidRecipe, "a recipe names each method once"),
    ([], InvalidRecipe, "at least one"),
    (["sft", "ppo"], UnknownMethod, r"unknown training methods \['ppo'\]"),
])
def test_a_bad_recipe_says_what_is_wrong(methods, error, message):
    with pytest.raises(error, match=message):
        check_recipe(methods)
