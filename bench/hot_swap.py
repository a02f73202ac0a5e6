"""Hot-swap under load: promote and roll back repeatedly while clients keep asking the public alias.

Starts a real daemon (its own vLLM) on a model folder, registers `--adapters` approved LoRA
adapters (every projection, random weights), then, with `--clients` threads sending chat
requests without pause, alternates promote(v_i) and rollback `--rounds` times. Prints:

- swap latency: from the promote/rollback call to the first response from the new version
  (p50 / max), and the call's own duration;
- failed requests (must be 0);
- responses from the wrong version among requests sent after the call returned (must be 0);
- the vLLM process tree's resident memory before and after, so its growth per promotion shows,
  and its peak; with `--replace-after N` (vllm.replace_after_adapters) the daemon replaces its
  vLLM once it has registered N adapters, and the run shows what that costs and bounds.

    .venv/bin/python bench/hot_swap.py --model lifelong-data/base_model [--replace-after 4]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil
from peft import LoraConfig, get_peft_model
from sqlalchemy.orm import Session
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).parent))
from daemon_process import start_daemon  # noqa: E402

from lifelong.adapters import base_model_identity, manifest_checksum, write_adapter  # noqa: E402
from lifelong.adapters.lora_config import LLAMA_TARGETS  # noqa: E402
from lifelong.feedback_store import registry  # noqa: E402
from lifelong.feedback_store.database import make_engine  # noqa: E402

CHAT = {"model": "lifelong", "messages": [{"role": "user", "content": "What is 12 + 34?"}],
        "max_tokens": 4}


def register_adapters(model: Path, data_dir: Path, count: int) -> list[str]:
    engine = make_engine(f"sqlite:///{data_dir / 'lifelong.db'}")
    versions = []
    for number in range(1, count + 1):
        version = f"v{number:04d}"
        peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(model),
                                    LoraConfig(r=8, lora_alpha=16, target_modules=list(LLAMA_TARGETS),
                                               init_lora_weights="gaussian"))
        path, _ = write_adapter(
            peft_model, adapters_dir=data_dir / "adapters", version=version, parent_version=None,
            base_model=base_model_identity(model), data_watermark=0, data={}, feedback_ids=[],
            methods=["sft"], hyperparameters={}, seed=number, metrics={},
        )
        with Session(engine) as session, session.begin():
            registry.register(session, version=version, path=str(path),
                              checksum=manifest_checksum(path))
            registry.approve(session, version=version)
        versions.append(version)
    engine.dispose()
    return versions


def vllm_rss_mib(daemon: psutil.Process) -> float:
    tree = [p for p in daemon.children(recursive=True) if "vllm" in " ".join(p.cmdline())]
    tree += [c for p in tree for c in p.children(recursive=True)]
    return sum({p.pid: p.memory_info().rss for p in tree}.values()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("lifelong-data/base_model"))
    parser.add_argument("--adapters", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--pause", type=float, default=0.0,
                        help="seconds each client waits between requests (0: saturate)")
    parser.add_argument("--dwell", type=float, default=1.5,
                        help="seconds between swaps; longer than one answer takes (SmolLM2: ~8)")
    parser.add_argument("--replace-after", type=int, default=None,
                        help="vllm.replace_after_adapters (default: never, to see the growth)")
    args = parser.parse_args()
    if not (args.model / "config.json").is_file():
        sys.exit(f"no model at {args.model}; run `lifelong base build` first")
    with tempfile.TemporaryDirectory() as tmp:
        process, gateway, _ = start_daemon(
            args.model, Path(tmp), replace_after_adapters=args.replace_after,
            keep_adapters=min(3, max(0, (args.replace_after or 5) - 2)))
        try:
            versions = register_adapters(args.model, Path(tmp) / "data", args.adapters)
            run(gateway, psutil.Process(process.pid), versions, args)
        finally:
            process.terminate()
            process.wait(120)


def run(gateway: str, daemon: psutil.Process, versions: list[str], args: argparse.Namespace) -> None:
    answers: list[tuple[float, float, int, str | None]] = []  # sent, done, status, version
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=120) as http:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    response = http.post(f"{gateway}/v1/chat/completions", json=CHAT)
                    status, version = response.status_code, response.headers.get("x-lifelong-adapter")
                except httpx.HTTPError:
                    status, version = 0, None
                answers.append((sent, time.monotonic(), status, version))
                stop.wait(args.pause)

    rss_before = vllm_rss_mib(daemon)
    peak = [rss_before]

    def watch_memory() -> None:
        while not stop.wait(0.5):
            # A process may end between listing and reading it.
            with contextlib.suppress(psutil.Error):
                peak.append(vllm_rss_mib(daemon))

    threads = [threading.Thread(target=client) for _ in range(args.clients)]
    threads.append(threading.Thread(target=watch_memory))
    for thread in threads:
        thread.start()
    moves: list[tuple[float, float, str]] = []  # call start, call end, target
    admin = httpx.Client(base_url=gateway, timeout=600)
    time.sleep(2)
    for round_ in range(args.rounds):
        version = versions[round_ % len(versions)]
        for path, body, target in (("/admin/promote", {"version": version}, version),
                                   ("/admin/rollback", {"to": "base"}, "base")):
            started = time.monotonic()
            response = admin.post(path, json=body)
            if response.status_code != 200:
                sys.exit(f"{path} {body}: {response.status_code} {response.text}")
            moves.append((started, time.monotonic(), target))
            time.sleep(args.dwell)
    # A replacement that became due during the last swaps: let it finish under load.
    deadline = time.monotonic() + 300
    while args.replace_after and time.monotonic() < deadline and _replacing(
            gateway, args.replace_after):
        time.sleep(1)
    stop.set()
    for thread in threads:
        thread.join()
    rss_after = vllm_rss_mib(daemon)
    (upstream,) = httpx.get(f"{gateway}/admin/health", timeout=10).json()["upstreams"]

    failed = sum(status != 200 for _, _, status, _ in answers)
    wrong, latencies, calls = 0, [], []
    for index, (started, ended, target) in enumerate(moves):
        until = moves[index + 1][0] if index + 1 < len(moves) else float("inf")
        firsts = [done for sent, done, _, version in answers
                  if started <= sent < until and version == target]
        if firsts:  # a swap whose window saw no answer measures nothing (raise --dwell)
            latencies.append(min(firsts) - started)
        calls.append(ended - started)
        wrong += sum(1 for sent, _, status, version in answers
                     if ended <= sent < until and status == 200 and version != target)
    print(f"{len(answers)} requests from {args.clients} clients (pause {args.pause} s) during "
          f"{len(moves)} swaps "
          f"({args.rounds} promotions of {len(versions)} adapters, each rolled back)")
    print("swap latency (call -> first answer from the new version): "
          + (f"p50 {statistics.median(latencies) * 1000:.0f} ms, "
             f"max {max(latencies) * 1000:.0f} ms " if latencies else "not measured ")
          + f"({len(latencies)} of {len(moves)} swaps answered in their window)")
    print(f"promote/rollback call: p50 {statistics.median(calls) * 1000:.0f} ms, "
          f"max {max(calls) * 1000:.0f} ms")
    print(f"failed requests: {failed}")
    print(f"answers from the wrong version after a swap returned: {wrong}")
    print(f"vLLM resident memory: {rss_before:.0f} MiB before, {rss_after:.0f} MiB after "
          f"({(rss_after - rss_before) / max(1, len(versions)):+.1f} MiB per adapter loaded), "
          f"peak {max(peak):.0f} MiB")
    print(f"vLLM replacements: {upstream['replacements']}; adapters the serving vLLM holds now: "
          f"{upstream['adapters_registered']}")


def _replacing(gateway: str, threshold: int) -> bool:
    """Whether the daemon's vLLM has reached its replacement threshold (a replacement is due or
    under way; a fresh server holds fewer)."""
    (upstream,) = httpx.get(f"{gateway}/admin/health", timeout=10).json()["upstreams"]
    return upstream["adapters_registered"] >= threshold


if __name__ == "__main__":
    main()
