"""Feedback ingest: sustained acknowledged writes/s and latency, on SQLite and PostgreSQL.

"Acknowledged" means the call returned after its transaction committed. Each of `--writers`
threads loops for `--seconds` (after a one-second warm-up that is not counted), rating one of
its own principal's interactions per call, through two paths:

- `session`: one session and transaction per call (`feedback.add_feedback`);
- `committer`: the group-commit path (`FeedbackCommitter.add`), many calls per transaction.

SQLite is a file in WAL mode at synchronous=FULL (an fsync per commit); PostgreSQL is a fresh
database created on the `--postgres-url` server and dropped afterwards (skipped, saying why, if
the server cannot be reached).

    .venv/bin/python bench/store_ingest.py --seconds 10 --writers 8
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, create_engine, func, make_url, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from lifelong.feedback_store.database import make_engine, upgrade
from lifelong.feedback_store.feedback import add_feedback
from lifelong.feedback_store.feedback_committer import FeedbackCommitter
from lifelong.feedback_store.interactions import add_interactions
from lifelong.feedback_store.models import Feedback
from lifelong.feedback_store.records import NewInteraction, Rating

WARMUP_S = 1.0
INTERACTIONS_PER_WRITER = 100


@dataclass
class Result:
    backend: str
    path: str
    writers: int
    writes_per_s: float
    p50_ms: float
    p99_ms: float
    stored: int  # feedback rows in the database afterwards, warm-up included
    acknowledged: int  # calls that returned, warm-up included
    rows_per_commit: float


Write = Callable[[str, str], None]  # (principal, interaction id)


@contextmanager
def sqlite_engine() -> Iterator[Engine]:
    with tempfile.TemporaryDirectory(prefix="lifelong-bench-") as folder:
        engine = make_engine(f"sqlite:///{Path(folder) / 'lifelong.db'}", sqlite_synchronous="FULL")
        try:
            yield engine
        finally:
            engine.dispose()


@contextmanager
def postgres_engine(server_url: str) -> Iterator[Engine]:
    name = f"lifelong_bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    engine = make_engine(make_url(server_url).set(database=name).render_as_string(False))
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def seed(engine: Engine, writers: int) -> dict[str, list[str]]:
    """Each writer's principal -> ids of interactions it made."""
    upgrade(engine)
    owned: dict[str, list[str]] = {}
    records: list[NewInteraction] = []
    for writer in range(writers):
        principal = f"writer-{writer}"
        for _ in range(INTERACTIONS_PER_WRITER):
            record = NewInteraction(
                id=f"chatcmpl-{uuid.uuid4().hex}", created_at=datetime.now(UTC),
                endpoint="chat.completions",
                request={"messages": [{"role": "user", "content": f"question {len(records)}"}]},
                model="lifelong", response_text="an answer", principal=principal,
            )
            records.append(record)
            owned.setdefault(principal, []).append(record.id)
    with sessionmaker(engine).begin() as session:
        add_interactions(session, records=records, heldout_fraction=0.1)
    return owned


def measure(engine: Engine, write: Write, owned: dict[str, list[str]], seconds: float) -> tuple[
    float, list[float], int
]:
    """Run one writer thread per principal; (writes/s, latencies in s, acknowledged calls)."""
    start = time.perf_counter() + WARMUP_S
    stop = start + seconds
    latencies: list[list[float]] = [[] for _ in owned]
    counts = [0] * len(owned)
    failures: list[BaseException] = []

    def writer(n: int, principal: str, ids: list[str]) -> None:
        i = 0
        try:
            while (began := time.perf_counter()) < stop:
                write(principal, ids[i % len(ids)])
                done = time.perf_counter()
                counts[n] += 1
                if began >= start and done <= stop:
                    latencies[n].append(done - began)
                i += 1
        except BaseException as exc:  # reported below; a silent dead writer would flatter us
            failures.append(exc)

    threads = [
        threading.Thread(target=writer, args=(n, principal, ids))
        for n, (principal, ids) in enumerate(owned.items())
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"{len(failures)} writers failed; first: {failures[0]!r}")
    flat = [latency for per_thread in latencies for latency in per_thread]
    return len(flat) / seconds, flat, sum(counts)


