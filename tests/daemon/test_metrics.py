"""The metrics end to end: a real daemon (vLLM on the tiny model), Debian's real Prometheus
scraping its `/metrics` every second, real traffic, feedback, a training run whose candidate the
gate rejects, a forced promotion (which opens a watch) and a rollback (which ends it), a GRPO run,
and canary rows written into the daemon's database (one promoted, one rolled back, one open with
the leader's statistics: a real canary needs an approved adapter and hundreds of outcomes). Then
every PromQL expression of the provisioned dashboard runs against that Prometheus: each must parse
and return data, or the panel (or annotation) it feeds would be empty. `promtool check metrics`
checks the exposition."""

from __future__ import annotations

import json
import math
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from lifelong.base_model import SKILLS, heldout_items, training_items
from lifelong.daemon.canary import live_arm
from lifelong.daemon.serve_process import free_port
from lifelong.evals.canary_policy import CanaryPolicy, decide
from lifelong.feedback_store import canaries, registry
from lifelong.feedback_store.canaries import Window

pytestmark = pytest.mark.integration

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards" / "lifelong.json"
SCRAPE_S = 1


def dashboard_queries() -> list[tuple[str, str, bool]]:
    """(where, expr, instant) for every query of the dashboard, annotations included."""
    board = json.loads(DASHBOARD.read_text())
    found = [(f"annotation {a['name']}", a["expr"], False) for a in board["annotations"]["list"]]
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            found.append((f"panel {panel['title']!r} {target['refId']}", target["expr"],
                          bool(target.get("instant"))))
    return found


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """`prometheus(target)`: Debian's Prometheus scraping `host:port/metrics` every second;
    returns its URL once the target is up. Stopped after the test."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus not found: `LIFELONG_DEV=1 scripts/setup.sh` installs it (apt)"
    processes: list[subprocess.Popen] = []

    def start(target: str) -> str:
        config = tmp_path / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": f"{SCRAPE_S}s", "evaluation_interval": f"{SCRAPE_S}s"},
            "scrape_configs": [{"job_name": "lifelong", "metrics_path": "/metrics",
                                "static_configs": [{"targets": [target]}]}],
        }))
        address = f"127.0.0.1:{free_port()}"
        log = tmp_path / "prometheus.log"
        process = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address={address}"],
            stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
        processes.append(process)
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "not ready:\n" + log.read_text()[-3000:]
            try:
                targets = httpx.get(f"http://{address}/api/v1/targets", timeout=2).json()
                if any(t["health"] == "up" for t in targets["data"]["activeTargets"]):
                    return f"http://{address}"
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            time.sleep(0.5)

    yield start
    for process in processes:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def write_canaries(sessions) -> None:
    """Canary rows as the leader leaves them: one promoted, one rolled back, one open with the
    statistics of a look at 45/50 vs 40/50 passed (enough outcomes for the interval). Its
    candidate is v0001, an adapter on disk, so the replicas can route to it."""
    looked = decide(live_arm(Window(passes=[True] * 45 + [False] * 5), requests=60, errors=1),
                    live_arm(Window(passes=[True] * 40 + [False] * 10), requests=60),
                    elapsed_s=60, policy=CanaryPolicy())
    with sessions.begin() as session:
        if (gates := canaries.open_trial(session)) is not None:  # the gate's, had it approved
            canaries.end(session, gates, decision="aborted", reason="metrics test")
        champion = registry.champion(session)
        baseline = champion.version if champion else None
        for decision in ("promote", "rollback"):
            row = canaries.start(session, kind="canary", version="v0001",
                                 baseline_version=baseline, share=0.5, by="metrics test")
            canaries.end(session, row, decision=decision, reason="metrics test")
        row = canaries.start(session, kind="canary", version="v0001", baseline_version=baseline,
                             share=0.5, by="metrics test")
        row.stats = {**looked.stats, "summary": looked.reason}


def wait_for_cycle(admin: httpx.Client) -> dict:
    deadline = time.monotonic() + 400
    while True:
        status = admin.get("/admin/status").json()
        last = status["cycle"]["last"]
        if last and last["outcome"] != "running" and not status["cycle"]["running"]:
            return last
        assert time.monotonic() < deadline, status
        time.sleep(1)


def test_every_dashboard_query_returns_data_from_a_real_prometheus_scraping_the_daemon(
    tiny_base_model, tmp_path, start_daemon, migrated_store, echo, prometheus
):
    daemon = start_daemon(
        tmp_path, tiny_base_model,
        gateway={"metrics_cache_s": 0.5},
        # SFT only on add2 corrections, enough steps that the run is seen going on
        training={"recipe": ["sft"], "batch_size": 4, "epochs": 100, "max_steps": 120,
                  "min_new_examples": 1, "device": "cpu", "warmup_steps": 0,
                  "grpo": {"rounds": 3, "prompts_per_round": 8, "group_size": 4,
                           "max_new_tokens": 6, "batch_size": 16, "quiet_ms": 50}},
        # the target suite is echo, which add2 corrections cannot teach: the gate rejects
        evals={"max_tokens": 8, "gate": {"min_items": 10}},
        database={"heldout_fraction": 0.0},
        # the leader never looks during the test: the canary rows written below keep their
        # statistics (a look would recount them from the few outcomes there are)
        promotion={"canary": {"check_every_s": 3600}},
    )
    try:
        url = prometheus(daemon.url.removeprefix("http://"))
        started = time.time()
        with migrated_store(f"sqlite:///{daemon.data_dir / 'lifelong.db'}") as store:
            store.add_heldout_tasks(heldout_items(echo, n=20, seed=0), family="echo")
            practice = training_items(SKILLS["add2"], random.Random(7))
            store.add_practice_tasks([next(practice) for _ in range(16)], family="add2",
                                     verifier="numeric", options={"abs_tol": 5})
        client = openai.OpenAI(base_url=f"{daemon.url}/v1", api_key=daemon.key("alice"),
                               max_retries=0, timeout=120)
        feedback = httpx.Client(base_url=daemon.url, headers=daemon.headers("alice"), timeout=60)
        admin = httpx.Client(base_url=daemon.url, headers=daemon.headers("ops"), timeout=300)

        def ask(n: int, model: str = "lifelong") -> list[str]:
            ids = []
            questions = training_items(SKILLS["add2"], random.Random(n))
            for _ in range(n):
                question, answer = next(questions)
                reply = client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": question}], max_tokens=4)
                ids.append(reply.id)
                given = feedback.post("/v1/feedback:batch", json={"items": [
                    {"interaction_id": reply.id, "kind": "correction", "text": answer},
                    {"interaction_id": reply.id, "kind": "outcome", "passed": len(ids) % 2 == 0,
                     "reward": 0.5 * (len(ids) % 3), "verifier": "exact_match"},
                ]})
                assert given.status_code == 201, given.text
            return ids

        def stream(n: int) -> None:
            # spread over the test: a histogram's rate needs its series seen before and after
            for _ in range(n):
                chunks = client.chat.completions.create(
                    model="lifelong", messages=[{"role": "user", "content": "What is 1 + 2?"}],
                    max_tokens=4, stream=True)
                # A complete stream, not necessarily a non-empty one: sampled at T=1, the tiny
                # model may end its answer at once.
                finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
                assert finishes and finishes[-1] in ("stop", "length"), finishes

        stream(2)
        answered = ask(12)
        stream(2)
        client.completions.create(model="base", prompt="1 + 1 =", max_tokens=2)
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
        assert feedback.post("/v1/feedback", json={"interaction_id": answered[0], "kind": "rating",
                                                   "score": 1}).status_code == 201
        refused = feedback.post("/v1/feedback", json={"interaction_id": "chatcmpl-none",
                                                      "kind": "rating", "score": 1})
        assert refused.status_code == 404

        trained = admin.post("/admin/train", json={"now": True})
        assert trained.status_code == 202, trained.text
        last = wait_for_cycle(admin)
        assert (last["decision"], last["candidate"]) == ("rejected", "v0001"), last

        promoted = admin.post("/admin/promote", json={"version": "v0001", "force": True,
                                                       "reason": "metrics test"})
        assert promoted.status_code == 200, promoted.text
        ask(4)  # answered by v0001, with outcome feedback
        stream(2)
        time.sleep(3 * SCRAPE_S)
        assert admin.post("/admin/rollback", json={}).status_code == 200
        ask(2)
        stream(2)
        # a GRPO run, users asking while it practises (it makes way for them)
        practised = admin.post("/admin/train", json={"methods": ["grpo"]})
        assert practised.status_code == 202, practised.text
        while admin.get("/admin/status").json()["cycle"]["running"]:
            ask(1)
            time.sleep(0.5)
        last = wait_for_cycle(admin)
        assert last["candidate"] == "v0002", last
        with migrated_store(f"sqlite:///{daemon.data_dir / 'lifelong.db'}") as store:
            write_canaries(store.sessions)
        time.sleep(5 * SCRAPE_S)  # every change scraped at least twice

        exposition = httpx.get(f"{daemon.url}/metrics", timeout=30)
        assert exposition.status_code == 200  # no API key needed
        checked = subprocess.run([shutil.which("promtool") or "promtool", "check", "metrics"],
                                 input=exposition.content, capture_output=True, timeout=30)
        assert checked.returncode == 0 and not checked.stdout + checked.stderr, checked
        assert 'lifelong_champion_info{parent="",version="base"} 1.0' in exposition.text
        canary = [line for line in exposition.text.splitlines()
                  if line.startswith("lifelong_canary_")]
        # the forced promotion's watch, ended by the rollback that superseded it
        assert 'lifelong_canary_decisions_total{decision="aborted",kind="watch"} 1.0' in canary, (
            canary)
        assert 'lifelong_canary_open{kind="canary"} 1.0' in canary, canary
        assert answered[0] not in exposition.text and "What is" not in exposition.text

        end = time.time()
        substitutions = {"$__rate_interval": f"{4 * SCRAPE_S + 1}s",
                         "$__interval": f"{SCRAPE_S}s", "$__range": f"{math.ceil(end - started)}s"}
        empty = []
        for where, expr, instant in dashboard_queries():
            promql = expr
            for variable, value in substitutions.items():
                promql = promql.replace(variable, value)
            assert "$" not in promql, f"{where}: unsubstituted variable in {expr}"
            if instant:
                answer = httpx.get(f"{url}/api/v1/query", params={"query": promql, "time": end})
            else:
                answer = httpx.get(f"{url}/api/v1/query_range", params={
                    "query": promql, "start": started, "end": end, "step": SCRAPE_S})
            body = answer.json()
            assert answer.status_code == 200 and body["status"] == "success", (where, promql, body)
            values = [float(v) for series in body["data"]["result"]
                      for v in ([series["value"][1]] if instant
                                else [value for _, value in series["values"]])]
            if not any(math.isfinite(v) for v in values):
                empty.append(f"{where}: {promql}")
        assert not empty, "dashboard queries that return no data:\n" + "\n".join(empty)
    finally:
        daemon.stop()
