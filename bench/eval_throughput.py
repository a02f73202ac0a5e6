"""What the eval runner costs: items/s through `lifelong.evals.runner` versus the same prompts sent
straight to vLLM as one batch (a single /v1/completions call with a list prompt).

Starts a real vLLM on a model folder (or builds the tiny test model when none is given), then runs
rounds that alternate the two (interleaved, so machine noise hits both alike). Both sides ask for
the same greedy completions; the runner also verifies every answer. Prints items/s per round and
the median ratio runner/direct (target: at least 0.9).

    .venv/bin/python bench/eval_throughput.py --model lifelong-data/base_model --items 512
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from lifelong.daemon.serve_process import free_port
from lifelong.evals.runner import Sampling, evaluate
from lifelong.evals.suites import EvalItem, Suite

CHAT = "<|im_start|>user\nWhat is {a} + {b}?<|im_end|>\n<|im_start|>assistant\n"


def start_vllm(model: Path, log: Path, *args: str,
               env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """A vLLM server on `model` (served as `base`) with further `args`, once it answers."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
         "--served-model-name", "base", "--max-model-len", "512", "--host", "127.0.0.1",
         "--port", str(port), "--disable-uvicorn-access-log", *args],
        env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", **(env or {})}, stdout=log.open("wb"),
        stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"vLLM exited {process.returncode}; see {log}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(1)
    os.killpg(process.pid, signal.SIGKILL)
    sys.exit(f"vLLM not up in 600 s; see {log}")


def direct(url: str, prompts: list[str], max_tokens: int) -> tuple[float, list[str]]:
    started = time.perf_counter()
    response = httpx.post(f"{url}/v1/completions", timeout=600, json={
        "model": "base", "prompt": prompts, "max_tokens": max_tokens, "temperature": 0})
    response.raise_for_status()
    elapsed = time.perf_counter() - started
    choices = sorted(response.json()["choices"], key=lambda c: c["index"])
    return elapsed, [c["text"] for c in choices]


def through_runner(url: str, suite: Suite, max_tokens: int, concurrency: int) -> tuple[float, list[str]]:
    started = time.perf_counter()
    (run,) = asyncio.run(evaluate(url, "base", [suite], sampling=Sampling(max_tokens=max_tokens),
                                  concurrency=concurrency))
    return time.perf_counter() - started, [r.answer for r in run.results]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="model folder (default: build the tiny test model)")
    parser.add_argument("--items", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=256, help="runner requests in flight")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="eval-throughput-"))
    model = args.model
    if model is None:
        from lifelong.base_model import build  # heavy import, only when building
        model = build(work / "tiny", seed=0, steps=300, layers=2, hidden=128, batch_size=32,
                      eval_items=20, progress=False).path
    pairs = [(10 + i % 90, 10 + (i * 7) % 90) for i in range(args.items)]
    prompts = [CHAT.format(a=a, b=b) for a, b in pairs]
    suite = Suite("bench", "regression", tuple(
        EvalItem(id=f"i{k}", prompt=p, reference=str(a + b), verifier="numeric")
        for k, (p, (a, b)) in enumerate(zip(prompts, pairs, strict=True))))

    process, url = start_vllm(model, work / "vllm.log")
    try:
        direct(url, prompts[:8], args.max_tokens)  # warm-up: first requests compile and allocate
        through_runner(url, Suite("warm", "regression", suite.items[:8]), args.max_tokens, 8)
        ratios = []
        for round_ in range(1, args.rounds + 1):
            t_direct, direct_answers = direct(url, prompts, args.max_tokens)
            t_runner, runner_answers = through_runner(url, suite, args.max_tokens, args.concurrency)
            same = sum(x == y for x, y in zip(direct_answers, runner_answers, strict=True))
            ratio = t_direct / t_runner  # = runner items/s over direct items/s
            ratios.append(ratio)
            print(f"round {round_}: direct {args.items / t_direct:7.1f} items/s, "
                  f"runner {args.items / t_runner:7.1f} items/s, ratio {ratio:.2f} "
                  f"({same}/{args.items} identical answers)")
        print(f"median ratio runner/direct over {args.rounds} rounds: {statistics.median(ratios):.2f} "
              f"(target >= 0.9); {args.items} items, max_tokens {args.max_tokens}")
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
