"""The GRPO objective (Shao et al., 2024, DeepSeekMath), written out: advantages and the loss.

K answers are sampled for each prompt and graded by a verifier. An answer's advantage is its
reward relative to its own group: (reward - group mean) / (group std + eps), so no value model
is needed. A group whose rewards are all equal (all right, or all wrong) says nothing about which
answer was better: its advantages are zero, and `group_advantages` counts it and marks its
answers uninformative, so the loop leaves them out of the update altogether (not even the KL
term sees them).

The loss, per completion token t of answer i (prompt and padding masked out):

    ratio   = exp(logp_i,t - old_i,t)                       old: the policy that sampled
    surr    = min(ratio * A_i, clip(ratio, 1 - eps, 1 + eps) * A_i)
    kl      = exp(ref_i,t - logp_i,t) - (ref_i,t - logp_i,t) - 1    (k3, unbiased, >= 0)
    loss    = mean_i [ mean_t ( -surr + beta * kl ) ]

as in the paper's equation (3): a mean over each answer's tokens, then over answers. The
reference is the weights the run started from (the champion, or the base model).

Why not TRL's GRPOTrainer: it owns generation (in-process, or its own `trl vllm-serve` server
whose weights it overwrites over NCCL), while lifelong samples from the daemon's OpenAI vLLM
server and moves LoRA weights by loading a new adapter; its loss is a method of the trainer, not
a function to call. The loss is tested against a per-token reference computation in
tests/adapters/test_grpo.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lifelong.adapters.batches import IGNORE_INDEX

EPS = 1e-4  # as TRL: keeps a group with a tiny spread from dividing by almost zero


@dataclass(frozen=True)
class GroupAdvantages:
    """One advantage per answer, and which groups could not teach anything."""

    advantages: torch.Tensor  # (groups * group_size,), float32, in group order
    informative: torch.Tensor  # bool per answer: False for every answer of a flat group
    flat_groups: int  # groups whose rewards were all equal


@dataclass(frozen=True)
class GrpoLoss:
    loss: torch.Tensor  # scalar, with gradient
    clipped_fraction: float  # share of completion tokens where the clip took effect
    kl: float  # mean k3 estimate over completion tokens (0 when beta is 0)


def group_advantages(rewards: torch.Tensor, group_size: int, *, eps: float = EPS
                     ) -> GroupAdvantages:
    """Group-relative advantages of `rewards` (answers of one prompt next to each other).

    Raises ValueError when the rewards do not split into groups of `group_size` >= 2.
    """
    if group_size < 2 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not make groups of {group_size} (>= 2)")
    groups = rewards.float().view(-1, group_size)
    mean = groups.mean(dim=1, keepdim=True)
    std = groups.std(dim=1, keepdim=True)  # unbiased, as the paper's implementation and TRL
    flat = groups.amax(dim=1) == groups.amin(dim=1)
    advantages = ((groups - mean) / (std + eps)).masked_fill(flat[:, None], 0.0)
    return GroupAdvantages(
        advantages=advantages.flatten(),
        informative=(~flat).repeat_interleave(group_size),
        flat_groups=int(flat.sum()),
    )


def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log p(label | tokens before it) and the mask of labelled tokens, both (rows,
    length - 1): position t of the logits predicts token t + 1. Unlabelled positions read 0."""
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    mask = labels != IGNORE_INDEX
    logps = -F.cross_entropy(logits.flatten(0, 1), labels.masked_fill(~mask, 0).flatten(),
                             reduction="none").view(labels.shape)
    return logps * mask, mask


def grpo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_eps: float,
    beta: float = 0.0,
    ref_logps: torch.Tensor | None = None,
) -> GrpoLoss:
    """The clipped surrogate (plus `beta` times the k3 KL to `ref_logps`), token-masked.

    `logps`, `old_logps`, `ref_logps`, `mask`: (answers, tokens); `advantages`: (answers,).
    `old_logps` and `ref_logps` carry no gradient. Raises ValueError for beta > 0 without
    reference log-probabilities, or an answer with no completion token.
    """
    if beta > 0 and ref_logps is None:
        raise ValueError("a KL penalty (beta > 0) needs the reference's log-probabilities")
    mask = mask.float()
    lengths = mask.sum(dim=1)
    if bool((lengths == 0).any()):
        raise ValueError("every answer needs at least one completion token")
    ratio = torch.exp(logps - old_logps.detach())
    advantage = advantages.detach()[:, None]
    unclipped = ratio * advantage
    clipped = torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * advantage
    per_token = -torch.min(unclipped, clipped)
    kl = torch.zeros_like(per_token)
    if beta > 0:
        assert ref_logps is not None
        delta = ref_logps.detach() - logps
        kl = torch.exp(delta) - delta - 1
        per_token = per_token + beta * kl
    loss = ((per_token * mask).sum(dim=1) / lengths).mean()
    with torch.no_grad():
        tokens = mask.sum()
        was_clipped = ((clipped < unclipped).float() * mask).sum() / tokens
        mean_kl = (kl * mask).sum() / tokens
    return GrpoLoss(loss=loss, clipped_fraction=float(was_clipped), kl=float(mean_kl))
