"""The hyperparameters: each documented, every bad one named at once."""

from __future__ import annotations

import dataclasses

import pytest

from lifelong.adapters import InvalidTrainingConfig, LoraTrainingConfig


def test_every_hyperparameter_carries_its_help_text():
    assert all(field.metadata.get("help") for field in dataclasses.fields(LoraTrainingConfig))


def test_every_bad_value_is_reported_at_once():
    with pytest.raises(InvalidTrainingConfig) as raised:
        LoraTrainingConfig(rank=0, dropout=1.0, learning_rate=-1e-4, max_steps=0)
    message = str(raised.value)
    for name in ("rank", "dropout", "learning_rate", "max_steps"):
        assert f"{name} must be" in message


def test_the_config_is_plain_json_for_the_run_row_and_the_manifest():
    values = LoraTrainingConfig().to_dict()
    assert values["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                        "up_proj", "down_proj"]
    assert LoraTrainingConfig(**{**values, "target_modules": tuple(values["target_modules"])}) \
        == LoraTrainingConfig()


def test_precision_auto_means_bf16_only_on_a_cuda_device():
    import torch

    cpu = torch.device("cpu")
    assert not LoraTrainingConfig().bf16(cpu)  # auto on the CPU: fp32
    assert LoraTrainingConfig(precision="bf16").bf16(cpu)
    assert not LoraTrainingConfig(precision="fp32").bf16(torch.device("cuda"))
    with pytest.raises(InvalidTrainingConfig, match="precision must be one of"):
        LoraTrainingConfig(precision="fp16")
