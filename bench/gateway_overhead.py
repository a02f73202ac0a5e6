"""What the gateway costs: the same workload straight to vLLM and through `lifelong serve`.

Starts a real daemon (which starts its own vLLM) on a model folder, then runs rounds that
alternate direct and gateway traffic (interleaved, so machine noise hits both alike): C
concurrent clients, fixed prompts, fixed max_tokens with ignore_eos so both sides generate the
same tokens, streaming and not. Prints requests/s and tokens/s ratios and the added p50/p99.

    .venv/bin/python bench/gateway_overhead.py --model lifelong-data/base_model
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
from daemon_process import start_daemon

PROMPTS = [f"What is {a} + {b}?" for a, b in [(12, 34), (56, 21), (70, 8), (33, 44), (91, 5)]]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def one(client: httpx.AsyncClient, url: str, model: str, prompt: str, stream: bool,
              max_tokens: int) -> tuple[float, int]:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    started = time.perf_counter()
    if not stream:
        response = await client.post(url, json=body)
        response.raise_for_status()
        return time.perf_counter() - started, response.json()["usage"]["completion_tokens"]
    tokens = 0
    async with client.stream("POST", url, json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                usage = json.loads(line[6:]).get("usage")
                if usage:
                    tokens = usage["completion_tokens"]
    return time.perf_counter() - started, tokens


async def round_(base: str, model: str, *, concurrency: int, requests: int, stream: bool,
                 max_tokens: int) -> tuple[float, list[float], int]:
    url = f"{base}/v1/chat/completions"
    async with httpx.AsyncClient(timeout=300) as client:
        queue = list(range(requests))
        latencies: list[float] = []
        tokens = 0

        async def worker() -> None:
            nonlocal tokens
            while queue:
                i = queue.pop()
                latency, n = await one(client, url, model, PROMPTS[i % len(PROMPTS)], stream,
                                       max_tokens)
                latencies.append(latency)
                tokens += n

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started, latencies, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("lifelong-data/base_model"))
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--requests", type=int, default=64, help="per round and side")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()
    if not (args.model / "config.json").is_file():
        sys.exit(f"no model at {args.model}; run `lifelong base build` first")
    with tempfile.TemporaryDirectory(prefix="lifelong-bench-") as tmp:
        process, gateway, direct = start_daemon(args.model, Path(tmp))
        # CPU the gateway process spends per request: unlike latency, barely moved by the
        # other processes sharing the machine.
        gateway_process = psutil.Process(process.pid)
        try:
            rows = []
            for stream in (False, True):
                results: dict[str, dict[str, list]] = {
                    side: {"elapsed": [], "lat": [], "tok": [], "cpu": []}
                    for side in ("direct", "gateway")
                }
                # warm-up, then interleave direct/gateway rounds
                asyncio.run(round_(direct, "base", concurrency=args.concurrency, requests=16,
                                   stream=stream, max_tokens=args.max_tokens))
                for _ in range(args.rounds):
                    for side, base, model in (("direct", direct, "base"),
                                              ("gateway", gateway, "lifelong")):
                        cpu_before = sum(gateway_process.cpu_times()[:2])
                        elapsed, lat, tok = asyncio.run(round_(
                            base, model, concurrency=args.concurrency, requests=args.requests,
                            stream=stream, max_tokens=args.max_tokens))
                        results[side]["cpu"].append(
                            sum(gateway_process.cpu_times()[:2]) - cpu_before)
                        results[side]["elapsed"].append(elapsed)
                        results[side]["lat"] += lat
                        results[side]["tok"].append(tok)
                summary = {}
                for side, r in results.items():
                    total = sum(r["elapsed"])
                    summary[side] = {
                        "rps": args.requests * args.rounds / total,
                        "tps": sum(r["tok"]) / total,
                        "p50": percentile(r["lat"], 0.5) * 1000,
                        "p99": percentile(r["lat"], 0.99) * 1000,
                        "cpu_ms": 1000 * sum(r["cpu"]) / (args.requests * args.rounds),
                    }
                rows.append((stream, summary))
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(60)
    print(f"\nconcurrency={args.concurrency} requests/round={args.requests} rounds={args.rounds} "
          f"max_tokens={args.max_tokens} (interleaved)")
    header = (f"{'stream':<7}{'side':<9}{'req/s':>8}{'tok/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
              f"{'rps ratio':>11}{'tps ratio':>11}{'+p50 ms':>9}{'+p99 ms':>9}")
    print(header)
    for stream, s in rows:
        d, g = s["direct"], s["gateway"]
        print(f"{str(stream):<7}{'direct':<9}{d['rps']:>8.2f}{d['tps']:>9.1f}{d['p50']:>9.1f}"
              f"{d['p99']:>9.1f}")
        print(f"{str(stream):<7}{'gateway':<9}{g['rps']:>8.2f}{g['tps']:>9.1f}{g['p50']:>9.1f}"
              f"{g['p99']:>9.1f}{g['rps'] / d['rps']:>11.3f}{g['tps'] / d['tps']:>11.3f}"
              f"{g['p50'] - d['p50']:>9.2f}{g['p99'] - d['p99']:>9.2f}"
              f"   gateway CPU {g['cpu_ms']:.2f} ms/request")
    print("target: gateway/direct ratios >= 0.95 and added p50 < 3 ms, with logging on")


if __name__ == "__main__":
    main()
