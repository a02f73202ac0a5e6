"""A GRPO run on the tiny model: the update moves probability toward rewarded answers, and a whole
run practises through the real vLLM server, stores its rollouts and registers a candidate."""

from __future__ import annotations

import random

import httpx
import pytest
import torch
from sqlalchemy import select

from lifelong.adapters import LoraTrainingConfig, load_model, verify
from lifelong.adapters.batches import collate, encode
from lifelong.adapters.grpo import group_advantages, token_logps
from lifelong.adapters.grpo_config import GrpoConfig
from lifelong.adapters.grpo_run import grpo_update, run_grpo
from lifelong.base_model import SKILLS, messages, training_items
from lifelong.feedback_store import registry
from lifelong.feedback_store.models import Task, TrainingRun
from lifelong.feedback_store.records import NewTask, Outcome
from lifelong.feedback_store.rollouts import OUTCOME_TAG, list_rollouts
from lifelong.feedback_store.tasks import add_task
from lifelong.feedback_store.training_data import Prompt

pytestmark = pytest.mark.integration


LORA = LoraTrainingConfig(rank=4, alpha=8, target_modules=("q_proj", "v_proj"),
                          learning_rate=1e-2, max_length=512)


def test_an_update_raises_the_rewarded_answer_over_the_others(tiny_base_model):
    model, tokenizer = load_model(tiny_base_model, parent_dir=None, config=LORA, seed=0,
                                  device=torch.device("cpu"))
    base = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    prompt = Prompt("chat.completions", messages("What is 47 + 38?"), None)
    # The rewarded answer starts with a digit of its own. Had it shared its first token with
    # penalised answers ("85" beside "84" and "86"), that token's push would nearly cancel, and
    # this tiny model moves neighbouring digits together: a build on an AMD EPYC host saw "85"
    # fall and "75" rise under that design, with the surrogate still rising.
    answers = ["75", "85", "95", "75", "84", "86"]
    rewards = torch.tensor([float(a == "75") for a in answers])
    rows = [encode(tokenizer, prompt, a, max_length=64) for a in answers]
    batch = collate(rows, pad_id=tokenizer.eos_token_id)

    def sequence_logps() -> torch.Tensor:
        with torch.no_grad():
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            logps, _ = token_logps(logits, batch.labels)
        return logps.sum(dim=1)

    before = sequence_logps()
    grouped = group_advantages(rewards, len(answers))
    # 3e-3: six Adam steps at 1e-2 overshot on another host's build (every answer fell, the
    # rewarded one least: -0.70 against -2.6..-3.9); at 3e-3 it rose +1.27 and the others fell.
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    stats = grpo_update(model, rows, grouped.advantages, optimizer=optimizer,
                        grpo=GrpoConfig(updates_per_round=3, batch_size=3, kl_beta=0.0),
                        max_grad_norm=1.0, pad_id=tokenizer.eos_token_id, reference=None,
                        generator=torch.Generator().manual_seed(0))
    change = sequence_logps() - before
    assert stats.steps == 6 and stats.answers == 6
    # The right answer gains; answers sharing its tokens ("75" shares "5") may gain a little
    # too, so what must rise is the advantage-weighted sum: the surrogate the step ascends.
    assert change[rewards == 1].min() > 0, change.tolist()
    assert (grouped.advantages * change).sum() > 0, change.tolist()
    assert change[rewards == 1].mean() > change[rewards == 0].mean(), change.tolist()
    for name, value in model.named_parameters():
        if not value.requires_grad:
            assert torch.equal(value, base[name]), f"base weight {name} changed"


