"""The hyperparameters of a GRPO run, as TRL keeps them: one frozen dataclass, help on each field.

The LoRA shape, learning rate, gradient clipping and longest sequence come from
`LoraTrainingConfig`, as for the other methods; these are GRPO's own.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from lifelong.adapters.lora_config import InvalidTrainingConfig


@dataclass(frozen=True)
class GrpoConfig:
    group_size: int = field(
        default=8, metadata={"help": "Answers sampled per prompt (K): the group advantages are "
                                     "relative to."})
    rounds: int = field(
        default=10, metadata={"help": "Rollout -> update -> load rounds; each samples from the "
                                      "previous round's adapter (on-policy)."})
    prompts_per_round: int = field(
        default=64, metadata={"help": "Practice tasks drawn (without replacement, reshuffled "
                                      "when used up) for each round."})
    temperature: float = field(
        default=1.0, metadata={"help": "Sampling temperature of the rollouts (> 0)."})
    max_new_tokens: int = field(
        default=64, metadata={"help": "Longest sampled answer, in tokens."})
    clip_eps: float = field(
        default=0.2, metadata={"help": "PPO-style clip of the probability ratio: 1 +- clip_eps."})
    kl_beta: float = field(
        default=0.0, metadata={"help": "Weight of the k3 KL penalty to the reference (the "
                                       "weights the run started from); 0: none, no reference "
                                       "pass."})
    updates_per_round: int = field(
        default=2, metadata={"help": "Passes over a round's answers (mu in the paper); past the "
                                     "first, the ratio moves off 1 and the clip matters."})
    batch_size: int = field(
        default=64, metadata={"help": "Answers per optimizer step."})
    concurrency: int = field(
        default=1, metadata={"help": "Rollout requests (each n=group_size) in flight at once: "
                                     "vLLM also serves users."})

    def __post_init__(self) -> None:
        problems = [
            f"{name} must be {rule}, got {getattr(self, name)!r}"
            for name, ok, rule in (
                ("group_size", self.group_size >= 2, ">= 2"),
                ("rounds", self.rounds >= 1, ">= 1"),
                ("prompts_per_round", self.prompts_per_round >= 1, ">= 1"),
                ("temperature", self.temperature > 0, "> 0"),
                ("max_new_tokens", self.max_new_tokens >= 1, ">= 1"),
                ("clip_eps", 0 < self.clip_eps < 1, "within (0, 1)"),
                ("kl_beta", self.kl_beta >= 0, ">= 0"),
                ("updates_per_round", self.updates_per_round >= 1, ">= 1"),
                ("batch_size", self.batch_size >= 1, ">= 1"),
                ("concurrency", self.concurrency >= 1, ">= 1"),
            )
            if not ok
        ]
        if problems:
            raise InvalidTrainingConfig("; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
