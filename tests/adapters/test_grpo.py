"""The GRPO objective against a reference written the other way: plain Python floats, one answer
and one token at a time, from the paper's formulas (Shao et al., 2024, eq. 3 and the k3 KL)."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from lifelong.adapters.batches import IGNORE_INDEX
from lifelong.adapters.grpo import EPS, group_advantages, grpo_loss, token_logps


def reference_advantages(rewards: list[float], group_size: int) -> list[float]:
    out = []
    for start in range(0, len(rewards), group_size):
        group = rewards[start:start + group_size]
        mean, std = statistics.mean(group), statistics.stdev(group)
        out += [0.0 if std == 0 else (r - mean) / (std + EPS) for r in group]
    return out


def reference_loss(logps, old, ref, advantages, mask, *, clip_eps, beta) -> float:
    per_answer = []
    for i, advantage in enumerate(advantages):
        terms = []
        for t, real in enumerate(mask[i]):
            if not real:
                continue
            ratio = math.exp(logps[i][t] - old[i][t])
            surrogate = min(ratio * advantage,
                            max(1 - clip_eps, min(1 + clip_eps, ratio)) * advantage)
            r = math.exp(ref[i][t] - logps[i][t])  # pi_ref / pi_theta
            terms.append(-surrogate + beta * (r - math.log(r) - 1))
        per_answer.append(sum(terms) / len(terms))
    return sum(per_answer) / len(per_answer)


def random_batch(seed: int, answers: int = 6, tokens: int = 5):
    g = torch.Generator().manual_seed(seed)
    logps = -torch.rand(answers, tokens, generator=g, dtype=torch.float64) * 3
    old = logps + torch.randn(answers, tokens, generator=g, dtype=torch.float64) * 0.3
    ref = logps + torch.randn(answers, tokens, generator=g, dtype=torch.float64) * 0.5
    mask = torch.ones(answers, tokens, dtype=torch.bool)
    mask[0, 3:] = False  # padding at the end of a short answer
    mask[2, :1] = False  # a prompt token inside the window
    advantages = torch.randn(answers, generator=g, dtype=torch.float64)
    return logps, old, ref, advantages, mask


def test_advantages_are_rewards_relative_to_their_own_group():
    rewards = [1.0, 0.0, 0.0, 1.0, 0.5, 0.25, 0.0, 1.0]
    out = group_advantages(torch.tensor(rewards), 4)
    assert out.advantages.tolist() == pytest.approx(reference_advantages(rewards, 4), abs=1e-6)
    assert out.flat_groups == 0 and out.informative.all()


def test_a_group_with_all_equal_rewards_has_zero_advantage_and_is_counted():
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    out = group_advantages(rewards, 3)
    assert out.flat_groups == 2
    assert out.informative.tolist() == [False] * 3 + [True] * 3 + [False] * 3
    assert out.advantages[:3].tolist() == [0.0] * 3 and out.advantages[6:].tolist() == [0.0] * 3
    assert out.advantages[3:6].sum().item() == pytest.approx(0.0, abs=1e-6)


def test_rewards_that_do_not_fill_groups_are_refused():
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError, match=">= 2"):
        group_advantages(torch.zeros(3), 1)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("clip_eps", "beta"), [(0.2, 0.0), (0.2, 0.04), (0.05, 0.5)])
def test_loss_matches_the_per_token_reference(seed, clip_eps, beta):
    logps, old, ref, advantages, mask = random_batch(seed)
    out = grpo_loss(logps, old, advantages, mask, clip_eps=clip_eps, beta=beta, ref_logps=ref)
    expected = reference_loss(logps.tolist(), old.tolist(), ref.tolist(), advantages.tolist(),
                              mask.tolist(), clip_eps=clip_eps, beta=beta)
    assert out.loss.item() == pytest.approx(expected, rel=1e-9)


def test_gradient_is_the_advantage_weighted_score_while_the_clip_is_inactive():
    # At ratio 1 (on-policy, first step) the surrogate's gradient is A * grad log p per token,
    # divided by the answer's length and the number of answers.
    logps = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, -0.5, -0.5]], requires_grad=True)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    advantages = torch.tensor([2.0, -1.0])
    out = grpo_loss(logps, logps.detach(), advantages, mask, clip_eps=0.2)
    out.loss.backward()
    expected = torch.tensor([[-2 / 2 / 2, -2 / 2 / 2, 0.0], [1 / 3 / 2] * 3])
    torch.testing.assert_close(logps.grad, expected)
    assert out.clipped_fraction == 0.0 and out.kl == 0.0


def test_the_clip_stops_the_gradient_once_the_ratio_leaves_the_trust_region():
    # Positive advantage, ratio above 1 + eps: no more push up. Negative advantage, ratio below
    # 1 - eps: no more push down. Within the region, or moving back into it: gradient flows.
    old = torch.zeros(4, 1)
    logps = torch.log(torch.tensor([[1.5], [1.1], [0.5], [1.5]])).requires_grad_()
    advantages = torch.tensor([1.0, 1.0, -1.0, -1.0])
    out = grpo_loss(logps, old, advantages, torch.ones(4, 1, dtype=torch.bool), clip_eps=0.2)
    out.loss.backward()
    grad = logps.grad.flatten().tolist()
    assert grad[0] == 0.0 and grad[2] == 0.0  # clipped: outside the region, same direction
    assert grad[1] < 0 and grad[3] > 0  # inside, and the pessimistic side outside
    assert out.clipped_fraction == pytest.approx(0.5)


def test_kl_to_the_reference_is_zero_when_policy_equals_reference():
    logps, old, _, advantages, mask = random_batch(3)
    logps.requires_grad_()
    with_kl = grpo_loss(logps, old, advantages, mask, clip_eps=0.2, beta=0.3, ref_logps=logps)
    without = grpo_loss(logps, old, advantages, mask, clip_eps=0.2)
    assert with_kl.kl == 0.0
    assert with_kl.loss.item() == pytest.approx(without.loss.item(), rel=1e-12)
    # The k3 term has zero gradient at policy == reference too.
    (grad_kl,) = torch.autograd.grad(with_kl.loss, logps)
    (grad,) = torch.autograd.grad(without.loss, logps)
    torch.testing.assert_close(grad_kl, grad)


def test_kl_is_positive_and_pulls_toward_the_reference():
    logps = torch.full((1, 2), -1.0, requires_grad=True)
    ref = torch.full((1, 2), -2.0)
    out = grpo_loss(logps, logps.detach(), torch.zeros(1), torch.ones(1, 2, dtype=torch.bool),
                    clip_eps=0.2, beta=1.0, ref_logps=ref)
    assert out.kl == pytest.approx(math.exp(-1) + 1 - 1)
    out.loss.backward()
    assert (logps.grad > 0).all()  # descending lowers logp, toward the reference's -2


def test_a_flat_groups_answers_get_no_gradient_from_the_surrogate():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0])
    advantages = group_advantages(rewards, 2)
    logps = torch.randn(4, 3, generator=torch.Generator().manual_seed(0)).requires_grad_()
    out = grpo_loss(logps, logps.detach() + 0.1, advantages.advantages,
                    torch.ones(4, 3, dtype=torch.bool), clip_eps=0.2)
    out.loss.backward()
    assert advantages.flat_groups == 1
    assert logps.grad[:2].abs().sum().item() == 0.0 and logps.grad[2:].abs().sum().item() > 0
    # An all-flat batch: zero loss and zero gradient everywhere.
    flat = group_advantages(torch.ones(4), 2)
    logps.grad = None
    out = grpo_loss(logps, logps.detach(), flat.advantages, torch.ones(4, 3, dtype=torch.bool),
                    clip_eps=0.2)
    out.loss.backward()
    assert flat.flat_groups == 2 and out.loss.item() == 0.0 and logps.grad.abs().sum() == 0.0


def test_kl_without_reference_and_empty_answers_are_refused():
    logps, old, _, advantages, mask = random_batch(0)
    with pytest.raises(ValueError, match="reference"):
        grpo_loss(logps, old, advantages, mask, clip_eps=0.2, beta=0.1)
    mask[1] = False
    with pytest.raises(ValueError, match="completion token"):
        grpo_loss(logps, old, advantages, mask, clip_eps=0.2)


def test_token_logps_masks_prompt_and_padding():
    logits = torch.randn(2, 4, 5, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 3, 1],
                           [IGNORE_INDEX, 2, 4, IGNORE_INDEX]])
    logps, mask = token_logps(logits, labels)
    assert mask.tolist() == [[False, True, True], [True, True, False]]
    log_softmax = torch.log_softmax(logits, dim=-1)
    assert logps[0, 1].item() == pytest.approx(log_softmax[0, 1, 3].item(), rel=1e-6)
    assert logps[1, 0].item() == pytest.approx(log_softmax[1, 0, 2].item(), rel=1e-6)
    assert logps[0, 0].item() == 0.0 and logps[1, 2].item() == 0.0
