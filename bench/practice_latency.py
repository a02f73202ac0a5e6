"""User latency while the daemon practises (GRPO), with and without making way for users.

For each mode, a real daemon (its own vLLM) on `--model`, train-split add2 tasks to practise on,
and `--users` simulated users (the official `openai` client) who each ask a question, read the
answer, and think for a random while (exponential, mean `--think` s) before the next. First
`--idle` seconds of users alone, then a GRPO run (`POST /admin/train {"methods": ["grpo"]}`)
while they go on; the run's requests are counted from its start to its end as the store has
them. Modes, side by side in one run (the machine is noisy):

- yield: the defaults: the GRPO process niced, pausing while users are served and until they
  have been quiet for 1 s, one rollout request in flight;
- eager: yields too, but resumes after 250 ms of quiet with two requests in flight;
- no-yield: `training.grpo.yield_to_users: false`, nice 0: practice at full speed.

Prints p50/p90/p99 latency idle and during practice, their ratios (the target: p50 during
practice within 1.2x of idle), and how long the run took and paused.

    .venv/bin/python bench/practice_latency.py --model lifelong-data/base_model

Measured here (tiny test model, 2 cores, one run): p50 / p90 during practice over idle: yield
0.95x / 1.17x (run 151 s, 128 s paused), eager 1.16x / 2.49x (37 s), no-yield 1.31x / 2.08x
(24 s); 0 failed requests.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx
import openai

sys.path.insert(0, str(Path(__file__).parent))
from daemon_process import start_daemon  # noqa: E402

from lifelong.base_model import SKILLS, messages, training_items  # noqa: E402

MODES = {
    "yield": {},  # the defaults: quiet_ms 1000, concurrency 1, nice 19
    "eager": {"quiet_ms": 250, "concurrency": 2},  # yields, but resumes sooner
    "no-yield": {"yield_to_users": False, "nice": 0},
}


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 \
        else values[0]


class Users:
    """Threads asking questions with think time; (wall start, seconds) per answered request."""

    def __init__(self, url: str, count: int, think: float, seed: int) -> None:
        self.client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0,
                                    timeout=120)
        self.think, self.stop = think, threading.Event()
        self.samples: list[tuple[float, float]] = []
        self.failed = 0
        self.threads = [threading.Thread(target=self._user, args=(random.Random(seed + n),))
                        for n in range(count)]

    def _user(self, rng: random.Random) -> None:
        questions = training_items(SKILLS["add2"], rng)
        while not self.stop.is_set():
            question, _ = next(questions)
            began, wall = time.perf_counter(), time.time()
            try:
                self.client.chat.completions.create(
                    model="lifelong", messages=messages(question), max_tokens=4)
                self.samples.append((wall, time.perf_counter() - began))
            except openai.OpenAIError:
                self.failed += 1
            self.stop.wait(rng.expovariate(1 / self.think))

    def __enter__(self) -> Users:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()

    def between(self, start: float, end: float) -> list[float]:
        return [s for wall, s in self.samples if start <= wall and wall + s <= end]


def add_tasks(url: str, count: int) -> None:
    stream = training_items(SKILLS["add2"], random.Random(1))
    with httpx.Client(base_url=url, timeout=60) as http:
        for _ in range(count):
            question, answer = next(stream)
            response = http.post("/v1/tasks", json={
                "messages": messages(question), "reference": answer, "verifier": "numeric",
                "options": {"abs_tol": 5}, "heldout": False})
            response.raise_for_status()


def measure(mode: str, args: argparse.Namespace, workdir: Path) -> dict[str, object]:
    grpo = {"rounds": args.rounds, "prompts_per_round": args.prompts, "group_size": 8,
            "max_new_tokens": 6, "batch_size": 32, **MODES[mode]}
    process, url, _ = start_daemon(args.model, workdir, sections={
        "training": {"device": "cpu", "grpo": grpo},
        "evals": {"max_tokens": 8}, "database": {"heldout_fraction": 0.0}})
    try:
        add_tasks(url, 256)
        admin = httpx.Client(base_url=url, timeout=60)
        with Users(url, args.users, args.think, seed=0) as users:
            idle_start = time.time()
            time.sleep(args.idle)
            idle = users.between(idle_start, time.time())
            answer = admin.post("/admin/train", json={"methods": ["grpo"]})
            answer.raise_for_status()
            run_id = answer.json()["id"]
            while (run := admin.get(f"/admin/training-runs/{run_id}").json())["status"] \
                    == "running":
                time.sleep(1)
        if run["status"] != "succeeded":
            sys.exit(f"{mode}: the GRPO run {run['status']}: {run['error']}")
        start = datetime.fromisoformat(run["started_at"]).timestamp()
        end = datetime.fromisoformat(run["finished_at"]).timestamp()
        # The rounds (rollouts and updates) came after the process started and loaded the
        # model (it cannot pause before its first check): both windows apart.
        rounds_start = end - sum(r["seconds"] for r in run["rounds"]) - 1.0
        during = users.between(start, end)
        startup = users.between(start, rounds_start)
        in_rounds = users.between(rounds_start, end)
        paused = sum(r["paused_seconds"] for r in run["rounds"])
        return {"idle": idle, "during": during, "startup": startup, "rounds": in_rounds,
                "seconds": end - start, "paused": paused, "failed": users.failed}
    finally:
        process.terminate()
        process.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--users", type=int, default=2)
    parser.add_argument("--think", type=float, default=1.0, help="mean think time, s")
    parser.add_argument("--idle", type=float, default=40.0, help="seconds of users alone")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=32, help="practice prompts per round")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    args = parser.parse_args()
    results = {}
    for mode in args.modes:
        with tempfile.TemporaryDirectory() as tmp:
            results[mode] = measure(mode, args, Path(tmp))
            print(f"{mode}: done", flush=True)
    print(f"\n{args.users} users, think {args.think} s; GRPO {args.rounds} rounds x "
          f"{args.prompts} prompts x 8 samples\n")
    print(f"{'mode':9} {'idle p50/p90/p99 ms':>22} {'practice p50/p90/p99 ms':>25} "
          f"{'p50 x':>6} {'p90 x':>6} {'run s':>6} {'paused s':>8} {'n':>5} {'failed':>6}")
    for mode, r in results.items():
        idle, during = r["idle"], r["during"]
        i = [percentile(idle, q) * 1000 for q in (50, 90, 99)]
        d = [percentile(during, q) * 1000 for q in (50, 90, 99)]
        print(f"{mode:9} {i[0]:8.1f}/{i[1]:6.1f}/{i[2]:6.1f} {d[0]:10.1f}/{d[1]:6.1f}/{d[2]:6.1f} "
              f"{d[0] / i[0]:6.2f} {d[1] / i[1]:6.2f} {r['seconds']:6.0f} {r['paused']:8.1f} "
              f"{len(during):5d} {r['failed']:6d}")
    print("\nduring practice, the process start (import, model load) and the rounds apart:")
    for mode, r in results.items():
        for part in ("startup", "rounds"):
            if len(r[part]) > 1:
                p50 = percentile(r[part], 50) / percentile(r["idle"], 50)
                p90 = percentile(r[part], 90) / percentile(r["idle"], 90)
                print(f"  {mode:9} {part:8} n {len(r[part]):4d}  p50 x {p50:5.2f}  p90 x {p90:5.2f}")


if __name__ == "__main__":
    main()
