"""The preference losses, written out: DPO for pairs, KTO for thumbs up/down.

Both compare the policy's log-probability of a completion with the reference model's (the
weights the stage started from), summed over the completion's tokens. Tested against a
per-example computation from the papers' formulas (tests/adapters/test_losses.py).

- DPO (Rafailov et al., 2023): -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))).
- KTO (Ethayarajh et al., 2024): with r = pi - ref and z0 = max(0, KL estimate) taken without
  gradient, a desirable answer costs 1 - sigmoid(beta * (r - z0)), an undesirable one
  1 - sigmoid(beta * (z0 - r)); the KL estimate is the mean log-ratio of mismatched
  prompt/completion pairs (what the policy says about answers to other questions).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lifelong.adapters.batches import IGNORE_INDEX


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum over each row's labelled tokens of log p(token | tokens before it), shape (rows,)."""
    # Position t predicts token t + 1.
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    token_logps = -F.cross_entropy(
        logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="none"
    )
    return token_logps.view(labels.shape).sum(dim=1)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    *,
    beta: float,
) -> torch.Tensor:
    """Mean DPO loss over the pairs (sequence log-probabilities, one per pair)."""
    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return -F.logsigmoid(beta * margin).mean()


def kto_loss(
    policy: torch.Tensor,
    ref: torch.Tensor,
    desirable: torch.Tensor,
    policy_mismatched: torch.Tensor,
    ref_mismatched: torch.Tensor,
    *,
    beta: float,
) -> torch.Tensor:
    """Mean KTO loss over the examples; `desirable` is a bool per example, the mismatched
    log-probabilities (prompt i with another example's completion) estimate the KL term."""
    z0 = (policy_mismatched - ref_mismatched).mean().clamp(min=0).detach()
    ratio = policy - ref
    losses = torch.where(
        desirable, 1 - torch.sigmoid(beta * (ratio - z0)), 1 - torch.sigmoid(beta * (z0 - ratio))
    )
    return losses.mean()
