"""The hyperparameters of a GRPO run, as TRL keeps them: one frozen dataclass, help on each field.

The LoRA shape, gradient clipping and longest sequence come from `LoraTrainingConfig`, as for
the other methods; these, the learning rate included, are GRPO's own. As there, each field's
metadata holds its bounds, and the daemon's `training.grpo` settings are built from these fields.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from lifelong.adapters.lora_config import InvalidTrainingConfig, out_of_bounds


@dataclass(frozen=True)
class GrpoConfig:
    learning_rate: float = field(
        default=3e-4, metadata={"help": "AdamW learning rate of the GRPO updates, apart from "
                                        "training.learning_rate: on SmolLM2 (bench/"
                                        "rlvr_vs_sft.py) the SFT rate 1e-3 took held-out sums "
                                        "from 58% to 19% in one round, 1e-4 moved little in "
                                        "two, 3e-4 raised 12% to 30% in six.", "gt": 0}
    )
    group_size: int = field(
        default=8, metadata={"help": "Answers sampled per prompt (K): the group advantages are "
                                     "relative to.", "ge": 2})
    rounds: int = field(
        default=10, metadata={"help": "Rollout -> update -> load rounds; each samples from the "
                                      "previous round's adapter (on-policy).", "ge": 1})
    prompts_per_round: int = field(
        default=64, metadata={"help": "Practice tasks drawn (without replacement, reshuffled "
                                      "when used up) for each round.", "ge": 1})
    temperature: float = field(
        default=1.0, metadata={"help": "Sampling temperature of the rollouts (> 0).", "gt": 0})
    max_new_tokens: int = field(
        default=64, metadata={"help": "Longest sampled answer, in tokens.", "ge": 1})
    clip_eps: float = field(
        default=0.2, metadata={"help": "PPO-style clip of the probability ratio: 1 +- clip_eps.",
                               "gt": 0, "lt": 1})
    kl_beta: float = field(
        default=0.0, metadata={"help": "Weight of the k3 KL penalty to the reference (the "
                                       "weights the run started from); 0: none, no reference "
                                       "pass.", "ge": 0})
    updates_per_round: int = field(
        default=2, metadata={"help": "Passes over a round's answers (mu in the paper); past the "
                                     "first, the ratio moves off 1 and the clip matters.",
                             "ge": 1})
    batch_size: int = field(
        default=64, metadata={"help": "Answers per optimizer step.", "ge": 1})
    concurrency: int = field(
        default=1, metadata={"help": "Rollout requests (each n=group_size) in flight at once: "
                                     "vLLM also serves users.", "ge": 1})

    def __post_init__(self) -> None:
        problems = out_of_bounds(self)
        if problems:
            raise InvalidTrainingConfig("; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
