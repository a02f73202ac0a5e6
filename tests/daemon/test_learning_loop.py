"""The whole loop, unattended, on a real daemon: users ask through the public OpenAI endpoint and
correct the answers; the data trigger starts a cycle; the trainer learns, the judge approves, the
adapter is hot-swapped in; the public alias then answers held-out questions of the new skill
with the new version, measurably better. Then someone poisons the feedback (corrects sums with
a non-answer): the next cycle ends in rejection naming the retention suite, and the champion
keeps serving."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from lifelong.base_model import heldout_items, training_items
from lifelong.base_model.skills import SKILLS

# Outside CI for time (`make test-slow`): test_real_model proves learning through the daemon there.
pytestmark = [pytest.mark.integration, pytest.mark.slow]

LIFELONG = str(Path(sys.executable).parent / "lifelong")
QUESTIONS = 1000
POISON = "I am not sure."


def ask(client: openai.OpenAI, question: str, model: str = "lifelong") -> tuple[str, str, str]:
    reply = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": question}], max_tokens=8, temperature=0)
    answer = reply.parse()
    return answer.id, answer.choices[0].message.content or "", reply.headers["x-lifelong-adapter"]


def test_feedback_through_the_api_becomes_a_promoted_adapter_and_poison_is_rejected(
    tiny_base_model, tmp_path, start_daemon, migrated_store, last_digit, digits_only_items
):
    retention_source = tmp_path / "digits.jsonl"
    retention_source.write_text("".join(json.dumps(i.to_json()) + "\n" for i in digits_only_items))
    daemon = start_daemon(
        tmp_path, tiny_base_model,
        schedule={"enabled": True, "interval_minutes": None, "min_new_feedback": 600,
                  "check_every_s": 1},
        # 10 epochs (380 steps): last_digit is learned steadily by 200 (tests/conftest.py).
        training={"recipe": ["sft"], "learning_rate": 3e-3, "warmup_steps": 20, "batch_size": 32,
                  "epochs": 10, "max_steps": None, "min_new_examples": 5, "device": "cpu"},
        evals={"retention_source": str(retention_source), "max_tokens": 8,
               "gate": {"min_items": 100}},
        database={"heldout_fraction": 0.0},  # every interaction trains; the target is the tasks
    )
    try:
        heldout = heldout_items(last_digit, n=200, seed=0)
        with migrated_store(f"sqlite:///{daemon.data_dir / 'lifelong.db'}") as store:
            store.add_heldout_tasks(heldout, family="last_digit")
        client = openai.OpenAI(base_url=f"{daemon.url}/v1", api_key=daemon.key("alice"),
                               max_retries=0, timeout=120)
        stream = training_items(last_digit, random.Random(0))
        # Real traffic mixes skills: corrected sums too, without which 640 steps of a new skill
        # alone once taught the model to answer some sums with nothing (retention rejected it).
        sums = training_items(SKILLS["add2"], random.Random(1))
        questions = [next(stream) for _ in range(QUESTIONS)] + [next(sums) for _ in range(200)]
        random.Random(2).shuffle(questions)  # the data trigger may fire before the last batch
        with ThreadPoolExecutor(8) as pool:
            asked = list(pool.map(lambda qa: ask(client, qa[0]), questions))
        assert {version for _, _, version in asked} == {"base"}
        corrections = [{"interaction_id": interaction, "kind": "correction", "text": answer}
                       for (interaction, _, _), (_, answer) in zip(asked, questions, strict=True)]
        for start in range(0, len(corrections), 200):  # the test daemon takes 64 KiB bodies
            given = httpx.post(f"{daemon.url}/v1/feedback:batch",
                               json={"items": corrections[start : start + 200]},
                               headers=daemon.headers("alice"), timeout=120)
            assert given.status_code == 201, given.text

        admin = httpx.Client(base_url=daemon.url, headers=daemon.headers("ops"), timeout=60)
        status = daemon.cycle_ended()
        last = status["cycle"]["last"]
        assert last["trigger"] == "data"
        assert (last["outcome"], last["decision"], last["candidate"]) == (
            "promoted", "approved", "v0001"), last
        assert status["serving"] == "v0001"

        with ThreadPoolExecutor(8) as pool:
            now = list(pool.map(lambda qa: ask(client, qa[0]), heldout))
            before = list(pool.map(lambda qa: ask(client, qa[0], model="base"), heldout))
        assert {version for _, _, version in now} == {"v0001"}

        def right(answers: list[tuple[str, str, str]]) -> float:
            return sum(said == answer for (_, said, _), (_, answer) in
                       zip(answers, heldout, strict=True)) / len(heldout)

        assert right(now) >= right(before) + 0.5, (right(before), right(now))

        shown = subprocess.run([LIFELONG, "status", "--config", str(daemon.config)],
                               capture_output=True, text=True, timeout=60,
                               env={**os.environ, "LIFELONG_API_KEY": daemon.key("ops")})
        assert shown.returncode == 0, shown.stderr
        assert "serving:    v0001" in shown.stdout and "promote  base -> v0001 by gate" in shown.stdout

        # Poison: 300 sums asked through the API, each "corrected" with a non-answer.
        later = training_items(SKILLS["add2"], random.Random(7))
        poisoned = [ask(client, next(later)[0]) for _ in range(300)]
        given = httpx.post(f"{daemon.url}/v1/feedback:batch", headers=daemon.headers("alice"),
                           json={"items": [{"interaction_id": interaction, "kind": "correction",
                                            "text": POISON} for interaction, _, _ in poisoned]},
                           timeout=120)
        assert given.status_code == 201, given.text
        started = admin.post("/admin/train", json={})
        assert started.status_code == 202, started.text
        status = daemon.cycle_ended(trigger="ops")
        last = status["cycle"]["last"]
        assert (last["outcome"], last["decision"], last["candidate"]) == (
            "rejected", "rejected", "v0002"), last
        decision = admin.get("/admin/adapters/v0002").json()["gate_decision"]
        retention = next(s for s in decision["suites"] if s["suite"] == "retention")
        assert retention["outcome"] == "regressed", decision
        assert any("retention" in reason for reason in decision["reasons"]), decision
        assert status["serving"] == "v0001"
        assert {ask(client, question)[2] for question, _ in heldout[:20]} == {"v0001"}
    finally:
        daemon.stop()
