"""The learning demo: the real base model learns a behaviour it lacks from simulated users, live.

`lifelong demo` starts the daemon (`lifelong serve`, a child process) on the base model (the
embedded SmolLM2-135M-Instruct, imported on first use, or the folder in `base_model.path`) with
a schedule and a training recipe sized for a laptop CPU (OVERLAY), registers the application's
own test set through `POST /v1/tasks` (40 fixed sums the users never ask, held out, checked by
`exact_match`), and lets simulated users loose on the public OpenAI endpoint. Most of them ask
"What is 27 + 82? Answer with the number only."; the base model says "27 + 82 = 109", which
their application's check (the bare number) fails, so they report the outcome (`exact_match`,
pass/fail) and correct the answer. The others ask everyday questions and keep the answers (a
rating). The daemon does the rest on its own: its data trigger starts a cycle, the trainer
learns a LoRA adapter from the corrections (with the base model's own answers to everyday
prompts replayed beside them, `training.anchor_fraction`), the judge compares the candidate
with the champion on the test set and on the general suite (how alike its answers to everyday
prompts stay to the base model's; `evals.general_suite`), the gate decides, winners are
hot-swapped in while the users keep asking. The demo only watches (`GET /admin/status`,
`GET /admin/adapters/V`) and reports, per judged version, the judge's exact match on the test
set, its general-suite similarity and that suite's outcome, the gate's decision, what the users
saw, and a PNG learning curve.

Pacing: on 2 cores a training step (batch 16 of sums) took about 4.7 s alone and 13 s with vLLM
answering users at the same time, so while a cycle runs the users think longer
(`Plan.learning_think_s`, a minute on average): they still ask, a few questions a minute, but
leave the cores to the trainer and the judge, and come back as soon as the cycle ends.

Why this behaviour: measured with transformers + peft on this model, 36 SFT steps on 180
corrected sums took held-out sums from ~0% to 80%, and without the anchors they also turned
"What is the capital of France?" into "14766666": the general suite is what shows that.

Measured here (2 cores; times from `lifelong demo` starting, the one-time import not counted):

    run  trigger  first cycle   training         judge    promoted  test set sums  general  failed
    1    200      at 2:11       34 steps, 6:00*  5:29**   15:07     0% -> 42.5%    0.549    1
    2    200      at 4:00       34 steps, 4:44   3:45     12:38     0% -> 35.0%    0.529    0
    3    240      at 4:05       38 steps, 7:51   5:44     17:53     0% -> 47.5%    0.540    4
    4    240      at 2:00       40 steps, ~5:40  ~2:10    10:46***  0% -> 45.0%    0.542    0
    (* anchors answered by the trainer itself, 72 s more; ** the general suite frozen first,
    1:40 of it: since then the daemon asks both at start-up, while the users' first questions
    wait. Run 3 shared the 2 cores with another training job, pip and pytest for most of its
    cycle; its failed requests are 504s: users' questions behind the judge's 64 eval requests
    on vLLM's one core for more than vllm.request_timeout_s. Run 1 had evals.max_tokens 48 and
    users pausing 20 s during the cycle; run 2 users that did not come back until their pause
    ended; run 3 is the overlay as it is. *** run 4 with the canary: approved at 9:53, it
    answered half of the users for 53 s, until 22 of its outcomes against the champion's 43
    showed it no worse (59% of their sums right against 0%).)

Every candidate so far was promoted at the first cycle; the general suite (similarity of the
answers to everyday prompts to the base model's, floor `evals.general_floor` 0.3) held at
0.53-0.55. The users' own success on sums went from 0% to 40-50% within a minute of the swap.

Everything goes through the public HTTP API, as it would for any client of the daemon. The users
(the official `openai` client) and the PNG (matplotlib) need the `demo` extra
(`pip install 'lifelong[demo]'`); the core install leaves them out.

Past 400 lines on purpose: one story read top to bottom (plan, settings, users, watching, report),
whose parts share the plan's names and nothing else uses.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import yaml

from lifelong.daemon.serve_process import ServeProcess, serving
from lifelong.daemon.settings import Settings, load_settings, write_settings_file
from lifelong.evals.general import SUITE_NAME as GENERAL_SUITE
from lifelong.evals.general import chat

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

SKILL, EVERYDAY = "sums", "everyday"  # what the users ask: the new behaviour, everything else
TARGET_SUITE = f"target:{SKILL}"  # the judge's suite of the test set's family
PAIRS = tuple((a, b) for a in range(10, 100) for b in range(10, 100))
# The application's own test set: 40 fixed pairs, never asked by the users, so the judge
# measures the behaviour on sums the model was never taught. 40 items show 0% -> 30% and more
# beyond doubt (exact McNemar, p < 0.001: the gate's bar below gate.min_items), not small gains.
TEST_PAIRS = tuple(sorted(random.Random(19).sample(PAIRS, 40)))
_TESTED = frozenset(TEST_PAIRS)
# What the other users ask: everyday questions, none of them in the general suite's prompt file
# (lifelong/evals/general_prompts.txt), so their kept answers never grade themselves.
EVERYDAY_PROMPTS = (
    "How do I clean a cast iron pan?",
    "How many legs does a spider have?",
    "Can you recommend a good book for a long train ride?",
    "What should I pack for a weekend in the mountains?",
    "Why is the sky blue?",
    "What does a librarian do?",
    "How can I keep my houseplants alive?",
    "What do octopuses eat?",
    "How do I write a polite email to my landlord?",
    "What is a good name for a goldfish?",
    "How do I fix a squeaky door?",
    "How does a knight move in chess?",
    "What is the difference between a violin and a cello?",
    "How long should I boil an egg?",
    "Who was Marie Curie?",
    "How do bees make honey?",
    "What is the tallest mountain in the world?",
    "How do I remove a coffee stain from a shirt?",
    "What makes a good team leader?",
    "Why do cats purr?",
    "How do I teach my dog to sit?",
    "What is a good stretch for a stiff back?",
)


END_USERS = 10  # per user thread


def sum_question(a: int, b: int) -> tuple[str, str]:
    """The new behaviour's question and the answer the users' check wants: the bare sum."""
    return f"What is {a} + {b}? Answer with the number only.", str(a + b)


def asked_pair(rng: random.Random) -> tuple[int, int]:
    """A pair a user asks: any two-digit pair outside the test set."""
    while (pair := rng.choice(PAIRS)) in _TESTED:
        pass
    return pair


# On top of the user's settings: what makes SmolLM2-135M learn the behaviour within minutes on a
# 2-core CPU, beside live users. Measured: 36 steps of batch 16 at lr 1e-3 learned it; max_steps
# bounds a run (about 13 s a step on 2 cores beside vLLM) when the feedback grows.
OVERLAY: dict[str, Any] = {
    "schedule": {"enabled": True, "interval_minutes": None, "cron": None,
                 "min_new_feedback": 240, "check_every_s": 5, "auto_promote": True},
    "training": {"recipe": ["sft"], "learning_rate": 1e-3, "warmup_steps": 5, "batch_size": 16,
                 "epochs": 2, "max_steps": 40, "max_seq_len": 256, "anchor_fraction": 0.5},
    # Sums need a few tokens; everyday answers are compared on their first 32 (vLLM on one core
    # took 3 min 48 s to answer the 2 x 182 judge items at 48 tokens).
    "evals": {"max_tokens": 32, "general_suite": True},
    # Every user interaction may train; the behaviour's eval set is the registered test set.
    "database": {"heldout_fraction": 0.0},
    # The gate's approval starts a canary on half the users; their outcomes on the sums decide it
    # within a minute or two rather than the production default's half hour at least.
    "promotion": {"canary": {"share": 0.5, "min_minutes": 0, "check_every_s": 5,
                             "min_outcomes": 20}},
}


@dataclass(frozen=True)
class Plan:
    # The demo stops `after_promotion_s` after its `promotions`-th promotion, after `cycles`
    # judged cycles, or at `minutes` (then after the cycle in progress is reported).
    minutes: float = 20.0
    cycles: int = 3
    promotions: int = 1
    after_promotion_s: float = 60.0  # users asking the new champion, for the curve
    users: int = 4
    think_s: float = 0.5  # mean pause between one user's questions
    learning_think_s: float = 60.0  # ... while a cycle runs (training beside users: ~3x slower)
    # The rest ask everyday questions and keep the answers, as real traffic mixes both.
    sums_share: float = 0.75
    correction_share: float = 1.0  # of the wrong answers, the share a user corrects
    seed: int = 0


@dataclass(frozen=True)
class Observation:
    at: float  # seconds since the users started
    skill: str  # SKILL or EVERYDAY
    version: str  # what answered (`x-lifelong-adapter`)
    passed: bool | None  # the users' check (sums only)


@dataclass
class VersionRow:
    version: str
    decision: str  # base, promoted, rejected, not_enough_evidence, or a cycle's outcome
    new_skill: float | None  # the judge's exact match on the test set
    general: float | None  # ... mean similarity to the base model's answers (general suite)
    general_outcome: str | None = None  # the gate on the general suite: held, regressed, ...
    n_new: int | None = None
    n_general: int | None = None
    why: str = ""
    at: float | None = None  # seconds since the users started, when decided


def demo_settings(settings: Settings, data_dir: Path) -> tuple[Settings, Path]:
    """The user's settings with the demo's overlay, in `data_dir`, on the user's base model
    folder (the embedded one, imported once, or `base_model.path`), and the file that holds them
    (0600: it carries any secret the user's settings have)."""
    path = write_settings_file(settings, data_dir / "settings.yaml")
    data = yaml.safe_load(path.read_text())
    for section, values in OVERLAY.items():
        data[section] = _merged(data.get(section) or {}, values)
    data["data_dir"] = str(data_dir)
    # The demo's data folder is emptied at each demo; the model stays where it was imported.
    data["base_model"] = {**(data.get("base_model") or {}),
                          "path": str(settings.base_model_path.resolve())}
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    with os.fdopen(fd, "w") as file:
        yaml.safe_dump(data, file, sort_keys=False)
    return load_settings(path), path


def _merged(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overlay.items():
        out[key] = _merged(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


class Users:
    """Simulated users on the public endpoint, each a thread with the official `openai` client.
    Most ask sums, check the answer (the bare number, as their application's own test would),
    report the outcome and correct a wrong answer; the rest ask everyday questions and keep the
    answer (a rating of 1). While `learning` is set they think longer."""

    def __init__(self, url: str, plan: Plan) -> None:
        self.url = url
        self.plan = plan
        self.observations: list[Observation] = []
        self.failed_requests = 0
        self.started = time.monotonic()
        self.learning = threading.Event()  # set while the daemon runs a cycle
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
        client = openai.OpenAI(base_url=f"{self.url}/v1", api_key="demo", max_retries=0,
                               timeout=120)
        feedback = httpx.Client(base_url=self.url, timeout=120)
        while not self._stop.is_set():
            if rng.random() < self.plan.sums_share:
                skill, max_tokens = SKILL, 16
                question, expected = sum_question(*asked_pair(rng))
            else:
                skill, max_tokens = EVERYDAY, 48
                question, expected = rng.choice(EVERYDAY_PROMPTS), None
            try:
                # Each thread speaks for many end users (the OpenAI `user` field): a canary
                # sends a share of them, each for good, to the candidate.
                reply = client.chat.completions.with_raw_response.create(
                    model="lifelong", messages=chat(question), max_tokens=max_tokens,
                    temperature=0, user=f"user-{n}-{rng.randrange(END_USERS)}")
                answer = reply.parse()
                text = (answer.choices[0].message.content or "").strip()
                passed = None if expected is None else text == expected
                items = self._feedback(answer.id, expected, passed, rng)
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
            self._think(rng)
        client.close()
        feedback.close()

    def _think(self, rng: random.Random) -> None:
        """A pause between two questions: `think_s` on average, `learning_think_s` while the
        daemon learns; a long pause ends as soon as it stops (the users come back at once)."""
        learning = self.learning.is_set()
        mean = self.plan.learning_think_s if learning else self.plan.think_s
        until = time.monotonic() + (rng.expovariate(1 / mean) if mean else 0.0)
        while not self._stop.is_set() and (left := until - time.monotonic()) > 0:
            if learning and not self.learning.is_set():
                return
            self._stop.wait(min(left, 0.5))

    def _feedback(self, interaction_id: str, expected: str | None, passed: bool | None,
                  rng: random.Random) -> list[dict[str, Any]]:
        if expected is None:  # an everyday answer, read and kept
            return [{"interaction_id": interaction_id, "kind": "rating", "score": 1}]
        items: list[dict[str, Any]] = [{
            "interaction_id": interaction_id, "kind": "outcome", "passed": passed,
            "reward": float(bool(passed)), "verifier": "exact_match",
            "details": {"expected": expected}}]
        if not passed and rng.random() < self.plan.correction_share:
            items.append({"interaction_id": interaction_id, "kind": "correction",
                          "text": expected})
        return items


@dataclass
class Demo:
    """One demo run against a started daemon: test set, users, watching, report."""

    url: str
    plan: Plan
    out_dir: Path
    say: Any = print
    rows: list[VersionRow] = field(default_factory=list)
    users: Users | None = None
    promoted_at: dict[str, float] = field(default_factory=dict)  # version -> seconds, as seen
    _admin: httpx.Client | None = None
    _seen_cycle: str | None = None
    _seen_canary: int | None = None

    def register_test_set(self) -> int:
        """The test set as verifiable tasks, marked held out (never trained on); the judge's
        target suite `target:sums`."""
        client = httpx.Client(base_url=self.url, timeout=60)
        for pair in TEST_PAIRS:
            question, answer = sum_question(*pair)
            client.post("/v1/tasks", json={
                "messages": chat(question), "reference": answer, "verifier": "exact_match",
                "tags": [f"family:{SKILL}"], "heldout": True}).raise_for_status()
        client.close()
        return len(TEST_PAIRS)

    def run(self) -> list[VersionRow]:
        """Users on; watch until the plan says stop (Plan); users off. Every gate decision
        becomes a row, whenever it is seen, and a last look after the users stop catches one
        made since the previous look."""
        self._admin = httpx.Client(base_url=self.url, timeout=60)
        self.users = Users(self.url, self.plan)
        self.users.start()
        deadline = time.monotonic() + self.plan.minutes * 60
        last_line, waiting = 0.0, False
        try:
            while True:
                status = self.watch()
                running = status["cycle"]["running"]
                if self._done():
                    break
                if time.monotonic() >= deadline:
                    if not running:
                        break
                    if not waiting:
                        waiting = True
                        self.say(f"[{clock(self._elapsed())}] time is up; waiting for the "
                                 "cycle in progress to be judged (Ctrl-C ends now)")
                if time.monotonic() - last_line >= 10:
                    last_line = time.monotonic()
                    self.say(self._progress(status))
                time.sleep(2)
        finally:
            self.users.stop()
            with contextlib.suppress(httpx.HTTPError):
                self.watch()
            self._admin.close()
        return self.rows

    def watch(self) -> dict[str, Any]:
        """One look at `GET /admin/status`: new decisions, promotions and ended cycles become
        rows; the users think longer while a cycle runs. The status."""
        assert self._admin is not None and self.users is not None
        status = self._admin.get("/admin/status").json()
        (self.users.learning.set if status["cycle"]["running"] else self.users.learning.clear)()
        known = {row.version for row in self.rows}
        for decision in reversed(status["decisions"]):  # oldest first
            if decision["candidate"] not in known:
                self._decided(decision)
        trial = (status.get("canary") or {}).get("open")
        if trial and trial["kind"] == "canary" and trial["id"] != self._seen_canary:
            self._seen_canary = trial["id"]
            self.say(f"[{clock(self._elapsed())}] canary: {trial['version']} now answers "
                     f"{trial['share']:.0%} of the users; their outcomes decide")
        for promotion in reversed(status["promotions"]):
            if promotion["kind"] == "promote" and promotion["to"] not in self.promoted_at:
                self._promoted(promotion["to"])
        last = status["cycle"]["last"]
        if last and last.get("finished_at") and last["started_at"] != self._seen_cycle:
            self._seen_cycle = last["started_at"]
            if last.get("candidate") not in {row.version for row in self.rows}:
                self._ended_unjudged(last)
        return status

    def _done(self) -> bool:
        if self._judged() >= self.plan.cycles:
            return True
        if len(self.promoted_at) < self.plan.promotions:
            return False
        nth = sorted(self.promoted_at.values())[self.plan.promotions - 1]
        return self._elapsed() - nth >= self.plan.after_promotion_s

    def _judged(self) -> int:
        return sum(row.decision in ("promoted", "approved", "rejected", "not_enough_evidence")
                   for row in self.rows)

    def _elapsed(self) -> float:
        assert self.users is not None
        return time.monotonic() - self.users.started

    def _progress(self, status: dict[str, Any]) -> str:
        assert self.users is not None and self._admin is not None
        recent = [o for o in self.users.seen(self._elapsed() - 60) if o.skill == SKILL]
        rate = f"{sum(bool(o.passed) for o in recent) / len(recent):4.0%}" if recent else "  - "
        cycle = status["cycle"]
        if cycle["running"] and cycle["training_run"]:
            run = self._admin.get(f"/admin/training-runs/{cycle['training_run']}").json()
            progress = run.get("progress") or {}
            loss = progress.get("loss")
            doing = (f"training (step {progress.get('step', 0)}"
                     + (f", loss {loss:.3f})" if loss is not None else ")")
                     + "; users think longer")
        elif cycle["running"]:
            doing = "judging the candidate against the champion; users think longer"
        elif (trial := (status.get("canary") or {}).get("open")) and trial["kind"] == "canary":
            doing = f"canary of {trial['version']}: " + (
                (trial.get("stats") or {}).get("summary") or "counting the users' outcomes")
        else:
            schedule = status["schedule"]
            doing = (f"collecting feedback ({schedule['new_feedback']}/"
                     f"{schedule['min_new_feedback']} new items start a cycle)")
        return (f"[{clock(self._elapsed())}] serving {status['serving']:<5} | users asked "
                f"{len(self.users.seen())}, last minute {SKILL} right {rate} | {doing}")

    def _decided(self, decision: dict[str, Any]) -> None:
        assert self._admin is not None
        candidate = decision["candidate"]
        detail = self._admin.get(f"/admin/adapters/{candidate}").json()
        suites = {suite["suite"]: suite
                  for suite in (detail.get("gate_decision") or {}).get("suites", [])}
        target, general = suites.get(TARGET_SUITE), suites.get(GENERAL_SUITE)
        if decision["against"] == "base" and not any(r.decision == "base" for r in self.rows):
            self.rows.insert(0, VersionRow(  # the champion of the first judgement: the base
                version="base", decision="base",
                new_skill=target["champion_mean"] if target else None,
                general=general["champion_mean"] if general else None,
                n_new=target["n"] if target else None,
                n_general=general["n"] if general else None, at=0.0))
        row = VersionRow(
            version=candidate, decision=decision["status"],
            new_skill=target["candidate_mean"] if target else None,
            general=general["candidate_mean"] if general else None,
            general_outcome=general["outcome"] if general else None,
            n_new=target["n"] if target else None, n_general=general["n"] if general else None,
            why=decision["why"], at=self._elapsed())
        self.rows.append(row)
        self.say(f"[{clock(self._elapsed())}] {candidate}: {row.decision}; test set {SKILL} "
                 f"{_pct(row.new_skill)}, general suite {_pct(row.general)} "
                 f"({row.general_outcome or '-'}) - {row.why}")

    def _promoted(self, version: str) -> None:
        self.promoted_at[version] = self._elapsed()
        for row in self.rows:
            if row.version == version:
                row.decision, row.at = "promoted", self.promoted_at[version]
        self.say(f"[{clock(self._elapsed())}] {version} promoted: the users are now served by it")
        assert self._admin is not None
        trials = self._admin.get(f"/admin/adapters/{version}").json().get("trials") or []
        if decided := next((t for t in trials if t["kind"] == "canary"), None):
            self.say(f"    canary on {decided['share']:.0%} of the users: {decided['reason']}")

    def _ended_unjudged(self, last: dict[str, Any]) -> None:
        """A cycle that ended without a gate decision: no candidate (skipped, failed) or one the
        judge could not judge."""
        why = last.get("reason") or "no candidate"
        self.rows.append(VersionRow(version=last.get("candidate") or "-",
                                    decision=last["outcome"], new_skill=None, general=None,
                                    why=why, at=self._elapsed()))
        self.say(f"[{clock(self._elapsed())}] cycle ended: {last['outcome']} ({why})")


def table(rows: list[VersionRow]) -> str:
    """The per-version summary the demo ends with: every version the judge saw, in order."""
    new, general = f"test set {SKILL}", "general suite"
    lines = [f"{'version':<8} {'gate':<19} {new:>13} {general:>18}  why",
             f"{'-' * 8} {'-' * 19} {'-' * 13} {'-' * 18}  {'-' * 30}"]
    for row in rows:
        kept = _pct(row.general) + (f" {row.general_outcome}" if row.general_outcome else "")
        lines.append(f"{row.version:<8} {row.decision:<19} {_pct(row.new_skill):>13} "
                     f"{kept:>18}  {row.why}")
    return "\n".join(lines)


def served(rows: list[VersionRow], until: float) -> list[tuple[float, VersionRow]]:
    """(seconds, version) from when each served version took over: the base, then each
    promoted one; the last lasts `until`."""
    steps = sorted(((row.at or 0.0, row) for row in rows if row.decision in ("base", "promoted")),
                   key=lambda step: step[0])
    return [*steps, (until, steps[-1][1])] if steps else []


def plot(rows: list[VersionRow], observations: list[Observation], path: Path) -> Path:
    """The learning curve (`learning_curve`) as a PNG at `path`."""
    figure = learning_curve(rows, observations)
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, bbox_inches="tight")
    plt.close(figure)
    return path


def learning_curve(rows: list[VersionRow], observations: list[Observation]) -> Figure:
    """What users saw on the new behaviour (a moving exact-match rate), the served version's
    test-set and general-suite scores as steps (a promotion swaps at once), and every judged
    candidate's scores where the gate decided, whatever it decided."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no screen needed
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 5), dpi=110)
    window = 40
    asked = [o for o in observations if o.skill == SKILL]
    if len(asked) >= 10:
        xs, ys = [], []
        for end in range(min(window, len(asked)), len(asked) + 1, 5):
            chunk = asked[max(0, end - window):end]
            xs.append(chunk[-1].at / 60)
            ys.append(sum(bool(o.passed) for o in chunk) / len(chunk))
        axis.plot(xs, ys, color="tab:blue", alpha=0.6,
                  label=f"users: {SKILL} answered right (last {window})")
    until = max([o.at for o in observations] + [r.at or 0.0 for r in rows] + [0.0])
    # A served version without a score is a gap from its promotion on, not the previous
    # version's step drawn on past it.
    steps = served(rows, until)
    if any(row.new_skill is not None or row.general is not None for _, row in steps):
        minutes = [at / 60 for at, _ in steps]
        nan = float("nan")  # no score: a gap in the line
        axis.step(minutes, [nan if r.new_skill is None else r.new_skill for _, r in steps],
                  where="post", color="tab:green", label=f"judge: served version, {SKILL} test set")
        axis.step(minutes, [nan if r.general is None else r.general for _, r in steps],
                  where="post", linestyle="--", color="tab:orange",
                  label="judge: served version, general suite")
    marks = {"promoted": ("o", "tab:green"), "rejected": ("x", "tab:red")}
    for row in rows:
        # Every judged candidate, with whichever score the judge gave it (cycles that ended
        # unjudged have none, and are in the table only).
        if row.decision == "base" or row.at is None or (row.new_skill is None
                                                         and row.general is None):
            continue
        marker, colour = marks.get(row.decision, ("D", "tab:gray"))
        if row.new_skill is not None:
            axis.plot([row.at / 60], [row.new_skill], marker=marker, color=colour, linestyle="")
        if row.general is not None:
            axis.plot([row.at / 60], [row.general], marker="s", color="tab:orange",
                      fillstyle="none", linestyle="")
        score = row.new_skill if row.new_skill is not None else row.general
        axis.annotate(f"{row.version}\n{row.decision}", (row.at / 60, score),
                      textcoords="offset points", xytext=(0, -22), ha="center", fontsize=8)
    axis.set_xlabel("minutes since the users started")
    axis.set_ylabel("exact match (sums) / similarity to the base model (general)")
    axis.set_ylim(-0.02, 1.12)
    axis.set_title("lifelong demo: the model learns bare-number sums from its users")
    axis.grid(alpha=0.3)
    axis.legend(loc="center left", fontsize=8)
    return figure


def fresh_dir(path: Path) -> Path:
    """The demo's own data folder, emptied: each demo starts from the base model."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def running_daemon(config: Path, settings: Settings) -> contextlib.AbstractContextManager[ServeProcess]:
    """The demo's daemon for a `with` block: `lifelong serve` on the demo's settings file alone
    (this shell's LIFELONG_* variables would override it), logging into the demo's folder."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("LIFELONG_")}
    return serving(config, f"http://{settings.gateway.host}:{settings.gateway.port}",
                   settings.data_dir / "logs" / "daemon.log",
                   env={**env, "OMP_WAIT_POLICY": "PASSIVE"}, timeout_s=600.0)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def clock(seconds: float) -> str:
    return f"{int(seconds // 60):02d}:{int(seconds % 60):02d}"
