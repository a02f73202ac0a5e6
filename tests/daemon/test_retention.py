"""The retention job on its real scheduler and database (SQLite and PostgreSQL): started, it
expires what is past its period at once and again every `every_minutes`, keeps the rest, and
records what it deleted; with no period set it never starts; stopped, it deletes nothing more."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import sessionmaker

from lifelong.daemon.retention import Retention
from lifelong.daemon.settings import RetentionSettings
from lifelong.feedback_store.interactions import add_interactions
from lifelong.feedback_store.models import Interaction
from lifelong.feedback_store.records import NewInteraction


def store(sessions, *, age: timedelta, n: int, tag: str) -> None:
    at = datetime.now(UTC) - age
    records = [NewInteraction(id=f"chatcmpl-{tag}{i}", created_at=at, endpoint="chat.completions",
                              request={"messages": [{"role": "user", "content": f"q{i}"}]},
                              model="lifelong", response_text="a", principal="alice")
               for i in range(n)]
    with sessions.begin() as session:
        add_interactions(session, records=records, heldout_fraction=0.0)


def count(sessions, prefix: str) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(Interaction)
                              .where(Interaction.id.like(f"chatcmpl-{prefix}%"))) or 0


def test_the_job_expires_old_rows_at_start_and_then_every_interval(engine):
    sessions = sessionmaker(engine, expire_on_commit=False)
    store(sessions, age=timedelta(days=40), n=7, tag="old")
    store(sessions, age=timedelta(days=1), n=3, tag="new")
    # 0.01 minutes: a pass every 0.6 s, so the second one is seen within the test.
    job = Retention(settings=RetentionSettings(interactions_days=30, every_minutes=0.01,
                                               batch_size=2), sessions=sessions)

    async def run() -> None:
        await job.start()
        try:
            for _ in range(100):
                if job.last is not None:
                    break
                await asyncio.sleep(0.05)
            assert job.last is not None and job.last["deleted"]["interactions"] == 7  # type: ignore[index]
            store(sessions, age=timedelta(days=31), n=2, tag="late")  # expired meanwhile
            for _ in range(100):
                if count(sessions, "late") == 0:
                    break
                await asyncio.sleep(0.05)
        finally:
            await job.stop()
        # Stopped (leadership lost), on the same running loop: it deletes nothing more.
        store(sessions, age=timedelta(days=40), n=1, tag="after")
        await asyncio.sleep(1.5)

    asyncio.run(run())
    assert (count(sessions, "old"), count(sessions, "late"), count(sessions, "new")) == (0, 0, 3)
    assert count(sessions, "after") == 1


def test_with_no_period_the_job_never_runs(engine):
    sessions = sessionmaker(engine, expire_on_commit=False)
    store(sessions, age=timedelta(days=4000), n=1, tag="ancient")
    job = Retention(settings=RetentionSettings(every_minutes=0.01), sessions=sessions)

    async def run() -> None:
        await job.start()
        await asyncio.sleep(1.0)
        await job.stop()

    asyncio.run(run())
    assert not job.enabled and job.last is None and count(sessions, "ancient") == 1
