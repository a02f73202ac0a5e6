"""vLLM's CPU build in bfloat16 (its default) against float32, on the same model and cores.

Starts a real vLLM server for each dtype in turn (alternating, `--repeats` times, so machine
noise hits both alike), loads one LoRA adapter of the daemon's shape (rank 8 on q/k/v/o) and
measures, for the base model and for the adapter: one stream (4 requests one after another)
and `--concurrent` requests at once. Every request is the demo's question in the model's chat
template and generates exactly `--tokens` tokens (`ignore_eos`). Prints tokens/s per repeat
and the ratio float32 / bfloat16; `vllm.dtype: auto` serves float32 where the ratio favours it
(a CPU without bfloat16 instructions).

    .venv/bin/python bench/vllm_dtype.py --model lifelong-data/base_model

Measured here (AMD EPYC, AVX2 and no avx512_bf16, 2 cores, SmolLM2-135M-Instruct, 32 tokens a
request, 2 repeats, median tokens/s bfloat16 -> float32): base one stream 7.3 -> 9.0 (1.23x),
base 32 at once 12.4 -> 57.8 (4.66x); LoRA one stream 4.4 -> 5.1 (1.15x), LoRA 32 at once
8.9 -> 28.1 (3.15x).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from eval_throughput import start_vllm

from lifelong.daemon.demo import PAIRS, sum_question

DTYPES = ("bfloat16", "float32")


def make_adapter(model: Path, out: Path) -> Path:
    """A fresh LoRA of the daemon's shape: B is zero, so it answers as the base model does, at
    the cost of a real adapter."""
    import torch

    from lifelong.adapters import LoraTrainingConfig, load_model

    lora, _ = load_model(model, parent_dir=None, config=LoraTrainingConfig(rank=8, alpha=16),
                         seed=0, device=torch.device("cpu"))
    lora.save_pretrained(str(out))
    return out


async def tokens_per_second(url: str, name: str, n: int, tokens: int, concurrent: bool) -> float:
    async def ask(client: httpx.AsyncClient, i: int) -> int:
        a, b = PAIRS[i % len(PAIRS)]
        response = await client.post(f"{url}/v1/chat/completions", timeout=900, json={
            "model": name, "temperature": 0, "max_tokens": tokens, "min_tokens": tokens,
            "ignore_eos": True,
            "messages": [{"role": "user", "content": sum_question(a, b)[0]}]})
        response.raise_for_status()
        return response.json()["usage"]["completion_tokens"]

    async with httpx.AsyncClient() as client:
        await ask(client, 0)  # first use of the name: not timed
        started = time.perf_counter()
        if concurrent:
            made = sum(await asyncio.gather(*(ask(client, i) for i in range(n))))
        else:
            made = 0
            for i in range(n):
                made += await ask(client, i)
        return made / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="base model folder")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--concurrent", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vllm-dtype-"))
    adapter = make_adapter(args.model, work / "adapter")
    cases = [("base", "base", False), ("base", "base", True), ("lora", "bench", False),
             ("lora", "bench", True)]
    results: dict[tuple[str, str, bool], list[float]] = {}
    for repeat in range(args.repeats):
        for dtype in DTYPES:
            process, url = start_vllm(
                args.model, work / f"vllm-{dtype}-{repeat}.log", "--enable-lora",
                "--max-lora-rank", "8", "--max-loras", "4", "--dtype", dtype,
                env={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1"})
            try:
                httpx.post(f"{url}/v1/load_lora_adapter", timeout=120, json={
                    "lora_name": "bench", "lora_path": str(adapter)}).raise_for_status()
                for label, name, concurrent in cases:
                    rate = asyncio.run(tokens_per_second(
                        url, name, args.concurrent if concurrent else 4, args.tokens, concurrent))
                    results.setdefault((dtype, label, concurrent), []).append(rate)
                    print(f"repeat {repeat + 1} {dtype:>8} {label:>4} "
                          f"{'concurrent' if concurrent else 'one stream':>10}: {rate:6.1f} "
                          "tokens/s", flush=True)
            finally:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(60)
    print(f"\n{'case':>22} {'bfloat16':>9} {'float32':>9} {'ratio':>6}  (median tokens/s)")
    for label, _, concurrent in cases:
        bf16, fp32 = (statistics.median(results[(d, label, concurrent)]) for d in DTYPES)
        case = f"{label} {f'{args.concurrent} at once' if concurrent else 'one stream'}"
        print(f"{case:>22} {bf16:>9.1f} {fp32:>9.1f} {fp32 / bf16:>6.2f}")


if __name__ == "__main__":
    main()