def run(backend: str, path: str, engine: Engine, writers: int, seconds: float) -> Result:
    owned = seed(engine, writers)
    sessions: sessionmaker[Session] = sessionmaker(engine, expire_on_commit=False)
    committer: FeedbackCommitter | None = None
    if path == "session":
        def write(principal: str, interaction_id: str) -> None:
            with sessions.begin() as session:
                add_feedback(session, items=[Rating(interaction_id, score=1.0)],
                             principal=principal, admin=False)
    else:
        committer = FeedbackCommitter(engine)

        def write(principal: str, interaction_id: str) -> None:
            assert committer is not None
            committer.add([Rating(interaction_id, score=1.0)], principal=principal, admin=False)
    try:
        rate, latencies, acknowledged = measure(engine, write, owned, seconds)
    finally:
        if committer is not None:
            committer.close()
    per_commit = 1.0
    if committer is not None:
        stats = committer.stats()
        per_commit = stats.committed / max(stats.groups, 1)
    with sessions() as session:
        stored = session.scalar(select(func.count()).select_from(Feedback)) or 0
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return Result(backend, path, writers, rate, cuts[49] * 1000, cuts[98] * 1000, stored,
                  acknowledged, per_commit)


def fsync_ms(folder: Path, count: int = 200) -> float:
    """Median time of a 4 KiB write + fdatasync in `folder`: the floor of one durable commit."""
    path = folder / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    times = []
    try:
        for i in range(count):
            began = time.perf_counter()
            os.pwrite(fd, b"x" * 4096, (i % 16) * 4096)
            os.fdatasync(fd)
            times.append(time.perf_counter() - began)
    finally:
        os.close(fd)
        path.unlink()
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="Measured time per run.")
    parser.add_argument("--writers", type=int, default=8, help="Concurrent writer threads.")
    parser.add_argument(
        "--postgres-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test",
        help="A server where the benchmark may create and drop a scratch database.",
    )
    parser.add_argument(
        "--paths", default="session,committer", help="Comma-separated: session, committer."
    )
    args = parser.parse_args()
    paths = [path.strip() for path in args.paths.split(",") if path.strip()]

    # The figures below depend on both; print them so a reader can compare runs.
    with tempfile.TemporaryDirectory(prefix="lifelong-bench-") as folder:
        print(f"fdatasync p50 {fsync_ms(Path(folder)):.2f} ms (temp folder); "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    results: list[Result] = []
    for path in paths:
        with sqlite_engine() as engine:
            results.append(run("sqlite", path, engine, args.writers, args.seconds))
    try:
        probe = create_engine(args.postgres_url, poolclass=NullPool)
        with probe.connect():
            pass
        probe.dispose()
    except OperationalError as exc:
        print(f"postgres: skipped, cannot connect to {args.postgres_url}: {exc.orig}")
    else:
        for path in paths:
            with postgres_engine(args.postgres_url) as engine:
                results.append(run("postgres", path, engine, args.writers, args.seconds))

    header = f"{'backend':<9} {'path':<10} {'writers':>7} {'writes/s':>9} {'p50 ms':>7} " \
             f"{'p99 ms':>7} {'rows/commit':>11}"
    print(header)
    print("-" * len(header))
    for r in results:
        print(f"{r.backend:<9} {r.path:<10} {r.writers:>7} {r.writes_per_s:>9.0f} "
              f"{r.p50_ms:>7.2f} {r.p99_ms:>7.2f} {r.rows_per_commit:>11.1f}")
        # Every acknowledged write must be stored; more stored is fine (calls cut off at exit).
        assert r.stored >= r.acknowledged, f"{r.backend}/{r.path}: acknowledged but not stored"


if __name__ == "__main__":
    main()
