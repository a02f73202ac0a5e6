"""Training from the admin API of a real daemon: the trainer is its own process, so killing it
(as the OOM killer would) fails its run and nothing else; serving never notices."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from lifelong.feedback_store.records import Correction

pytestmark = pytest.mark.integration

LIFELONG = str(Path(sys.executable).parent / "lifelong")

TRAINING = {"max_steps": 150, "epochs": 1000, "batch_size": 8, "min_new_examples": 5,
            "device": "cpu"}


@pytest.fixture(scope="module")
def daemon(tiny_base_model, tmp_path_factory, start_daemon, migrated_store):
    """A daemon of its own (it trains adapters), its store holding 40 corrected answers."""
    running = start_daemon(tmp_path_factory.mktemp("training"), tiny_base_model, training=TRAINING)
    with migrated_store(f"sqlite:///{running.data_dir / 'lifelong.db'}") as store:
        rng = random.Random(0)
        pairs = [(f"Repeat {x}.", str(x)) for x in (rng.randint(1000, 9999) for _ in range(40))]
        ids = store.ask_many([(question, "0") for question, _ in pairs])
        store.give(*[Correction(i, text=a) for i, (_, a) in zip(ids, pairs, strict=True)])
    yield running
    running.stop()


@pytest.fixture(scope="module")
def admin(daemon):
    with httpx.Client(base_url=daemon.url, headers=daemon.headers("ops"), timeout=30) as client:
        yield client


def wait_for(admin: httpx.Client, run_id: int, done, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = admin.get(f"/admin/training-runs/{run_id}").json()
        if done(run):
            return run
        time.sleep(0.2)
    raise AssertionError(f"training run {run_id} never got there: {run}")


def start_training(admin: httpx.Client, body: dict) -> int:
    # The trainer stays busy until the last run's process has exited, a moment after its run
    # ended; a 409 until then is the contract.
    deadline = time.monotonic() + 60
    while (started := admin.post("/admin/train", json=body)).status_code == 409:
        assert time.monotonic() < deadline, started.text
        time.sleep(0.2)
    assert started.status_code == 202, started.text
    return started.json()["id"]


def chat_still_answers(daemon) -> None:
    client = openai.OpenAI(base_url=f"{daemon.url}/v1", api_key=daemon.key("alice"), max_retries=0)
    reply = client.chat.completions.with_raw_response.create(
        model="lifelong", messages=[{"role": "user", "content": "Repeat 1234."}], max_tokens=8)
    assert reply.parse().choices[0].message.content is not None
    assert reply.headers["x-lifelong-adapter"] == "base"  # a candidate is never served


def test_training_needs_the_admin_scope(daemon):
    denied = httpx.post(f"{daemon.url}/admin/train", json={}, headers=daemon.headers("alice"))
    assert denied.status_code == 403


@pytest.mark.parametrize(("methods", "message"), [
    (["grpo", "sft"], "grpo comes last"),
    (["sft", "sft"], "names each method once"),
    (["ppo"], "Input should be"),
])
def test_a_bad_recipe_is_422_and_starts_nothing(daemon, admin, methods, message):
    refused = admin.post("/admin/train", json={"methods": methods})
    assert refused.status_code == 422 and message in refused.text, refused.text
    assert admin.get("/admin/training-runs/1").status_code == 404  # no run was started


def test_a_killed_trainer_fails_its_run_and_the_daemon_serves_on(daemon, admin):
    started = admin.post("/admin/train", json={"methods": ["sft"]})
    assert started.status_code == 202, started.text
    run_id = started.json()["id"]
    assert started.json()["status"] == "running"
    busy = admin.post("/admin/train", json={})
    assert busy.status_code == 409 and busy.json()["error"]["code"] == "trainer_busy"

    running = wait_for(admin, run_id, lambda run: run["progress"]["step"] > 0 and run["pid"])
    assert running["status"] == "running" and running["progress"]["loss"] > 0
    os.kill(running["pid"], signal.SIGKILL)  # what the OOM killer does

    ended = wait_for(admin, run_id, lambda run: run["status"] != "running")
    assert ended["status"] == "failed" and ended["adapter_version"] is None
    assert "the trainer process was killed by SIGKILL" in ended["error"]
    assert admin.get("/admin/adapters").json() == []
    assert httpx.get(f"{daemon.url}/readyz").status_code == 200
    chat_still_answers(daemon)


def test_a_cancelled_run_registers_nothing(daemon, admin):
    run_id = start_training(admin, {"methods": ["sft"]})
    wait_for(admin, run_id, lambda run: run["progress"]["step"] > 0)
    cancelled = admin.post(f"/admin/training-runs/{run_id}/cancel")
    assert cancelled.status_code == 202
    ended = wait_for(admin, run_id, lambda run: run["status"] != "running")
    assert ended["status"] == "failed" and ended["error"].startswith("TrainingCancelled")
    assert admin.get("/admin/adapters").json() == []
    again = admin.post(f"/admin/training-runs/{run_id}/cancel")
    assert again.status_code == 409 and again.json()["error"]["code"] == "not_running"


def test_a_run_that_finishes_makes_a_candidate_with_its_progress_on_record(daemon, admin):
    run_id = start_training(admin, {"methods": ["sft"]})
    ended = wait_for(admin, run_id, lambda run: run["status"] != "running")
    assert (ended["status"], ended["adapter_version"]) == ("succeeded", "v0001"), ended
    assert ended["progress"]["step"] == TRAINING["max_steps"]
    (adapter,) = admin.get("/admin/adapters").json()
    assert (adapter["version"], adapter["status"], adapter["training_run_id"]) == (
        "v0001", "candidate", run_id)
    detail = admin.get("/admin/adapters/v0001").json()
    assert detail["manifest"]["data"]["examples"]["sft"]["new"] == 40
    chat_still_answers(daemon)


def test_unknown_runs_and_adapters_are_404(admin):
    missing = admin.get("/admin/training-runs/999")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_run"
    assert admin.get("/admin/adapters/v0999").status_code == 404


def test_judging_needs_suites_then_runs_in_the_background_and_lands_on_the_adapter(
    daemon, admin, digits_only_items
):
    refused = admin.post("/admin/eval", json={"candidate": "v0001"})
    assert refused.status_code == 409, refused.text
    assert "no eval suites" in refused.json()["error"]["message"]
    assert admin.post("/admin/eval", json={"candidate": "v0404"}).status_code == 404

    suites = daemon.data_dir / "evals" / "regression"
    suites.mkdir(parents=True)
    (suites / "digits.jsonl").write_text(
        "".join(json.dumps(item.to_json()) + "\n" for item in digits_only_items[:50]))
    started = admin.post("/admin/eval", json={"candidate": "v0001"})
    assert started.status_code == 202, started.text
    run_id = started.json()["id"]
    deadline = time.monotonic() + 300
    while (run := admin.get(f"/admin/eval-runs/{run_id}").json())["status"] == "running":
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert run["status"] == "succeeded", run
    (suite,) = run["summary"]["suites"]
    assert (suite["candidate"]["suite"], suite["candidate"]["n"]) == ("digits", 50)
    # With a regression suite alone nothing can be shown to improve: never approved.
    decision = run["decision"]
    assert decision["status"] in ("rejected", "not_enough_evidence"), decision["reasons"]
    assert [check["suite"] for check in decision["suites"]] == ["digits"]
    detail = admin.get("/admin/adapters/v0001").json()
    # Rejected, or still a candidate when there was not enough evidence either way.
    assert detail["status"] == {"rejected": "rejected",
                                "not_enough_evidence": "candidate"}[decision["status"]]
    assert detail["gate_decision"]["eval_run_id"] == run_id
    # The candidate answered through vLLM under a private name that the gateway never routes.
    vllm_port = yaml.safe_load(daemon.config.read_text())["vllm"]["port"]
    served = httpx.get(f"http://127.0.0.1:{vllm_port}/v1/models").json()["data"]
    (private,) = [model["id"] for model in served if model["id"].startswith("eval-v0001-")]
    asked = httpx.post(f"{daemon.url}/v1/chat/completions", headers=daemon.headers("alice"),
                       json={"model": private, "messages": [{"role": "user", "content": "hi"}]})
    assert asked.status_code == 404, asked.text
    assert detail["gate_decision"]["reasons"] == decision["reasons"]
    (shown,) = detail["gate_decision"]["suites"]
    assert (shown["suite"], shown["n"], shown["candidate_mean"]) == (
        "digits", 50, decision["suites"][0]["candidate_mean"])


def test_lifelong_eval_prints_the_table_against_any_version(daemon):
    done = subprocess.run([LIFELONG, "eval", "v0001", "--against", "base", "--config",
                           str(daemon.config)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    header, row = done.stdout.splitlines()[:2]
    assert header.split()[:5] == ["SUITE", "KIND", "N", "BASE", "V0001"]
    assert row.split()[:3] == ["digits", "regression", "50"]
    assert "\ndecision: " in done.stdout and "(eval run " in done.stdout
    missing = subprocess.run([LIFELONG, "eval", "v0404", "--config", str(daemon.config)],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "no adapter 'v0404'" in missing.stderr
