"""The learning demo: the embedded model learns a new skill from simulated users, live.

`lifelong demo` starts the daemon (`lifelong serve`, a child process) on the embedded base model
with a schedule tuned for it, registers a test set of the new skill (`repeat`: say back a
two-digit number, which the base model cannot do) through `POST /v1/tasks`, and lets a
population of simulated users loose on the public OpenAI endpoint. Like a real application,
they check each answer themselves and report the outcome (`exact_match`, pass/fail), and now and
then correct a wrong answer. The daemon does the rest on its own: its data trigger starts a
cycle, the trainer learns, the judge compares the candidate with the champion, the gate decides,
winners are hot-swapped in. The demo only watches (`GET /admin/status`, `GET /admin/adapters/V`)
and reports, per version, the judge's accuracy on the test set and on the base skill
(retention), the gate's decision, what the users saw, and a PNG learning curve.

Why `repeat` with two digits: measured on the embedded model, LoRA SFT took it from 0% to 82%
on unseen numbers in 150 steps, with two-digit addition back to 97-99% by 250 steps. Four-digit
`echo`, three-digit repeats and rephrased sums ("What is 47 plus 38?") stayed under 20% after
300-600 steps: too slow for a demo on a laptop CPU.

Everything goes through the public HTTP API, as it would for any client of the daemon.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from lifelong.base_model import messages, training_items
from lifelong.base_model.skills import SKILLS
from lifelong.daemon.settings import Settings, load_settings, write_settings_file
from lifelong.daemon.supervisor import new_group_dying_with_parent, tail

logger = logging.getLogger(__name__)

NEW_SKILL, BASE_SKILL = "repeat", "add2"
FAMILY = f"family:{NEW_SKILL}"
# The application's own test set: every third two-digit number, never asked by the users, so
# the judge measures the skill on numbers the model was never taught.
TEST_NUMBERS = tuple(range(12, 100, 3))
ASKED_NUMBERS = tuple(n for n in range(10, 100) if n not in TEST_NUMBERS)


def repeat(number: int) -> tuple[str, str]:
    """The new skill's question and answer: 'Repeat 47.' -> '47'."""
    return f"Repeat {number}.", str(number)

# On top of the user's settings: what makes the embedded tiny model learn in minutes on a laptop
# CPU. A real model keeps its own schedule and training settings.
OVERLAY: dict[str, Any] = {
    "schedule": {"enabled": True, "interval_minutes": None, "cron": None,
                 "min_new_feedback": 600, "check_every_s": 5, "auto_promote": True},
    "training": {"recipe": ["sft"], "learning_rate": 1e-3, "warmup_steps": 20, "batch_size": 32,
                 "epochs": 20, "max_steps": 300, "device": "cpu"},
    # The test set has 30 questions: enough to show 0% -> 80% (McNemar), not small gains.
    "evals": {"max_tokens": 8, "gate": {"min_items": len(TEST_NUMBERS)}},
    # Every user interaction may train; the new skill's eval set is the registered test set.
    "database": {"heldout_fraction": 0.0},
}


@dataclass(frozen=True)
class Plan:
    minutes: float = 10.0  # the demo stops after this long, or after `cycles` judged cycles
    cycles: int = 3
    users: int = 4
    think_s: float = 0.5  # mean pause between one user's questions
    # The rest ask the base skill, as real traffic mixes both; their passed answers are what
    # keeps the base skill while the new one is learned (at 0.8, sums dropped 5 points).
    new_skill_share: float = 0.6
    correction_share: float = 0.5  # of the wrong answers, the share a user corrects
    seed: int = 0


@dataclass(frozen=True)
class Observation:
    at: float  # seconds since the users started
    skill: str
    version: str  # what answered (`x-lifelong-adapter`)
    passed: bool


@dataclass
class VersionRow:
    version: str
    decision: str
    new_skill: float | None  # the judge's held-out exact match on the new skill
    retention: float | None  # ... on the base skill's items the base model answers right
    n_new: int | None = None
    n_retention: int | None = None
    why: str = ""
    at: float | None = None  # seconds since the users started, when decided


