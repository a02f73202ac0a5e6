"""The adapter registry: trained adapters, their lineage and status, and the one champion.

Statuses: `candidate` (registered, not judged), `approved` (the gate let it through; not yet
promoted), `champion` (served by default; at most one, which a partial unique index enforces in
the database), `retired` (a former champion), `rejected` (the gate refused it). Functions
flush, never commit: the caller frames the transaction.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from lifelong.feedback_store.errors import DuplicateAdapter, UnknownAdapter, UnknownRun
from lifelong.feedback_store.models import ADAPTER_STATUSES, Adapter, Promotion, TrainingRun

_PROMOTION_LOCK = 0x6C69_6665_6368_616D  # any constant shared by all promoting processes


def register(
    session: Session,
    *,
    version: str,
    path: str,
    checksum: str,
    parent_version: str | None = None,
    training_run_id: int | None = None,
    data_watermark: int | None = None,
) -> Adapter:
    """Add a `candidate` adapter. Raises DuplicateAdapter, UnknownAdapter (for the parent) or
    UnknownRun."""
    if session.get(Adapter, version) is not None:
        raise DuplicateAdapter(f"adapter {version!r} is already registered", field="version")
    if parent_version is not None and session.get(Adapter, parent_version) is None:
        raise UnknownAdapter(f"no adapter {parent_version!r}", field="parent_version")
    if training_run_id is not None and session.get(TrainingRun, training_run_id) is None:
        raise UnknownRun(f"no training run {training_run_id}", field="training_run_id")
    row = Adapter(
        version=version, parent_version=parent_version, path=path, checksum=checksum,
        status="candidate", created_at=datetime.now(UTC), forced=False,
        training_run_id=training_run_id, data_watermark=data_watermark,
    )
    session.add(row)
    session.flush()
    return row


def get(session: Session, *, version: str) -> Adapter:
    """The adapter `version`. Raises UnknownAdapter."""
    row = session.get(Adapter, version)
    if row is None:
        raise UnknownAdapter(f"no adapter {version!r}", field="version")
    return row


def champion(session: Session) -> Adapter | None:
    """The current champion; None while the base model is."""
    return session.scalar(select(Adapter).where(Adapter.status == "champion"))


def set_champion(
    session: Session,
    *,
    version: str | None,
    promoted_by: str,
    forced: bool = False,
    kind: str = "promote",
    reason: str | None = None,
) -> Adapter | None:
    """Make `version` the champion (None: the base model) and retire the previous one, logging the
    change in `promotions`, all in the caller's transaction. `forced`: promoted without the
    gate's approval. Raises UnknownAdapter."""
    if session.get_bind().dialect.name == "postgresql":
        # Concurrent promotions take turns, so the last one wins instead of one failing on the
        # unique index.
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PROMOTION_LOCK})
    else:
        # SQLite writes one at a time, but pysqlite runs reads before a transaction's first
        # write outside it: take the write lock first (a write that changes nothing still
        # takes it), then read afresh. Without it two promotions racing read the same champion,
        # and one left none (its in-memory row already said "champion", so no UPDATE was sent;
        # 0 champions once in a CI run).
        session.flush()  # the caller's pending changes first: expiring must not drop them
        session.execute(update(Adapter).where(text("0")).values(status=Adapter.status)
                        .execution_options(synchronize_session=False))
        for held in [o for o in session.identity_map.values() if isinstance(o, Adapter)]:
            session.expire(held)
    row = get(session, version=version) if version is not None else None
    current = champion(session)
    if current is not None and row is current:
        return row
    if current is None and row is None:
        return None
    session.execute(
        update(Adapter)
        .where(Adapter.status == "champion")
        .values(status="retired")
        .execution_options(synchronize_session="fetch")
    )
    # The demotion must reach the database before the promotion, or the index would see two.
    session.flush()
    now = datetime.now(UTC)
    if row is not None:
        row.status = "champion"
        row.promoted_at = now
        row.promoted_by = promoted_by
        row.forced = forced
    session.add(Promotion(
        at=now, kind=kind, from_version=current.version if current else None, to_version=version,
        by=promoted_by, forced=forced, reason=reason,
    ))
    session.flush()
    return row


class NothingToRollBack(ValueError):
    """No earlier champion to return to."""


def previous_champion(session: Session) -> str | None:
    """What the current champion replaced (None: the base model), from its latest promotion.
    Raises NothingToRollBack while the base model serves or no promotion is on record."""
    current = champion(session)
    if current is None:
        raise NothingToRollBack("the base model is serving: there is nothing to roll back")
    last = session.scalar(
        select(Promotion)
        .where(Promotion.kind == "promote", Promotion.to_version == current.version)
        .order_by(Promotion.id.desc())
        .limit(1)
    )
    if last is None:
        raise NothingToRollBack(f"no promotion of {current.version} is on record")
    return last.from_version


def promotions(session: Session, *, limit: int = 50) -> list[Promotion]:
    """The latest changes of champion, newest first."""
    return list(session.scalars(select(Promotion).order_by(Promotion.id.desc()).limit(limit)))


def reject(session: Session, *, version: str) -> Adapter:
    """Mark a candidate as rejected by the gate. Raises UnknownAdapter; ValueError if it is
    the champion (promote another one first)."""
    row = get(session, version=version)
    if row.status == "champion":
        raise ValueError(f"adapter {version!r} is the champion; promote another one first")
    row.status = "rejected"
    session.flush()
    return row


def approve(session: Session, *, version: str) -> Adapter:
    """Mark a judged adapter as approved by the gate (a rejected one may be judged again, on
    more evidence). Raises UnknownAdapter; ValueError for a champion or a retired one."""
    row = get(session, version=version)
    if row.status not in ("candidate", "approved", "rejected"):
        raise ValueError(f"adapter {version!r} is {row.status}; only a candidate can be approved")
    row.status = "approved"
    session.flush()
    return row


def list_adapters(session: Session, *, status: str | None = None) -> list[Adapter]:
    """Registered adapters, oldest first, optionally only those with `status`."""
    if status is not None and status not in ADAPTER_STATUSES:
        raise ValueError(f"status must be one of {ADAPTER_STATUSES}, got {status!r}")
    query = select(Adapter).order_by(Adapter.created_at, Adapter.version)
    if status is not None:
        query = query.where(Adapter.status == status)
    return list(session.scalars(query))
