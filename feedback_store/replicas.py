"""Gateway replicas' heartbeats: who is alive, who leads, and what each one serves.

Each replica rewrites its own row every heartbeat (an upsert), stamped with the database's clock.
A replica whose row is older than a caller's `stale_s` is taken as gone (it is still listed, so a
person sees what died). Functions flush, never commit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from lifelong.feedback_store.leases import db_now
from lifelong.feedback_store.models import Replica


@dataclass(frozen=True)
class ReplicaView:
    replica_id: str
    url: str | None
    started_at: datetime
    seen_s_ago: float
    leader: bool
    champion: str | None
    servers: list[dict[str, Any]]
    canary: dict[str, Any] | None = None  # the canary it routes to, with its tallies

    def alive(self, stale_s: float) -> bool:
        return self.seen_s_ago <= stale_s


def beat(session: Session, *, replica_id: str, url: str | None, started_at: datetime,
         leader: bool, champion: str | None, servers: list[dict[str, Any]],
         canary: dict[str, Any] | None = None) -> None:
    """Write `replica_id`'s heartbeat (insert or overwrite its row)."""
    values = dict(replica_id=replica_id, url=url, started_at=started_at, seen_at=db_now(session),
                  leader=leader, champion=champion, servers=servers, canary=canary)
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    statement = insert(Replica).values(**values)
    session.execute(statement.on_conflict_do_update(
        index_elements=["replica_id"],
        set_={key: statement.excluded[key] for key in values if key != "replica_id"}))
    session.flush()


def listed(session: Session) -> list[ReplicaView]:
    """Every replica that has beaten, by id, with how long ago it last did."""
    rows = session.execute(
        select(Replica, (db_now(session) - Replica.seen_at).label("ago"))
        .order_by(Replica.replica_id)
    ).all()
    return [ReplicaView(replica_id=r.replica_id, url=r.url, started_at=r.started_at,
                        seen_s_ago=float(ago), leader=r.leader, champion=r.champion,
                        servers=list(r.servers), canary=r.canary) for r, ago in rows]


def forget(session: Session, *, replica_id: str) -> None:
    """Remove a replica's row (its clean shutdown)."""
    session.execute(delete(Replica).where(Replica.replica_id == replica_id))
    session.flush()
