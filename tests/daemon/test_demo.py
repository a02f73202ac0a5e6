"""The demo's parts that need no daemon: its settings overlay, its test-set split, its users'
feedback, how it reads the daemon's decisions, its report. (The loop it shows runs end to end in
test_real_model.py; `make demo` runs the demo itself.)"""

from __future__ import annotations

import math
import random
import threading
import time
from pathlib import Path

import httpx

from lifelong.daemon import demo
from lifelong.daemon.judge import retention_source
from lifelong.daemon.settings import Settings
from lifelong.evals.general import PROMPTS_FILE


def test_the_demo_settings_overlay_the_users_and_keep_their_base_model(tmp_path: Path):
    mine = Settings(data_dir=tmp_path / "data", gateway={"port": 8123})
    where = demo.fresh_dir(tmp_path / "data" / "demo")
    settings, path = demo.demo_settings(mine, where)
    assert path.stat().st_mode & 0o777 == 0o600
    assert settings.data_dir == where and settings.gateway.port == 8123  # the user's own values
    # The model imported once into the user's data folder, not into the demo's (emptied).
    assert settings.base_model_path == (tmp_path / "data" / "base_model").resolve()
    assert settings.schedule.enabled and 150 <= settings.schedule.min_new_feedback <= 250
    training = settings.training
    assert (training.recipe, training.learning_rate, training.batch_size, training.epochs) == (
        ["sft"], 1e-3, 16, 2)
    assert training.max_steps is not None and training.max_steps <= 40
    assert training.anchor_fraction == 0.5
    assert settings.evals.general_suite and settings.evals.max_tokens <= 48
    assert settings.database.heldout_fraction == 0.0
    assert retention_source(settings) is None  # a chat model: the general suite guards it


def test_the_demo_runs_on_a_model_folder_of_the_users_own(tmp_path: Path):
    mine = Settings(data_dir=tmp_path / "data", base_model={"path": tmp_path / "my-model"})
    settings, _ = demo.demo_settings(mine, demo.fresh_dir(tmp_path / "data" / "demo"))
    assert settings.base_model_path == (tmp_path / "my-model").resolve()


def test_the_users_never_ask_a_test_set_sum():
    assert len(demo.TEST_PAIRS) == len(set(demo.TEST_PAIRS)) == 40
    assert all(10 <= n <= 99 for pair in demo.TEST_PAIRS for n in pair)
    rng = random.Random(0)
    assert not {demo.asked_pair(rng) for _ in range(5000)} & set(demo.TEST_PAIRS)
    assert demo.sum_question(27, 82) == ("What is 27 + 82? Answer with the number only.", "109")


def test_the_everyday_questions_are_not_the_general_suites_prompts():
    shipped = {line.strip().lower() for line in PROMPTS_FILE.read_text().splitlines()}
    assert len(set(demo.EVERYDAY_PROMPTS)) >= 20
    assert not {prompt.lower() for prompt in demo.EVERYDAY_PROMPTS} & shipped


def test_users_report_a_wrong_sum_and_correct_it_and_keep_everyday_answers():
    users = demo.Users("http://127.0.0.1:9", demo.Plan(correction_share=1.0))
    rng = random.Random(0)
    wrong = users._feedback("chatcmpl-1", "109", False, rng)
    assert [item["kind"] for item in wrong] == ["outcome", "correction"]
    assert (wrong[0]["passed"], wrong[1]["text"]) == (False, "109")
    assert [item["kind"] for item in users._feedback("chatcmpl-2", "109", True, rng)] == ["outcome"]
    assert users._feedback("chatcmpl-3", None, None, rng) == [
        {"interaction_id": "chatcmpl-3", "kind": "rating", "score": 1}]


def test_a_user_thinking_longer_while_the_daemon_learns_comes_back_when_it_stops():
    users = demo.Users("http://127.0.0.1:9", demo.Plan(think_s=0.0, learning_think_s=3600.0))
    users.learning.set()
    threading.Timer(0.3, users.learning.clear).start()
    started = time.monotonic()
    users._think(random.Random(0))
    assert time.monotonic() - started < 5


def suites(target: float, general: float, outcome: str = "held") -> list[dict]:
    return [{"suite": "target:sums", "kind": "target", "outcome": "improved", "n": 40,
             "candidate_mean": target, "champion_mean": 0.0, "difference": target},
            {"suite": "general", "kind": "retention", "outcome": outcome, "n": 120,
             "candidate_mean": general, "champion_mean": 1.0, "difference": general - 1.0}]


