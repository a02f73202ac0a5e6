"""LoRA adapters learned from the store's feedback: data, training, the versioned artifact.

A library: it reads and writes the store (`lifelong.feedback_store`) and the base model folder
(`lifelong.base_model`), never the daemon that wires it.

- `training_set`: SFT examples, preference pairs and binary examples since the parent's data
  watermark, plus replay of older ones; held-out data never enters.
- `batches`: examples as token ids through the chat template, loss on the assistant's tokens.
- `losses`: DPO and KTO, written out. `lora_config` + `lora_trainer`: the hyperparameters and
  the plain training loop (recipes of SFT, DPO, KTO stages), fresh or from a parent adapter.
- `artifact`: version folders (`v0001`, ...) with a manifest of checksums, written atomically;
  `verify` refuses a corrupted adapter or one for another base model.
- `training_run`: `run_training`, one run from the run row to the registered candidate, the
  entry point the daemon's CLI calls in a process of its own.
"""

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
    DEFAULT_RECIPE,
    METHODS,
    InvalidRecipe,
    LoraShapeMismatch,
    TrainingDiverged,
    TrainingReport,
    UnknownMethod,
    load_model,
    train_lora,
)
from lifelong.adapters.training_run import (
    NothingTrained,
    RunOutcome,
    TrainingCancelled,
    run_training,
)
from lifelong.adapters.training_set import TrainingSet, build_training_set

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
