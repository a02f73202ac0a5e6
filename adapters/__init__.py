"""LoRA adapters learned from the store's feedback: data, training, the versioned artifact.

A library: it reads and writes the store (`lifelong.feedback_store`) and the base model folder
(`lifelong.base_model`), never the daemon that wires it.

- `training_set`: SFT examples, preference pairs and binary examples since the parent's data
  watermark, plus replay of older ones; held-out data never enters.
- `batches`: examples as token ids through the chat template, loss on the assistant's tokens.
- `losses`: DPO and KTO, written out. `lora_config` + `lora_trainer`: the hyperparameters and
  the plain training loop (recipes of SFT, DPO, KTO stages), fresh or from a parent adapter.
- `recipe`: the methods of a run in order, and the rule they follow (grpo last, or alone).
- `grpo` + `grpo_config` + `rollout` + `grpo_run`: RL from verifier rewards: the GRPO loss
  written out, K graded samples per practice task through vLLM, and the run (rollout -> update
  -> load the new adapter under a fresh name -> rollout), registered as a candidate.
- `artifact`: version folders (`v0001`, ...) with a manifest of checksums, written atomically;
  `verify` refuses a corrupted adapter or one for another base model.
- `run_lifecycle`: a training run's row from open to its one end (skipped, published as a
  candidate, failed), shared by `training_run` and `grpo_run`.
- `training_run`: `run_training`, one run from the run row to the registered candidate, the
  entry point the daemon's CLI calls in a process of its own.

Importing this package is cheap: each name loads its module (and torch, for the trainer) on first
use, so a process that only reads manifests never loads torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "AdapterChecksumMismatch": "lifelong.adapters.artifact",
    "AdapterError": "lifelong.adapters.artifact",
    "AdapterManifestInvalid": "lifelong.adapters.artifact",
    "BaseModelMismatch": "lifelong.adapters.artifact",
    "DEFAULT_RECIPE": "lifelong.adapters.recipe",
    "InvalidRecipe": "lifelong.adapters.recipe",
    "InvalidTrainingConfig": "lifelong.adapters.lora_config",
    "LoraShapeMismatch": "lifelong.adapters.lora_trainer",
    "LoraTrainingConfig": "lifelong.adapters.lora_config",
    "METHODS": "lifelong.adapters.recipe",
    "Manifest": "lifelong.adapters.artifact",
    "NothingTrained": "lifelong.adapters.training_run",
    "RunOutcome": "lifelong.adapters.run_lifecycle",
    "TrainingCancelled": "lifelong.adapters.run_lifecycle",
    "TrainingDiverged": "lifelong.adapters.lora_trainer",
    "TrainingReport": "lifelong.adapters.lora_trainer",
    "TrainingSet": "lifelong.adapters.training_set",
    "UnknownMethod": "lifelong.adapters.recipe",
    "VersionTaken": "lifelong.adapters.artifact",
    "base_model_identity": "lifelong.adapters.artifact",
    "build_training_set": "lifelong.adapters.training_set",
    "load_model": "lifelong.adapters.lora_trainer",
    "manifest_checksum": "lifelong.adapters.artifact",
    "next_version": "lifelong.adapters.artifact",
    "read_manifest": "lifelong.adapters.artifact",
    "run_training": "lifelong.adapters.training_run",
    "train_lora": "lifelong.adapters.lora_trainer",
    "verify": "lifelong.adapters.artifact",
    "write_adapter": "lifelong.adapters.artifact",
}

if TYPE_CHECKING:
    from lifelong.adapters.artifact import (
        AdapterChecksumMismatch,
        AdapterError,
        AdapterManifestInvalid,
        BaseModelMismatch,
        Manifest,
        VersionTaken,
        base_model_identity,
        manifest_checksum,
        next_version,
        read_manifest,
        verify,
        write_adapter,
    )
    from lifelong.adapters.lora_config import InvalidTrainingConfig, LoraTrainingConfig
    from lifelong.adapters.lora_trainer import (
        LoraShapeMismatch,
        TrainingDiverged,
        TrainingReport,
        load_model,
        train_lora,
    )
    from lifelong.adapters.recipe import DEFAULT_RECIPE, METHODS, InvalidRecipe, UnknownMethod
    from lifelong.adapters.run_lifecycle import RunOutcome, TrainingCancelled
    from lifelong.adapters.training_run import NothingTrained, run_training
    from lifelong.adapters.training_set import TrainingSet, build_training_set


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


__all__ = [
    "DEFAULT_RECIPE",
    "METHODS",
    "AdapterChecksumMismatch",
    "AdapterError",
    "AdapterManifestInvalid",
    "BaseModelMismatch",
    "InvalidRecipe",
    "InvalidTrainingConfig",
    "LoraShapeMismatch",
    "LoraTrainingConfig",
    "Manifest",
    "NothingTrained",
    "RunOutcome",
    "TrainingCancelled",
    "TrainingDiverged",
    "TrainingReport",
    "TrainingSet",
    "UnknownMethod",
    "VersionTaken",
    "base_model_identity",
    "build_training_set",
    "load_model",
    "manifest_checksum",
    "next_version",
    "read_manifest",
    "run_training",
    "train_lora",
    "verify",
    "write_adapter",
]
