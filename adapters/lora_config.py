"""The hyperparameters of LoRA training, as TRL keeps them: one frozen dataclass, help on each field.

The daemon maps its settings section onto this; the trainer reads nothing else. Every bad value
is reported at once (`InvalidTrainingConfig`), not the first one only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# The projections vLLM's LoRA kernels serve for Llama-family models: attention and MLP.
LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PRECISIONS = ("auto", "bf16", "fp32")


class InvalidTrainingConfig(ValueError):
    """One or more hyperparameters are out of range; the message names each."""


@dataclass(frozen=True)
class LoraTrainingConfig:
    rank: int = field(
        default=8,
        metadata={"help": "LoRA rank r: the width of the low-rank update. At most the serving "
                          "side's max_lora_rank."},
    )
    alpha: int = field(
        default=16, metadata={"help": "LoRA alpha: the update is scaled by alpha / rank."}
    )
    dropout: float = field(
        default=0.0,
        metadata={"help": "Dropout on the LoRA input, in SFT stages (preference stages run "
                          "without dropout)."},
    )
    target_modules: tuple[str, ...] = field(
        default=LLAMA_TARGETS,
        metadata={"help": "Names of the linear layers that get a LoRA update."},
    )
    learning_rate: float = field(
        default=2e-4, metadata={"help": "Peak AdamW learning rate, in every stage."}
    )
    warmup_steps: int = field(
        default=10,
        metadata={"help": "Linear warm-up steps at the start of each stage; then cosine decay "
                          "to a tenth of the peak."},
    )
    epochs: int = field(default=1, metadata={"help": "Passes over each stage's examples."})
    max_steps: int | None = field(
        default=None,
        metadata={"help": "Cap on the optimizer steps of each stage; None: the epochs decide."},
    )
    batch_size: int = field(
        default=8, metadata={"help": "Examples per optimizer step (pairs, for DPO)."}
    )
    max_length: int = field(
        default=512,
        metadata={"help": "Longest sequence in tokens; a longer one loses its first tokens, "
                          "never the end of its answer."},
    )
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient norm clipping."})
    beta: float = field(
        default=0.1,
        metadata={"help": "DPO/KTO beta: how strongly the policy is held to the reference "
                          "(the weights its stage started from)."},
    )
    precision: str = field(
        default="auto",
        metadata={"help": "Arithmetic of the SFT/DPO/KTO forward passes (LoRA weights stay "
                          "float32): 'bf16' autocast, 'fp32', or 'auto' (bf16 on a CUDA device "
                          "that has it, else fp32). A small model learns in fp32 what bf16 "
                          "rounds away: on an H100 the tiny test model learned last_digit to "
                          "100% in fp32 and 55.5% in bf16 (380 steps)."},
    )

    def __post_init__(self) -> None:
        problems = [
            f"{name} must be {rule}, got {getattr(self, name)!r}"
            for name, ok, rule in (
                ("rank", self.rank >= 1, ">= 1"),
                ("alpha", self.alpha >= 1, ">= 1"),
                ("dropout", 0.0 <= self.dropout < 1.0, "within [0, 1)"),
                ("target_modules", len(self.target_modules) > 0, "non-empty"),
                ("learning_rate", self.learning_rate > 0, "> 0"),
                ("warmup_steps", self.warmup_steps >= 0, ">= 0"),
                ("epochs", self.epochs >= 1, ">= 1"),
                ("max_steps", self.max_steps is None or self.max_steps >= 1, "None or >= 1"),
                ("batch_size", self.batch_size >= 1, ">= 1"),
                ("max_length", self.max_length >= 8, ">= 8"),
                ("max_grad_norm", self.max_grad_norm > 0, "> 0"),
                ("beta", self.beta > 0, "> 0"),
                ("precision", self.precision in PRECISIONS, f"one of {PRECISIONS}"),
            )
            if not ok
        ]
        if problems:
            raise InvalidTrainingConfig("; ".join(problems))

    def bf16(self, device: torch.device) -> bool:
        """Whether the forward passes on `device` run under bf16 autocast."""
        import torch  # here: reading a manifest's config must not load torch

        if self.precision == "auto":
            return device.type == "cuda" and torch.cuda.is_bf16_supported()
        return self.precision == "bf16"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values, for the run row and the manifest."""
        values = asdict(self)
        values["target_modules"] = list(self.target_modules)
        return values
