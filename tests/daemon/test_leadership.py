"""Leadership of the learning loop between replicas sharing one real database (SQLite and
PostgreSQL): one leads, another takes over in bounded time when it stops or dies, and a leader
that cannot renew steps down before anyone else could be elected."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from lifelong.daemon.leadership import SAFETY, Leadership
from lifelong.feedback_store.leases import NotLeader

LEASE_S = 1.5


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


class Loop:
    """What a replica's learning loop saw: elections and depositions, with their times."""

    def __init__(self) -> None:
        self.events: list[tuple[str, float]] = []

    async def elected(self, epoch: int) -> None:
        self.events.append((f"elected {epoch}", time.monotonic()))

    async def deposed(self, reason: str) -> None:
        self.events.append((f"deposed: {reason}", time.monotonic()))


def replica(sessions: sessionmaker[Session], name: str, loop: Loop) -> Leadership:
    return Leadership(sessions=sessions, holder=name, holder_url=f"http://{name}",
                      lease_s=LEASE_S, on_elected=loop.elected, on_deposed=loop.deposed)


async def until(condition, timeout_s: float) -> float:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout_s:
            raise AssertionError("timed out")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


def test_one_replica_leads_and_a_clean_stop_hands_over_within_one_try(sessions):
    async def main() -> None:
        loops = Loop(), Loop()
        a, b = replica(sessions, "a", loops[0]), replica(sessions, "b", loops[1])
        await a.start()
        await b.start()
        assert a.leading and not b.leading
        assert [e for e, _ in loops[0].events] == ["elected 1"]
        assert loops[1].events == []
        with pytest.raises(NotLeader), sessions.begin() as session:
            b.check(session)
        await a.stop()  # releases the lease
        waited = await until(lambda: b.leading, LEASE_S)
        assert waited <= b.try_every_s + 0.5
        with sessions.begin() as session:
            b.check(session)
        assert await asyncio.to_thread(b.current) is not None
        await b.stop()

    asyncio.run(main())


def test_a_dead_leader_is_replaced_within_the_lease_and_its_late_write_is_refused(sessions):
    async def main() -> None:
        loops = Loop(), Loop()
        a, b = replica(sessions, "a", loops[0]), replica(sessions, "b", loops[1])
        await a.start()
        await b.start()
        epoch = a.epoch
        assert a._task is not None
        a._task.cancel()  # dies: no renewal, no release
        died = time.monotonic()
        await until(lambda: b.leading, 3 * LEASE_S)
        assert time.monotonic() - died <= LEASE_S + b.try_every_s + 0.5
        assert b.epoch == (epoch or 0) + 1
        # The dead leader's view of itself is stale: the database refuses its fenced write.
        from lifelong.feedback_store import leases

        with pytest.raises(NotLeader, match="held by b"), sessions.begin() as session:
            leases.check(session, name="learning", epoch=epoch or 0)
        await b.stop()

    asyncio.run(main())


def test_a_leader_cut_off_from_the_database_steps_down_before_its_lease_can_pass(
    sessions, monkeypatch: pytest.MonkeyPatch,
):
    async def main() -> None:
        loops = Loop(), Loop()
        a, b = replica(sessions, "a", loops[0]), replica(sessions, "b", loops[1])
        await a.start()
        elected = loops[0].events[0][1]

        def unreachable(epoch: int) -> bool:
            raise ConnectionError("database unreachable")

        monkeypatch.setattr(a, "_renew", unreachable)
        await b.start()
        await until(lambda: not a.leading and len(loops[0].events) == 2, 2 * LEASE_S)
        deposed_at = loops[0].events[1][1]
        assert loops[0].events[1][0].startswith("deposed: could not renew")
        assert deposed_at - elected <= LEASE_S * (1 - SAFETY) + 0.3
        await until(lambda: b.leading, 2 * LEASE_S)
        assert loops[1].events[0][1] > deposed_at  # never two leaders at once
        a._task.cancel()  # type: ignore[union-attr]
        await b.stop()

    asyncio.run(main())


def test_a_failure_to_start_the_loop_on_the_first_election_fails_the_start(sessions):
    async def boom(epoch: int) -> None:
        raise RuntimeError("recovery failed")

    async def main() -> None:
        a = Leadership(sessions=sessions, holder="a", holder_url=None, lease_s=LEASE_S,
                       on_elected=boom, on_deposed=Loop().deposed)
        with pytest.raises(RuntimeError, match="recovery failed"):
            await a.start()
        await a.stop()  # steps down and releases: another replica may lead at once
        b = replica(sessions, "b", Loop())
        await b.start()
        assert b.leading
        await b.stop()

    asyncio.run(main())
