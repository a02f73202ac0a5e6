"""The daemon's log: JSON lines on stderr, and a real APScheduler job's per-run chatter kept out
of them unless the level is DEBUG."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator

import pytest
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from lifelong.daemon import log


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


def run_one_job() -> None:
    """One job run by a real AsyncIOScheduler, as the daemon's schedule and practice run theirs."""

    async def main() -> None:
        ran = asyncio.Event()

        async def job() -> None:
            logging.getLogger("lifelong.daemon.learning_cycle").info("data check")
            ran.set()

        scheduler = AsyncIOScheduler()
        scheduler.add_job(job, id="data")  # no trigger: once, now
        scheduler.start()
        await asyncio.wait_for(ran.wait(), 10)
        await asyncio.sleep(0.1)  # the executor logs its success after the job returns
        scheduler.shutdown(wait=False)

    asyncio.run(main())


def lines(err: str) -> list[dict]:
    return [json.loads(line) for line in err.splitlines() if line.startswith("{")]


def test_scheduler_job_runs_are_not_logged_at_info(capsys: pytest.CaptureFixture[str]):
    log.configure("INFO")
    run_one_job()
    logged = lines(capsys.readouterr().err)
    assert [entry["msg"] for entry in logged if entry["logger"].startswith("lifelong")] == [
        "data check"]
    assert not [entry for entry in logged if entry["logger"].startswith("apscheduler.executors")]


def test_scheduler_job_runs_are_logged_at_debug_when_asked(capsys: pytest.CaptureFixture[str]):
    log.configure("DEBUG")
    run_one_job()
    chatter = [entry for entry in lines(capsys.readouterr().err)
               if entry["logger"].startswith("apscheduler.executors")]
    assert [entry["level"] for entry in chatter] == ["debug", "debug"]
    assert "Running job" in chatter[0]["msg"] and "executed successfully" in chatter[1]["msg"]


def test_scheduler_warnings_still_pass_at_info(capsys: pytest.CaptureFixture[str]):
    log.configure("INFO")
    logging.getLogger("apscheduler.executors.default").warning('Run time of job "data" was missed')
    assert [entry["level"] for entry in lines(capsys.readouterr().err)] == ["warning"]