def test_every_judged_candidate_becomes_a_row_even_when_decided_between_two_looks():
    # The daemon is another process; its status and adapter answers are what the demo reads.
    status = {
        "serving": "v0002", "cycle": {"running": True, "training_run": 3, "last": None},
        "decisions": [  # newest first, as GET /admin/status lists them
            {"candidate": "v0002", "against": "base", "status": "approved", "why": "approved"},
            {"candidate": "v0001", "against": "base", "status": "rejected",
             "why": "rejected: regressed beyond tolerance in general"}],
        "promotions": [{"kind": "promote", "from": "base", "to": "v0002"}],
    }
    adapters = {"v0001": suites(0.6, 0.7, "regressed"), "v0002": suites(0.85, 0.95)}

    def daemon(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/admin/status":
            return httpx.Response(200, json=status)
        version = request.url.path.rsplit("/", 1)[-1]
        return httpx.Response(200, json={"gate_decision": {"suites": adapters[version]}})

    show = demo.Demo(url="http://demo", plan=demo.Plan(), out_dir=Path("."), say=lambda _: None)
    show.users = demo.Users(show.url, show.plan)
    show._admin = httpx.Client(base_url=show.url, transport=httpx.MockTransport(daemon))
    show.watch()
    assert [(r.version, r.decision) for r in show.rows] == [
        ("base", "base"), ("v0001", "rejected"), ("v0002", "promoted")]
    assert (show.rows[0].new_skill, show.rows[0].general) == (0.0, 1.0)
    assert (show.rows[1].general, show.rows[1].general_outcome) == (0.7, "regressed")
    assert set(show.promoted_at) == {"v0002"}
    assert show.users.learning.is_set()  # a cycle runs: the users think longer
    show.watch()  # seen once: no second row
    assert len(show.rows) == 3


def test_the_report_is_a_table_and_a_png_with_the_served_version_as_steps(tmp_path: Path):
    rows = [demo.VersionRow("base", "base", 0.0, 1.0, at=0.0),
            demo.VersionRow("v0001", "not_enough_evidence", 0.2, 0.97, "held",
                            why="not enough evidence", at=150.0),
            demo.VersionRow("v0002", "promoted", 0.9, 0.95, "held", why="approved: improved",
                            at=400.0)]
    seen = [demo.Observation(at=float(n * 5), skill=demo.SKILL, version="base", passed=n > 80)
            for n in range(100)]
    lines = demo.table(rows).splitlines()
    assert lines[2].split()[:4] == ["base", "base", "0.0%", "100.0%"]
    assert lines[3].split()[:5] == ["v0001", "not_enough_evidence", "20.0%", "97.0%", "held"]
    assert lines[4].split()[:5] == ["v0002", "promoted", "90.0%", "95.0%", "held"]
    # The base serves until the promotion, then v0002 at once, to the end of the run.
    assert [(at, row.version) for at, row in demo.served(rows, until=495.0)] == [
        (0.0, "base"), (400.0, "v0002"), (495.0, "v0002")]
    png = demo.plot(rows, seen, tmp_path / "curve.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_png_marks_every_judged_candidate_and_draws_the_served_version_as_steps():
    rows = [demo.VersionRow("base", "base", 0.0, 1.0, at=0.0),
            demo.VersionRow("v0001", "rejected", 0.6, 0.7, "regressed", at=150.0),  # the first
            # Judged without a test-set score (the judge had none), kept on the general suite.
            demo.VersionRow("v0002", "not_enough_evidence", None, 0.97, "held", at=250.0),
            demo.VersionRow("v0003", "promoted", 0.9, 0.95, "held", at=400.0),
            demo.VersionRow("v0004", "promoted", None, 0.9, "held", at=450.0)]
    seen = [demo.Observation(at=float(n * 5), skill=demo.SKILL, version="base", passed=n > 80)
            for n in range(100)]
    figure = demo.learning_curve(rows, seen)
    axis = figure.axes[0]
    assert {text.get_text() for text in axis.texts} == {
        "v0001\nrejected", "v0002\nnot_enough_evidence", "v0003\npromoted", "v0004\npromoted"}
    served = {line.get_label(): line for line in axis.get_lines()
              if line.get_label().startswith("judge: served version")}
    assert [line.get_drawstyle() for line in served.values()] == ["steps-post", "steps-post"]
    test_set = served[f"judge: served version, {demo.SKILL} test set"]
    assert list(test_set.get_xdata()) == [0.0, 400 / 60, 450 / 60, 495 / 60]
    # v0004 has no test-set score: a gap from its promotion on, not v0003's 90% drawn on.
    assert list(test_set.get_ydata()[:2]) == [0.0, 0.9]
    assert all(math.isnan(y) for y in test_set.get_ydata()[2:])
    general = served["judge: served version, general suite"]
    assert list(general.get_ydata()) == [1.0, 0.95, 0.9, 0.9]
    import matplotlib.pyplot as plt

    plt.close(figure)
