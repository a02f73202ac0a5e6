"""LoRA training on the real tiny model: what moves, what does not, and that it repeats exactly."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from peft import get_peft_model_state_dict
from safetensors.torch import load_file

from lifelong.adapters import (
    InvalidRecipe,
    LoraShapeMismatch,
    TrainingDiverged,
    UnknownMethod,
    load_model,
    train_lora,
)

CPU = torch.device("cpu")


def lora_tensors(model) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in get_peft_model_state_dict(model).items()}


def base_tensors(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if "lora_" not in name}


def train(model, tokenizer, training_set, config, **kwargs):
    arguments = {"methods": ("sft",), "seed": 0, "progress": False, **kwargs}
    return train_lora(model, tokenizer, training_set, config=config, **arguments)


def test_training_moves_every_lora_tensor_and_no_base_weight(tiny_base_model, training_set, small):
    model, tokenizer = load_model(tiny_base_model, parent_dir=None, config=small, seed=0,
                                  device=CPU)
    lora_before, base_before = lora_tensors(model), base_tensors(model)
    assert all(t.eq(0).all() for n, t in lora_before.items() if "lora_B" in n)  # LoRA starts at 0

    report = train(model, tokenizer, training_set, small)

    assert report.steps == small.max_steps and report.stop_reason == "completed"
    lora_after = lora_tensors(model)
    assert lora_after.keys() == lora_before.keys() and len(lora_after) == 2 * 2 * 2  # A, B x q, v x 2 layers
    assert all(not torch.equal(lora_before[n], lora_after[n]) for n in lora_after)
    base_after = base_tensors(model)
    assert all(torch.equal(base_before[n], base_after[n]) for n in base_before)


def test_the_same_seed_and_data_give_bit_identical_adapters(tiny_base_model, training_set, small):
    def adapter(seed: int) -> dict[str, torch.Tensor]:
        model, tokenizer = load_model(tiny_base_model, parent_dir=None, config=small, seed=seed,
                                      device=CPU)
        train(model, tokenizer, training_set, small, methods=("sft", "dpo", "kto"), seed=seed)
        return lora_tensors(model)

    first, second, other = adapter(0), adapter(0), adapter(1)
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert not all(torch.equal(first[name], other[name]) for name in first)


def test_continual_training_starts_from_the_parent_weights(tiny_base_model, training_set, small,
                                                           tmp_path):
    parent, tokenizer = load_model(tiny_base_model, parent_dir=None, config=small, seed=0,
                                   device=CPU)
    train(parent, tokenizer, training_set, small)
    parent.save_pretrained(str(tmp_path / "parent"))
    saved = load_file(tmp_path / "parent" / "adapter_model.safetensors")

    child, _ = load_model(tiny_base_model, parent_dir=tmp_path / "parent", config=small, seed=7,
                          device=CPU)
    start = lora_tensors(child)
    assert start.keys() == saved.keys()
    assert all(torch.equal(start[name], saved[name]) for name in saved)
    train(child, tokenizer, training_set, small, seed=7)
    assert all(not torch.equal(start[n], t) for n, t in lora_tensors(child).items())


def test_a_parent_of_another_rank_is_refused(tiny_base_model, training_set, small, tmp_path):
    parent, _ = load_model(tiny_base_model, parent_dir=None, config=small, seed=0, device=CPU)
    parent.save_pretrained(str(tmp_path / "parent"))
    with pytest.raises(LoraShapeMismatch, match="rank 4"):
        load_model(tiny_base_model, parent_dir=tmp_path / "parent",
                   config=dataclasses.replace(small, rank=8), seed=0, device=CPU)


def test_each_preference_stage_starts_at_its_reference(tiny_base_model, training_set, small):
    # The reference is the weights the stage starts from (here: after SFT), so the first DPO
    # loss is -log sigmoid(0) and the first KTO loss 1 - sigmoid(0), whatever SFT did.
    model, tokenizer = load_model(tiny_base_model, parent_dir=None, config=small, seed=0,
                                  device=CPU)
    report = train(model, tokenizer, training_set, small, methods=("sft", "dpo", "kto"))
    assert [stage.method for stage in report.stages] == ["sft", "dpo", "kto"]
    assert [stage.examples for stage in report.stages] == [
        len(training_set.sft), len(training_set.pairs), len(training_set.binary)]
    assert report.stages[1].first_loss == pytest.approx(math.log(2), abs=1e-5)
    assert report.stages[2].first_loss == pytest.approx(0.5, abs=1e-5)


def test_every_step_reports_its_loss_learning_rate_and_tokens(tiny_base_model, training_set, small):
    model, tokenizer = load_model(tiny_base_model, parent_dir=None, config=small, seed=0,
                                  device=CPU)
    steps = []
    config = dataclasses.replace(small, max_steps=4, warmup_steps=2)
    report = train(model, tokenizer, training_set, config,
                   on_step=lambda *values: steps.append(values))
    assert [step for step, *_ in steps] == [1, 2, 3, 4]
    assert [lr for _, _, lr, _ in steps][:3] == pytest.approx(
        [config.learning_rate / 3, 2 * config.learning_rate / 3, config.learning_rate])
    assert all(loss > 0 and tokens > 0 for _, loss, _, tokens in steps)
    assert sum(tokens for *_, tokens in steps) == report.tokens


def test_cancelling_stops_training_before_the_next_step(tiny_base_model, training_set, small):
    model, tokenizer = load_model(tiny_base_model, parent_dir=None, config=small, seed=0,
                                  device=CPU)
    done = []
    report = train(model, tokenizer, training_set, dataclasses.replace(small, max_steps=10),
                   on_step=lambda step, *_: done.append(step), cancelled=lambda: len(done) == 2)
    assert (report.steps, report.stop_reason) == (2, "cancelled")


def test_the_time_limit_stops_training_and_says_so(tiny_base_model, training_set, small):
    model, tokenizer = load_model(tiny_base_model, parent_dir=None, config=small, seed=0,
                                  device=CPU)
    report = train(model, tokenizer, training_set, small, max_seconds=0.0)
    assert (report.steps, report.stop_reason) == (0, "time_limit")


def test_a_loss_that_is_no_longer_finite_stops_training(tiny_base_model, training_set, small):
    model, tokenizer = load_model(tiny_base_model, parent_dir=None, config=small, seed=0,
                                  device=CPU)
    next(p for name, p in model.named_parameters() if "lora_A" in name).data.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="sft loss is nan at step 1"):
        train(model, tokenizer, training_set, small)


@pytest.mark.parametrize(("methods", "error"), [(("sft", "ppo"), UnknownMethod),
                                                (("sft", "dpo", "sft"), InvalidRecipe),
                                                ((), InvalidRecipe)])
def test_a_recipe_names_known_methods_once_each(tiny_base_model, training_set, small, methods,
                                                error):
    model, tokenizer = load_model(tiny_base_model, parent_dir=None, config=small, seed=0,
                                  device=CPU)
    with pytest.raises(error):
        train(model, tokenizer, training_set, small, methods=methods)
