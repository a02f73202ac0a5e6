"""The hyperparameters of LoRA training, as TRL keeps them: one frozen dataclass, help on each field.

This is the one source of each hyperparameter: its default, its help and its bounds (`ge`, `gt`,
`le`, `lt`, `min_length` in the field's metadata, as pydantic names them). The daemon's
`training` settings are built from these fields (TRL's way: the config is the schema), so the
two cannot drift apart; the trainer reads nothing else. Every bad value is reported at once
(`InvalidTrainingConfig`), not the first one only.

The defaults are what the daemon trains with; a caller that builds its own config (tests,
benches) says what it wants.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal, get_args

if TYPE_CHECKING:
    import torch

# The projections vLLM's LoRA kernels serve for Llama-family models: attention and MLP.
LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
Precision = Literal["auto", "bf16", "fp32"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
BOUNDS = ("ge", "gt", "le", "lt", "min_length")


class InvalidTrainingConfig(ValueError):
    """One or more hyperparameters are out of range; the message names each."""


def out_of_bounds(config: Any) -> list[str]:
    """Each field of the dataclass `config` whose value breaks the bounds (or `choices`) in its
    metadata, as "name must be RULE, got VALUE". A field typed `... | None` may be None."""
    problems = []
    for f in fields(config):
        value, rule = getattr(config, f.name), _rule(f.metadata)
        if rule is None or (value is None and "None" in str(f.type)):
            continue
        if not _within(value, f.metadata):
            allowed = f"None or {rule}" if "None" in str(f.type) else rule
            problems.append(f"{f.name} must be {allowed}, got {value!r}")
    return problems


_SYMBOLS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
_BRACKETS = {"ge": "[", "gt": "(", "le": "]", "lt": ")"}


def _rule(bounds: Mapping[str, Any]) -> str | None:
    if "choices" in bounds:
        return f"one of {bounds['choices']}"
    if "min_length" in bounds:
        return "non-empty" if bounds["min_length"] == 1 else f"at least {bounds['min_length']} long"
    names = [name for name in _SYMBOLS if name in bounds]
    if len(names) == 2:  # a lower and an upper bound, in that order
        low, high = names
        return f"within {_BRACKETS[low]}{bounds[low]}, {bounds[high]}{_BRACKETS[high]}"
    return f"{_SYMBOLS[names[0]]} {bounds[names[0]]}" if names else None


def _within(value: Any, bounds: Mapping[str, Any]) -> bool:
    checks = {
        "choices": lambda limit: value in limit,
        "min_length": lambda limit: len(value) >= limit,
        "ge": lambda limit: value >= limit, "gt": lambda limit: value > limit,
        "le": lambda limit: value <= limit, "lt": lambda limit: value < limit,
    }
    return all(check(bounds[name]) for name, check in checks.items() if name in bounds)


@dataclass(frozen=True)
class LoraTrainingConfig:
    rank: int = field(
        default=8,
        metadata={"help": "LoRA rank r: the width of the low-rank update. At most the serving "
                          "side's max_lora_rank.", "ge": 1},
    )
    alpha: int = field(
        default=16,
        metadata={"help": "LoRA alpha: the update is scaled by alpha / rank.", "ge": 1},
    )
    dropout: float = field(
        default=0.0,
        metadata={"help": "Dropout on the LoRA input, in SFT stages (preference stages run "
                          "without dropout).", "ge": 0, "lt": 1},
    )
    target_modules: tuple[str, ...] = field(
        default=LLAMA_TARGETS,
        metadata={"help": "Names of the linear layers that get a LoRA update (Llama-family "
                          "names by default).", "min_length": 1},
    )
    learning_rate: float = field(
        default=1e-3, metadata={"help": "Peak AdamW learning rate, in every stage.", "gt": 0}
    )
    warmup_steps: int = field(
        default=10,
        metadata={"help": "Linear warm-up steps at the start of each stage; then cosine decay "
                          "to a tenth of the peak.", "ge": 0},
    )
    epochs: int = field(
        default=3, metadata={"help": "Passes over each stage's examples.", "ge": 1}
    )
    max_steps: int | None = field(
        default=200,
        metadata={"help": "Cap on the optimizer steps of each stage; None (null in YAML): the "
                          "epochs decide.", "ge": 1},
    )
    batch_size: int = field(
        default=16, metadata={"help": "Examples per optimizer step (pairs, for DPO).", "ge": 1}
    )
    max_length: int = field(
        default=256,
        metadata={"help": "Longest sequence in tokens; a longer one loses its first tokens, "
                          "never the end of its answer.", "ge": 8},
    )
    max_grad_norm: float = field(
        default=1.0, metadata={"help": "Gradient norm clipping.", "gt": 0}
    )
    beta: float = field(
        default=0.1,
        metadata={"help": "DPO/KTO beta: how strongly the policy is held to the reference "
                          "(the weights its stage started from).", "gt": 0},
    )
    precision: Precision = field(
        default="auto",
        metadata={"help": "Arithmetic of the SFT/DPO/KTO forward passes (LoRA weights stay "
                          "float32; GRPO updates run in fp32): 'bf16' autocast, 'fp32', or "
                          "'auto' (bf16 on a CUDA device that has it, else fp32). A small model "
                          "learns in fp32 what bf16 rounds away: on an H100 the tiny test model "
                          "learned last_digit to 100% in fp32 and 55.5% in bf16 (380 steps).",
                  "choices": PRECISIONS},
    )

    def __post_init__(self) -> None:
        problems = out_of_bounds(self)
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