def demo_settings(settings: Settings, data_dir: Path) -> tuple[Settings, Path]:
    """The user's settings with the demo's overlay, in `data_dir`, and the file that holds them
    (0600: it carries any secret the user's settings have)."""
    path = write_settings_file(settings, data_dir / "settings.yaml")
    data = yaml.safe_load(path.read_text())
    for section, values in OVERLAY.items():
        data[section] = _merged(data.get(section) or {}, values)
    data["data_dir"] = str(data_dir)
    # The embedded model is built once, where `lifelong base build` puts it; the demo reuses it
    # through a link (base_model.path stays empty: it is still the embedded model, whose
    # retention suite the judge knows how to make).
    (data_dir / "base_model").symlink_to(settings.base_model_path.resolve())
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    with os.fdopen(fd, "w") as file:
        yaml.safe_dump(data, file, sort_keys=False)
    return load_settings(path), path


def _merged(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overlay.items():
        out[key] = _merged(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


class DaemonProcess:
    """`lifelong serve` as a child in its own process group (Ctrl-C reaches the demo, which stops
    it in order), dying with the demo if the demo is killed."""

    def __init__(self, config: Path, settings: Settings) -> None:
        self.config = config
        self.url = f"http://{settings.gateway.host}:{settings.gateway.port}"
        self.log = settings.data_dir / "logs" / "daemon.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 600.0) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("LIFELONG_")}
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "lifelong.daemon.cli", "serve", "--config",
                 str(self.config)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env={**env, "OMP_WAIT_POLICY": "PASSIVE"}, preexec_fn=new_group_dying_with_parent,
            )
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the daemon exited with status {self.process.returncode}; "
                                   f"its log ({self.log}) ends with:\n{tail(self.log)}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the daemon was not ready after {timeout_s:.0f} s; "
                                   f"its log ({self.log}) ends with:\n{tail(self.log)}")
            time.sleep(1)

    def stop(self, timeout_s: float = 120.0) -> int | None:
        """SIGTERM (the daemon drains, flushes and stops vLLM), SIGKILL to the group after
        `timeout_s`; the exit status."""
        process = self.process
        if process is None or process.poll() is not None:
            return process.returncode if process else None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            return process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            return process.wait()


class Users:
    """Simulated users on the public endpoint, each a thread with the official `openai` client:
    ask, check the answer (exact match, as the application's own test would), report the
    outcome, sometimes correct it."""

    def __init__(self, url: str, plan: Plan) -> None:
        self.url = url
        self.plan = plan
        self.observations: list[Observation] = []
        self.failed_requests = 0
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._user, args=(n,), daemon=True,
                                          name=f"user-{n}") for n in range(plan.users)]

    def start(self) -> None:
        self.started = time.monotonic()
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def seen(self, since: float = 0.0) -> list[Observation]:
        with self._lock:
            return [o for o in self.observations if o.at >= since]

    def _user(self, n: int) -> None:
        import openai

        rng = random.Random(self.plan.seed * 1000 + n)
        sums = training_items(SKILLS[BASE_SKILL], random.Random(rng.random()))
        client = openai.OpenAI(base_url=f"{self.url}/v1", api_key="demo", max_retries=0,
                               timeout=120)
        feedback = httpx.Client(base_url=self.url, timeout=120)
        while not self._stop.is_set():
            skill = NEW_SKILL if rng.random() < self.plan.new_skill_share else BASE_SKILL
            question, expected = repeat(rng.choice(ASKED_NUMBERS)) if skill == NEW_SKILL \
                else next(sums)
            try:
                reply = client.chat.completions.with_raw_response.create(
                    model="lifelong", messages=messages(question), max_tokens=8, temperature=0)
                answer = reply.parse()
                text = (answer.choices[0].message.content or "").strip()
                passed = text == expected
                items: list[dict[str, Any]] = [{
                    "interaction_id": answer.id, "kind": "outcome", "passed": passed,
                    "reward": float(passed), "verifier": "exact_match",
                    "details": {"expected": expected}}]
                if not passed and rng.random() < self.plan.correction_share:
                    items.append({"interaction_id": answer.id, "kind": "correction",
                                  "text": expected})
                feedback.post("/v1/feedback:batch", json={"items": items}).raise_for_status()
            except Exception as exc:  # counted and shown: a hot-swap should cause none
                with self._lock:
                    self.failed_requests += 1
                logger.warning("user request failed", extra={"user": n, "error": str(exc)})
                self._stop.wait(1.0)
                continue
            with self._lock:
                self.observations.append(Observation(
                    at=time.monotonic() - self.started, skill=skill,
                    version=reply.headers.get("x-lifelong-adapter", "?"), passed=passed))
            self._stop.wait(rng.expovariate(1 / self.plan.think_s) if self.plan.think_s else 0)
        client.close()
        feedback.close()


