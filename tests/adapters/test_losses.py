"""The hand-written losses agree with the papers' formulas computed one example at a time."""

from __future__ import annotations

import math

import pytest
import torch

from lifelong.adapters.batches import IGNORE_INDEX
from lifelong.adapters.losses import dpo_loss, kto_loss, sequence_logps


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_sequence_logps_sum_the_labelled_tokens_log_probabilities():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=generator, dtype=torch.float64)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 3, 1, IGNORE_INDEX],
                           [IGNORE_INDEX, 6, 0, 2, 5]])
    expected = []
    for row in range(2):
        total = 0.0
        for t in range(1, 5):  # the logits at t - 1 predict the token at t
            if labels[row, t] != IGNORE_INDEX:
                scores = logits[row, t - 1].tolist()
                log_norm = math.log(sum(math.exp(s) for s in scores))
                total += scores[labels[row, t]] - log_norm
        expected.append(total)
    assert sequence_logps(logits, labels).tolist() == pytest.approx(expected, abs=1e-6)


def test_dpo_loss_is_the_mean_negative_log_sigmoid_of_the_reward_margin():
    pc, pr = [-3.0, -10.0, -2.5], [-4.0, -9.0, -2.5]
    rc, rr = [-3.5, -9.5, -3.0], [-3.5, -9.5, -2.0]
    beta = 0.5
    expected = sum(
        -math.log(sigmoid(beta * ((pc[i] - rc[i]) - (pr[i] - rr[i])))) for i in range(3)
    ) / 3
    got = dpo_loss(*(torch.tensor(v) for v in (pc, pr, rc, rr)), beta=beta)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_dpo_loss_starts_at_log_2_and_pushes_chosen_up_and_rejected_down():
    chosen = torch.tensor([-5.0, -6.0], requires_grad=True)
    rejected = torch.tensor([-5.0, -7.0], requires_grad=True)
    loss = dpo_loss(chosen, rejected, chosen.detach(), rejected.detach(), beta=0.1)
    assert loss.item() == pytest.approx(math.log(2))
    loss.backward()
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()  # descent raises chosen


def test_kto_loss_matches_the_paper_with_the_kl_estimate_clamped_and_detached():
    policy, ref = [-2.0, -6.0, -4.0, -1.0], [-3.0, -5.0, -4.5, -1.5]
    desirable = [True, False, True, False]
    mismatched_policy, mismatched_ref = [-8.0, -9.0, -7.5, -9.5], [-8.5, -9.2, -7.0, -9.6]
    beta = 0.3
    z0 = max(0.0, sum(p - r for p, r in zip(mismatched_policy, mismatched_ref, strict=True)) / 4)
    expected = sum(
        1 - sigmoid(beta * ((p - r) - z0)) if good else 1 - sigmoid(beta * (z0 - (p - r)))
        for p, r, good in zip(policy, ref, desirable, strict=True)
    ) / 4
    mismatched = torch.tensor(mismatched_policy, requires_grad=True)
    got = kto_loss(torch.tensor(policy), torch.tensor(ref), torch.tensor(desirable), mismatched,
                   torch.tensor(mismatched_ref), beta=beta)
    assert z0 > 0
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert not got.requires_grad  # the KL estimate is a baseline, it takes no gradient


def test_kto_kl_estimate_never_goes_below_zero():
    # Mismatched answers more likely under the policy than the reference would give a
    # negative KL; the estimate is clamped to zero, so only the examples' own ratios count.
    policy, ref = torch.tensor([-2.0]), torch.tensor([-3.0])
    got = kto_loss(policy, ref, torch.tensor([True]), torch.tensor([-9.0]), torch.tensor([-5.0]),
                   beta=1.0)
    assert got.item() == pytest.approx(1 - sigmoid(1.0))