def test_a_run_practises_through_vllm_stores_rollouts_and_registers_a_candidate(
    tiny_base_model, vllm_url, store, tmp_path
):
    stream = training_items(SKILLS["add2"], random.Random(0))
    with store.sessions.begin() as session:
        practice = [add_task(session, task=NewTask(reference=a, verifier="numeric",
                                                   options={"abs_tol": 5},
                                                   messages=messages(q), heldout=False),
                             principal=None, heldout_fraction=0.0).id
                    for q, a in (next(stream) for _ in range(6))]
        add_task(session, task=NewTask(reference="85", verifier="exact_match",
                                       messages=messages("What is 47 + 38?"), heldout=True),
                 principal=None, heldout_fraction=1.0)

    outcome = run_grpo(
        db_url=store.url, base_model_dir=tiny_base_model, adapters_dir=tmp_path / "adapters",
        vllm_url=vllm_url, fresh=True, config=LORA, seed=0, device="cpu",
        grpo=GrpoConfig(learning_rate=1e-2, rounds=2, prompts_per_round=4, group_size=4,
                        max_new_tokens=8, batch_size=8, kl_beta=0.04),
    )

    assert outcome.status == "succeeded" and outcome.adapter_version == "v0001"
    verify(outcome.adapter_path, tiny_base_model)
    rounds = outcome.metrics["rounds"]
    assert [r["round"] for r in rounds] == [0, 1]
    for r in rounds:  # every group either trained or was counted as flat
        assert r["answers_trained"] + 4 * r["flat_groups"] == r["samples"] == 16
    with store.sessions() as session:
        rows = list_rollouts(session, training_run_id=outcome.run_id)
        run = session.get(TrainingRun, outcome.run_id)
        adapter = registry.get(session, version="v0001")
        assert (run.status, run.method, adapter.status) == ("succeeded", "grpo", "candidate")
        assert adapter.training_run_id == outcome.run_id
    assert len(rows) == 2 * 4 * 4 and {r.task_id for r in rows} <= set(practice)
    policies = [sorted({r.policy for r in rows if r.round == k}) for k in (0, 1)]
    assert len(policies[0]) == len(policies[1]) == 1
    # A round whose groups were all flat updates nothing, so the next samples from the same
    # policy (seen once in CI: sampling is unseeded); otherwise a fresh one.
    assert (policies[0] != policies[1]) == (rounds[0]["answers_trained"] > 0), (policies, rounds)
    assert all(0.0 <= r.reward <= 1.0 and r.passed == (r.reward == 1.0) for r in rows)
    # Round 1 sampled from round 0's update, loaded into vLLM under its own name.
    served = {m["id"] for m in httpx.get(f"{vllm_url}/v1/models", timeout=30).json()["data"]}
    assert policies[0][0] in served and policies[1][0] in served


def test_a_run_practises_on_logged_prompts_whose_outcome_gives_a_reference(
    tiny_base_model, vllm_url, store, tmp_path
):
    stream = training_items(SKILLS["add2"], random.Random(1))
    pairs = [next(stream) for _ in range(4)]
    ids = store.ask_many([(q, "0") for q, _ in pairs])  # answered wrongly, on the train side
    store.give(*[Outcome(i, passed=False, verifier="numeric",
                         details={"reference": a, "options": {"abs_tol": 5}})
                 for i, (_, a) in zip(ids, pairs, strict=True)])

    outcome = run_grpo(
        db_url=store.url, base_model_dir=tiny_base_model, adapters_dir=tmp_path / "adapters",
        vllm_url=vllm_url, fresh=True, config=LORA, seed=0, device="cpu",
        grpo=GrpoConfig(learning_rate=1e-2, rounds=1, prompts_per_round=4, group_size=4,
                        max_new_tokens=8, batch_size=8),
    )

    assert outcome.status == "succeeded" and outcome.metrics["data"]["practice_tasks"] == 4
    with store.sessions() as session:
        tasks = {t.id: t for t in session.scalars(select(Task))}
        rows = list_rollouts(session, training_run_id=outcome.run_id)
    assert {tasks[r.task_id].reference for r in rows} == {a for _, a in pairs}
    assert all(tasks[r.task_id].tags == [OUTCOME_TAG] for r in rows) and len(rows) == 16