@dataclass
class Demo:
    """One demo run against a started daemon: test set, users, watching, report."""

    url: str
    plan: Plan
    out_dir: Path
    say: Any = print
    rows: list[VersionRow] = field(default_factory=list)
    users: Users | None = None
    _admin: httpx.Client | None = None

    def register_test_set(self) -> int:
        """The test set as verifiable tasks, marked held out (never trained on); the judge's
        target suite `target:repeat`."""
        client = httpx.Client(base_url=self.url, timeout=60)
        items = [repeat(number) for number in TEST_NUMBERS]
        for question, answer in items:
            client.post("/v1/tasks", json={
                "messages": messages(question), "reference": answer, "verifier": "exact_match",
                "tags": [FAMILY], "heldout": True}).raise_for_status()
        client.close()
        return len(items)

    def run(self) -> list[VersionRow]:
        """Users on, watch until `plan.minutes` or `plan.cycles` judged cycles; users off."""
        self._admin = httpx.Client(base_url=self.url, timeout=60)
        self.users = Users(self.url, self.plan)
        self.users.start()
        deadline = time.monotonic() + self.plan.minutes * 60
        seen_cycle: str | None = None
        last_line = 0.0
        try:
            while time.monotonic() < deadline and self._judged() < self.plan.cycles:
                status = self._admin.get("/admin/status").json()
                last = status["cycle"]["last"]
                if last and last.get("finished_at") and last["started_at"] != seen_cycle:
                    seen_cycle = last["started_at"]
                    self._cycle_ended(last)
                if time.monotonic() - last_line >= 10:
                    last_line = time.monotonic()
                    self.say(self._progress(status))
                time.sleep(2)
        finally:
            self.users.stop()
            self._admin.close()
        return self.rows

    def _judged(self) -> int:
        return sum(row.decision not in ("base", "skipped", "failed", "interrupted")
                   for row in self.rows)

    def _elapsed(self) -> float:
        assert self.users is not None
        return time.monotonic() - self.users.started

    def _progress(self, status: dict[str, Any]) -> str:
        assert self.users is not None and self._admin is not None
        recent = [o for o in self.users.seen(self._elapsed() - 60) if o.skill == NEW_SKILL]
        rate = f"{sum(o.passed for o in recent) / len(recent):4.0%}" if recent else "  - "
        cycle = status["cycle"]
        if cycle["running"] and cycle["training_run"]:
            run = self._admin.get(f"/admin/training-runs/{cycle['training_run']}").json()
            progress = run.get("progress") or {}
            loss = progress.get("loss")
            doing = (f"training (step {progress.get('step', 0)}"
                     + (f", loss {loss:.3f})" if loss is not None else ")"))
        elif cycle["running"]:
            doing = "judging the candidate against the champion"
        else:
            schedule = status["schedule"]
            doing = (f"collecting feedback ({schedule['new_feedback']}/"
                     f"{schedule['min_new_feedback']} new items start a cycle)")
        return (f"[{_clock(self._elapsed())}] serving {status['serving']:<5} | users asked "
                f"{len(self.users.seen())}, last minute {NEW_SKILL} right {rate} | {doing}")

    def _cycle_ended(self, last: dict[str, Any]) -> None:
        assert self._admin is not None
        candidate = last.get("candidate")
        if candidate is None:
            self.say(f"[{_clock(self._elapsed())}] cycle ended: {last['outcome']}"
                     f" ({last.get('reason') or 'no candidate'})")
            self.rows.append(VersionRow(version="-", decision=last["outcome"], new_skill=None,
                                        retention=None, why=last.get("reason") or "",
                                        at=self._elapsed()))
            return
        detail = self._admin.get(f"/admin/adapters/{candidate}").json()
        decision = detail.get("gate_decision") or {}
        suites = {suite["suite"]: suite for suite in decision.get("suites", [])}
        target, kept = suites.get(f"target:{NEW_SKILL}"), suites.get("retention")
        if not self.rows and target and kept:  # the first judgement was against the base model
            self.rows.append(VersionRow(
                version=decision.get("against", "base"), decision="base",
                new_skill=target["champion_mean"], retention=kept["champion_mean"],
                n_new=target["n"], n_retention=kept["n"], at=0.0))
        # Promoted, or what the gate said (rejected, or not enough evidence to promote).
        said = "promoted" if last["outcome"] == "promoted" else decision.get("status")
        row = VersionRow(
            version=candidate, decision=said or last["outcome"],
            new_skill=target["candidate_mean"] if target else None,
            retention=kept["candidate_mean"] if kept else None,
            n_new=target["n"] if target else None, n_retention=kept["n"] if kept else None,
            why=(decision.get("reasons") or [last.get("reason") or ""])[0], at=self._elapsed())
        self.rows.append(row)
        self.say(f"[{_clock(self._elapsed())}] {candidate}: {row.decision}; test set "
                 f"{NEW_SKILL} {_pct(row.new_skill)}, {BASE_SKILL} kept {_pct(row.retention)}"
                 f" - {row.why}")


