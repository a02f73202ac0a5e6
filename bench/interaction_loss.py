"""What a SIGKILL of the daemon can lose from the interaction log.

The gateway answers first and logs after (a background writer, group commit), so an answer a
client already has may not be in the database yet when the process dies. This sends concurrent
traffic for a while, SIGKILLs the daemon (not vLLM's shutdown path, nothing flushes), then
counts answered interaction ids missing from the database.

    .venv/bin/python bench/interaction_loss.py --model lifelong-data/base_model
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import httpx
from daemon_process import start_daemon


async def traffic(gateway: str, *, concurrency: int, seconds: float, answered: list[str]) -> None:
    body = {"model": "lifelong", "messages": [{"role": "user", "content": "What is 2 + 3?"}],
            "max_tokens": 4}
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(timeout=30) as client:

        async def worker() -> None:
            while time.monotonic() < deadline:
                try:
                    response = await client.post(f"{gateway}/v1/chat/completions", json=body)
                except httpx.HTTPError:
                    return  # the daemon is gone
                if response.status_code == 200:
                    answered.append(response.json()["id"])

        await asyncio.gather(*(worker() for _ in range(concurrency)))


async def kill_under_load(
    pid: int, gateway: str, args: argparse.Namespace, answered: list[str]
) -> None:
    load = asyncio.create_task(
        traffic(gateway, concurrency=args.concurrency, seconds=args.seconds * 2, answered=answered)
    )
    await asyncio.sleep(args.seconds)
    os.kill(pid, signal.SIGKILL)  # the gateway only; vLLM follows it (parent-death signal)
    await load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("lifelong-data/base_model"))
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    if not (args.model / "config.json").is_file():
        sys.exit(f"no model at {args.model}; run `lifelong base build` first")
    print(f"{'trial':>5}{'answered':>10}{'logged':>8}{'lost':>6}{'lost %':>8}")
    for trial in range(args.trials):
        with tempfile.TemporaryDirectory(prefix="lifelong-loss-") as tmp:
            process, gateway, _ = start_daemon(args.model, Path(tmp))
            answered: list[str] = []

            asyncio.run(kill_under_load(process.pid, gateway, args, answered))
            process.wait()
            time.sleep(2)  # let vLLM's group go before the folder is removed
            with sqlite3.connect(Path(tmp) / "data" / "lifelong.db") as db:
                logged = {row[0] for row in db.execute("SELECT id FROM interactions")}
            lost = len(set(answered) - logged)
            print(f"{trial:>5}{len(answered):>10}{len(logged):>8}{lost:>6}"
                  f"{100 * lost / max(1, len(answered)):>7.2f}%")


if __name__ == "__main__":
    main()
