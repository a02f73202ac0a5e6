"""Named leases with fencing epochs: how exactly one gateway replica leads the learning loop.

A lease is one row. Taking it is one conditional UPDATE (free, expired, or already ours), so two
replicas racing for it cannot both win: the database applies the two UPDATEs one after the other
and the second sees the first's unexpired lease. Every change of holder raises `epoch`; a holder
renews only under its own epoch, and work that must come from the leader alone (starting a
training run, a promotion by the gate) checks the epoch in its own transaction (`check`). So a
deposed leader that has not noticed yet (paused, cut off from the database) can still try, but the
database refuses its write: split brain cannot commit anything.

Times are the database's own clock (seconds since 1970): replicas' clocks may disagree; the
database's is the one they share. Functions flush, never commit: the caller frames the transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import ColumnElement, literal_column, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from lifelong.feedback_store.models import Lease

LEARNING = "learning"  # the learning loop's lease


class NotLeader(Exception):
    """This replica does not hold the lease (any more); `holder`/`holder_url`: who does."""

    def __init__(self, message: str, *, holder: str | None = None,
                 holder_url: str | None = None) -> None:
        super().__init__(message)
        self.holder = holder
        self.holder_url = holder_url


@dataclass(frozen=True)
class LeaseView:
    name: str
    holder: str
    holder_url: str | None
    epoch: int
    expires_in_s: float  # negative: expired
    acquired_at: datetime


def db_now(session: Session) -> ColumnElement[float]:
    """The database's clock in seconds since 1970, as an SQL expression."""
    if session.get_bind().dialect.name == "postgresql":
        # clock_timestamp(), not now(): now() is the transaction's start.
        return literal_column("extract(epoch from clock_timestamp())::float8")
    return literal_column("((julianday('now') - 2440587.5) * 86400.0)")


def acquire(session: Session, *, name: str, holder: str, ttl_s: float,
            holder_url: str | None = None) -> int | None:
    """Take the lease if it is free, expired, or `holder`'s own (a restarted replica takes its
    lease back at once, under a new epoch that fences its former self). The new epoch, or None
    if another holder's lease is still running."""
    now = db_now(session)
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    session.execute(
        insert(Lease).values(name=name, holder=holder, holder_url=holder_url, epoch=0,
                             expires_at=0.0, acquired_at=datetime.now(UTC))
        .on_conflict_do_nothing(index_elements=["name"])
    )
    taken = session.execute(
        update(Lease)
        .where(Lease.name == name, (Lease.expires_at < now) | (Lease.holder == holder))
        .values(holder=holder, holder_url=holder_url, epoch=Lease.epoch + 1,
                expires_at=now + ttl_s, acquired_at=datetime.now(UTC))
        .execution_options(synchronize_session=False)
    )
    if taken.rowcount != 1:  # type: ignore[attr-defined]
        return None
    return session.scalar(select(Lease.epoch).where(Lease.name == name))


def renew(session: Session, *, name: str, holder: str, epoch: int, ttl_s: float) -> bool:
    """Extend `holder`'s lease by `ttl_s` from now; False if it is no longer theirs (taken over
    after it expired)."""
    renewed = session.execute(
        update(Lease)
        .where(Lease.name == name, Lease.holder == holder, Lease.epoch == epoch)
        .values(expires_at=db_now(session) + ttl_s)
        .execution_options(synchronize_session=False)
    )
    return renewed.rowcount == 1  # type: ignore[attr-defined]


def release(session: Session, *, name: str, holder: str, epoch: int) -> bool:
    """Give the lease up now (a clean shutdown), so another replica need not wait for it to
    expire. False if it was not `holder`'s any more."""
    released = session.execute(
        update(Lease)
        .where(Lease.name == name, Lease.holder == holder, Lease.epoch == epoch)
        .values(expires_at=0.0)
        .execution_options(synchronize_session=False)
    )
    return released.rowcount == 1  # type: ignore[attr-defined]


def view(session: Session, *, name: str) -> LeaseView | None:
    """The lease as it stands (None: never taken)."""
    row = session.execute(
        select(Lease, (Lease.expires_at - db_now(session)).label("left")).where(Lease.name == name)
    ).one_or_none()
    if row is None:
        return None
    lease, left = row
    return LeaseView(name=lease.name, holder=lease.holder, holder_url=lease.holder_url,
                     epoch=lease.epoch, expires_in_s=float(left), acquired_at=lease.acquired_at)


def check(session: Session, *, name: str, epoch: int) -> None:
    """In the caller's transaction: the lease is still held under `epoch` and unexpired, and on
    PostgreSQL its row is locked until the transaction ends, so no other replica can take the
    lease between this check and the caller's commit. (SQLite runs one writer at a time, and a
    write after a read that another writer overtook fails with SQLITE_BUSY instead of
    committing.) Raises NotLeader."""
    query = select(Lease, (Lease.expires_at - db_now(session)).label("left")).where(
        Lease.name == name)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    row = session.execute(query).one_or_none()
    if row is None:
        raise NotLeader(f"nobody holds the {name} lease")
    lease, left = row
    if lease.epoch != epoch or left <= 0:
        raise NotLeader(
            f"the {name} lease moved on (epoch {lease.epoch}, held by {lease.holder}; this "
            f"replica held epoch {epoch})" if lease.epoch != epoch else
            f"the {name} lease (epoch {epoch}) expired before this write",
            holder=lease.holder, holder_url=lease.holder_url)
