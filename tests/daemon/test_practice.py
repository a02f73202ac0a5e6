"""Practice end to end: a real daemon (vLLM on the tiny model) starts a GRPO cycle by itself once
its users have been quiet, never while they are active; the run's process is niced, and it makes
way for user requests that arrive while it runs (pauses, counted in the run and in /metrics),
each of which is answered. The cycle's candidate is judged like any other."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from lifelong.base_model import SKILLS, heldout_items, training_items
from lifelong.feedback_store.models import TrainingRun

pytestmark = pytest.mark.integration

GRPO = {"learning_rate": 1e-3, "rounds": 4, "prompts_per_round": 16, "group_size": 4, "max_new_tokens": 6,
        "batch_size": 16, "quiet_ms": 100, "concurrency": 2}


def niceness(pid: int) -> int:
    # /proc/<pid>/stat: the 19th field is the nice value (after the parenthesised name)
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[16])


def test_the_daemon_practises_when_users_are_quiet_and_makes_way_when_they_come(
    tiny_base_model, tmp_path, start_daemon, migrated_store
):
    daemon = start_daemon(
        tmp_path, tiny_base_model,
        schedule={"enabled": True, "interval_minutes": None, "min_new_feedback": 0,
                  "check_every_s": 1, "practice": {"idle_s": 4, "every_minutes": 60}},
        training={"device": "cpu", "grpo": GRPO},
        evals={"max_tokens": 8, "gate": {"min_items": 10}},
    )
    try:
        with migrated_store(f"sqlite:///{daemon.data_dir / 'lifelong.db'}") as store:
            stream = training_items(SKILLS["add2"], random.Random(0))
            store.add_practice_tasks([next(stream) for _ in range(64)], family="add2",
                                     verifier="numeric", options={"abs_tol": 5})
            store.add_heldout_tasks(heldout_items(SKILLS["add2"], n=20, seed=0), family="add2")
            client = openai.OpenAI(base_url=f"{daemon.url}/v1", api_key=daemon.key("alice"),
                                   max_retries=0, timeout=120)
            admin = httpx.Client(base_url=daemon.url, headers=daemon.headers("ops"), timeout=60)

            def ask() -> None:
                reply = client.chat.completions.create(
                    model="lifelong", messages=[{"role": "user", "content": "What is 12 + 34?"}],
                    max_tokens=4)
                assert reply.choices[0].message.content is not None

            # Users active (a request every half second, past idle_s): no practice.
            until = time.monotonic() + 8
            while time.monotonic() < until:
                ask()
                time.sleep(0.5)
            status = admin.get("/admin/status").json()
            assert status["cycle"]["last"] is None, status["cycle"]
            assert "users were active" in status["practice"]["last_check"], status["practice"]

            # Quiet: a practice cycle starts by itself.
            # (A cycle is running a moment before its trainer has a run: wait for both.)
            deadline = time.monotonic() + 60
            while not ((status := admin.get("/admin/status").json())["cycle"]["running"]
                       and status["cycle"]["training_run"] is not None):
                assert time.monotonic() < deadline, status
                time.sleep(0.5)
            assert status["cycle"]["last"]["trigger"] == "practice"
            run_id = status["cycle"]["training_run"]

            def run() -> TrainingRun:
                with store.sessions() as session:
                    row = session.get(TrainingRun, run_id)
                    assert row is not None
                    return row

            deadline = time.monotonic() + 180
            while run().pid is None:  # its process is up
                assert run().status == "running" and time.monotonic() < deadline, run().error
                time.sleep(0.2)
            assert run().method == "grpo" and niceness(run().pid) == 19

            # Users come back while it practises: it pauses for them; every request answered.
            # They come as soon as the run's process is up, not after its first round: a tiny
            # model's rounds take about a second, and once a busy CI host finished all four
            # before the first user request reached the gateway.
            # They stay until the run has stopped at a safe point (the niced run can take
            # seconds to reach one on a busy CPU: once a CI run never got there in 4 s), then
            # 2 s longer, so the run's own account must show that much waiting.
            answered, failures, leave = [], [], threading.Event()

            def user() -> None:
                while not leave.is_set():
                    try:
                        ask()
                        answered.append(1)
                    except Exception as exc:  # noqa: BLE001 - reported below
                        failures.append(repr(exc))

            users = [threading.Thread(target=user) for _ in range(2)]
            for thread in users:
                thread.start()
            try:
                deadline = time.monotonic() + 120
                while not (during := admin.get("/admin/status").json()["practice"])[
                        "run_waiting"]:
                    assert time.monotonic() < deadline and run().status == "running", during
                    time.sleep(0.2)
                time.sleep(2)
            finally:
                leave.set()
                for thread in users:
                    thread.join()
            assert not failures and answered, failures
            assert during["paused"] and during["pauses"] >= 1, during

            deadline = time.monotonic() + 300
            while (status := admin.get("/admin/status").json())["cycle"]["running"]:
                assert time.monotonic() < deadline, status
                time.sleep(1)
            last = status["cycle"]["last"]
            finished = run()
            assert finished.status == "succeeded", (finished.error, last)
            rounds = finished.metrics["rounds"]
            assert len(rounds) == GRPO["rounds"]
            # it waited while the users were there (2 s and more after it was seen waiting)
            assert sum(r["paused_seconds"] for r in rounds) > 2.0, rounds
            assert last["candidate"] == finished.adapter_version and last["decision"], last

            # Done for now: the next practice waits for every_minutes.
            time.sleep(3)
            practice = admin.get("/admin/status").json()["practice"]
            assert not practice["paused"]
            assert "the last GRPO run started" in practice["last_check"], practice
            exposition = httpx.get(f"{daemon.url}/metrics", timeout=30).text
            assert "lifelong_practice_paused 0.0" in exposition
            pauses = [line for line in exposition.splitlines()
                      if line.startswith("lifelong_practice_pauses_total ")]
            assert pauses and float(pauses[0].split()[1]) >= 1, pauses
            assert 'lifelong_rollouts_total{result="passed"}' in exposition
            assert not (daemon.data_dir / "run" / "practice.pause").exists()
            assert not (daemon.data_dir / "run" / "practice.pause.waiting").exists()
            assert practice["run_waiting"] is False
    finally:
        daemon.stop()
