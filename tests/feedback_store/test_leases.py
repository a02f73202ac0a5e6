"""The leadership lease on real SQLite and PostgreSQL: one holder at a time, fenced epochs, and
the database's clock deciding expiry."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from lifelong.feedback_store import leases
from lifelong.feedback_store.leases import LEARNING, NotLeader


def take(sessions: sessionmaker[Session], holder: str, ttl_s: float = 5.0) -> int | None:
    with sessions.begin() as session:
        return leases.acquire(session, name=LEARNING, holder=holder, ttl_s=ttl_s,
                              holder_url=f"http://{holder}:8000")


def test_a_free_lease_is_taken_and_a_running_one_is_refused(sessions):
    assert take(sessions, "a") == 1
    assert take(sessions, "b") is None
    with sessions() as session:
        lease = leases.view(session, name=LEARNING)
    assert lease is not None
    assert (lease.holder, lease.holder_url, lease.epoch) == ("a", "http://a:8000", 1)
    assert 4.0 < lease.expires_in_s <= 5.0


def test_an_expired_lease_goes_to_the_next_replica_under_a_new_epoch(sessions):
    assert take(sessions, "a", ttl_s=0.3) == 1
    time.sleep(0.5)
    assert take(sessions, "b") == 2
    with sessions.begin() as session:  # the deposed holder can neither renew nor pass the fence
        assert not leases.renew(session, name=LEARNING, holder="a", epoch=1, ttl_s=5)
    with pytest.raises(NotLeader, match="held by b") as refused, sessions.begin() as session:
        leases.check(session, name=LEARNING, epoch=1)
    assert refused.value.holder == "b"
    assert refused.value.holder_url == "http://b:8000"
    with sessions.begin() as session:
        leases.check(session, name=LEARNING, epoch=2)


def test_renewal_keeps_the_lease_past_its_first_expiry(sessions):
    assert take(sessions, "a", ttl_s=0.6) == 1
    for _ in range(3):
        time.sleep(0.3)
        with sessions.begin() as session:
            assert leases.renew(session, name=LEARNING, holder="a", epoch=1, ttl_s=0.6)
    assert take(sessions, "b") is None


def test_an_expired_lease_fails_the_fence_even_before_anyone_takes_it(sessions):
    assert take(sessions, "a", ttl_s=0.2) == 1
    time.sleep(0.4)
    with pytest.raises(NotLeader, match="expired"), sessions.begin() as session:
        leases.check(session, name=LEARNING, epoch=1)


def test_a_restarted_replica_takes_its_own_lease_back_at_once_and_fences_its_former_self(sessions):
    assert take(sessions, "a", ttl_s=60) == 1
    assert take(sessions, "a", ttl_s=60) == 2
    with sessions.begin() as session:
        assert not leases.renew(session, name=LEARNING, holder="a", epoch=1, ttl_s=60)


def test_a_released_lease_is_free_at_once(sessions):
    assert take(sessions, "a", ttl_s=60) == 1
    with sessions.begin() as session:
        assert leases.release(session, name=LEARNING, holder="a", epoch=1)
    assert take(sessions, "b") == 2


def test_many_replicas_racing_for_a_free_lease_elect_exactly_one(engine: Engine):
    sessions = sessionmaker(engine)
    winners: list[str] = []
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def race(holder: str) -> None:
        start.wait()
        for _ in range(20):  # SQLite answers a writer that waited too long with "locked"
            try:
                if take(sessions, holder) is not None:
                    winners.append(holder)
                return
            except Exception as exc:  # noqa: BLE001 - retried; kept if it never succeeds
                errors.append(exc)
                time.sleep(0.05)

    threads = [threading.Thread(target=race, args=(f"r{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1, (winners, errors[:3])


@pytest.mark.postgres
def test_on_postgresql_a_fenced_write_holds_off_a_takeover_until_it_commits(request):
    """The fence locks the lease row: a replica taking the lease over waits for the leader's
    transaction, so the leader's write commits while it still holds the lease."""
    engine: Engine = request.getfixturevalue("migrated_postgres_engine")
    from sqlalchemy import text

    with engine.begin() as connection:
        connection.execute(text("TRUNCATE leases"))
    sessions = sessionmaker(engine)
    assert take(sessions, "a", ttl_s=0.5) == 1
    took: list[float] = []
    with sessions.begin() as session:
        leases.check(session, name=LEARNING, epoch=1)
        time.sleep(0.6)  # the lease expires while the fenced transaction is open
        thread = threading.Thread(target=lambda: took.append(
            (take(sessions, "b"), time.monotonic())[1]))
        thread.start()
        time.sleep(0.5)
        assert not took, "the takeover did not wait for the fenced transaction"
        committed = time.monotonic()
    thread.join(10)
    assert took and took[0] >= committed
