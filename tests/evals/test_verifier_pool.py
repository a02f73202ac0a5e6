"""The verifier pool judges in worker processes of its own: while every worker is busy, the
caller's event loop and its default executor (where the gateway's database reads run) stay free;
a worker that dies fails its answers, not the pool. Slow verifiers here are a real plugin (a
dist-info on sys.path, as `pip install` leaves one) that holds until the test releases it, so
the tests order events and never read a clock."""

from __future__ import annotations

import asyncio
import os
import textwrap
from pathlib import Path

import pytest
from sqlalchemy import func, select

from lifelong.evals.runner import client_session, run_suite
from lifelong.evals.suites import EvalItem, Suite
from lifelong.evals.verifier_pool import VerifierPool
from lifelong.feedback_store.database import make_engine
from lifelong.feedback_store.models import Interaction

WORKERS = 2


@pytest.fixture
def plugins(tmp_path, monkeypatch) -> Path:
    """Verifiers that hold until `options["release"]` exists, say their pid, or kill their worker."""
    (tmp_path / "pool_verifiers.py").write_text(textwrap.dedent("""
        import os
        import tempfile
        import time

        from lifelong.evals.verifiers import VerifierResult

        def hold(answer, reference, options):
            if "started" in options:
                tempfile.mkstemp(dir=options["started"])  # one file per judgement begun
            while not os.path.exists(options["release"]):
                time.sleep(0.01)
            return VerifierResult(score=1.0, passed=True, reason="released")

        def whoami(answer, reference, options):
            return VerifierResult(score=1.0, passed=True, reason=str(os.getpid()))

        def crash(answer, reference, options):
            os._exit(3)
    """))
    dist_info = tmp_path / "pool_verifiers-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: pool-verifiers\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(
        "[lifelong.verifiers]\nhold = pool_verifiers:hold\nwhoami = pool_verifiers:whoami\n"
        "crash = pool_verifiers:crash\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # the workers get the parent's sys.path
    return tmp_path


def test_answers_are_judged_in_order_in_worker_processes(plugins):
    async def judged():
        with VerifierPool(WORKERS) as pool:
            return (await pool.verify("exact_match", ["4", "5", " 4 "], "4", {}),
                    await pool.verify("whoami", ["x"], "", {}))

    in_order, (where,) = asyncio.run(judged())
    assert [result.passed for result in in_order] == [True, False, True]
    assert int(where.reason) != os.getpid()


def test_a_worker_that_dies_fails_its_answers_and_the_pool_goes_on(plugins):
    async def judged():
        with VerifierPool(WORKERS) as pool:
            return (await pool.verify("crash", ["a", "b"], "", {}),
                    await pool.verify("exact_match", ["4"], "4", {}))

    died, (after,) = asyncio.run(judged())
    assert [r.passed for r in died] == [False, False]
    assert "worker process died" in died[0].reason
    assert after.passed


@pytest.mark.timeout(120)  # a regression would wait for the read forever: fail, don't hang
def test_a_full_pool_leaves_the_default_executor_free_for_database_reads(
    plugins, migrated_sqlite_file, tmp_path
):
    release = tmp_path / "release"
    engine = make_engine(f"sqlite:///{migrated_sqlite_file}")
    # More held judgements than the pool has workers and the loop's default executor threads.
    held = WORKERS + (min(32, (os.cpu_count() or 1) + 4)) + 2

    def read() -> int:
        with engine.connect() as connection:
            return connection.scalar(select(func.count()).select_from(Interaction)) or 0

    async def scenario() -> tuple[int, int, list[bool]]:
        with VerifierPool(WORKERS) as pool:
            judging = [asyncio.ensure_future(pool.verify("hold", ["x"], "", {"release": str(release)}))
                       for _ in range(held)]
            await asyncio.sleep(0)  # all submitted
            rows = await asyncio.to_thread(read)  # a gateway read: the default executor
            pending = sum(not task.done() for task in judging)
            release.touch()
            verdicts = await asyncio.gather(*judging)
        return rows, pending, [result.passed for (result,) in verdicts]

    try:
        rows, pending, passed = asyncio.run(scenario())
    finally:
        engine.dispose()
    assert rows == 0 and pending == held  # the read answered while every judgement waited
    assert passed == [True] * held


@pytest.mark.timeout(600)
def test_a_suite_being_judged_leaves_database_reads_free(plugins, vllm_url, migrated_sqlite_file,
                                                         tmp_path):
    # The daemon's judge runs suites on the gateway's loop: its verifiers must not take the
    # threads the gateway's reads need (12 sandbox runs on threads made reads take 15 s).
    release, started = tmp_path / "release", tmp_path / "started"
    started.mkdir()
    options = {"release": str(release), "started": str(started)}
    items = tuple(EvalItem(id=f"i{k}", messages=[{"role": "user", "content": f"{k} + 1 ="}],
                           reference="", verifier="hold", options=options)
                  for k in range(12))
    suite = Suite(name="held", kind="regression", items=items)
    engine = make_engine(f"sqlite:///{migrated_sqlite_file}")

    def read() -> int:
        with engine.connect() as connection:
            return connection.scalar(select(func.count()).select_from(Interaction)) or 0

    async def scenario():
        with VerifierPool(WORKERS) as pool:
            async with client_session() as http:
                run = asyncio.ensure_future(run_suite(http, vllm_url, "base", suite, verifiers=pool))
                while len(list(started.iterdir())) < WORKERS:  # vLLM answered; judging began
                    await asyncio.sleep(0.05)
                rows = await asyncio.to_thread(read)
                judging = not run.done()
                release.touch()
                return rows, judging, await run

    try:
        rows, judging, judged = asyncio.run(scenario())
    finally:
        engine.dispose()
    assert rows == 0 and judging  # the read answered while the suite was being judged
    assert judged.summary.pass_rate == 1.0


def test_an_unknown_verifier_fails_its_answers_in_the_pool():
    async def judged():
        with VerifierPool(WORKERS) as pool:
            return await pool.verify("exact_mach", ["4"], "4", {})

    (result,) = asyncio.run(judged())
    assert not result.passed and "unknown verifier 'exact_mach'" in result.reason