def table(rows: list[VersionRow]) -> str:
    """The per-version summary the demo ends with."""
    new, kept = f"test set {NEW_SKILL}", f"{BASE_SKILL} kept"
    lines = [f"{'version':<8} {'gate':<19} {new:>15} {kept:>9}  why",
             f"{'-' * 8} {'-' * 19} {'-' * 15} {'-' * 9}  {'-' * 30}"]
    for row in rows:
        lines.append(f"{row.version:<8} {row.decision:<19} {_pct(row.new_skill):>15} "
                     f"{_pct(row.retention):>9}  {row.why}")
    return "\n".join(lines)


def plot(rows: list[VersionRow], observations: list[Observation], path: Path) -> Path:
    """The learning curve: what users saw on the new skill (a moving exact-match rate, by the
    version that answered) and the judge's held-out scores at each decision."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no screen needed
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 5), dpi=110)
    window = 100
    for skill, style in ((NEW_SKILL, {"color": "tab:blue", "alpha": 0.6}),
                         (BASE_SKILL, {"color": "tab:red", "alpha": 0.4, "linestyle": ":"})):
        asked = [o for o in observations if o.skill == skill]
        if len(asked) >= 10:
            xs, ys = [], []
            for end in range(min(window, len(asked)), len(asked) + 1, 10):
                chunk = asked[max(0, end - window):end]
                xs.append(chunk[-1].at / 60)
                ys.append(sum(o.passed for o in chunk) / len(chunk))
            axis.plot(xs, ys, **style, label=f"users: {skill} answers right (last {window})")
    judged = [row for row in rows if row.new_skill is not None and row.at is not None]
    axis.plot([r.at / 60 for r in judged], [r.new_skill for r in judged], "o-",
              color="tab:green", label=f"judge: {NEW_SKILL} test set (per version)")
    axis.plot([r.at / 60 for r in judged], [r.retention for r in judged], "s--",
              color="tab:orange", label=f"judge: {BASE_SKILL} kept (retention)")
    for row in judged:
        axis.annotate(f"{row.version}\n{row.decision}", (row.at / 60, row.new_skill),
                      textcoords="offset points", xytext=(0, 8), ha="center", fontsize=8)
    axis.set_xlabel("minutes since the users started")
    axis.set_ylabel("exact match")
    axis.set_ylim(-0.02, 1.1)
    axis.set_title("lifelong demo: the embedded model learns a new skill from its users")
    axis.grid(alpha=0.3)
    axis.legend(loc="lower right", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, bbox_inches="tight")
    plt.close(figure)
    return path


def fresh_dir(path: Path) -> Path:
    """The demo's own data folder, emptied: each demo starts from the base model."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


@contextlib.contextmanager
def running_daemon(config: Path, settings: Settings) -> Iterator[DaemonProcess]:
    daemon = DaemonProcess(config, settings)
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60):02d}:{int(seconds % 60):02d}"
