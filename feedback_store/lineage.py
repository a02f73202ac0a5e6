"""What each adapter was trained on, and how much of it has since been deleted.

An adapter's feedback ids are kept as ranges of consecutive ids (`adapter_feedback`): a run that
trains on everything new since its parent reads long runs of ids, so a few rows stand for
thousands, and counting what is left of them is one indexed count. Feedback ids are never reused
(PostgreSQL sequences; AUTOINCREMENT on SQLite), so an id in a range that no longer exists in
`feedback` was deleted (erasure or retention). The adapter folder's `feedback_ids.json`, under its
manifest's checksum, stays the artifact's own copy; these rows are that list, queryable.

An adapter's weights carry its parent's learning too, so `lineage` reports the whole chain:
the adapter and every ancestor back to the base model.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.orm import Session

from lifelong.feedback_store.errors import UnknownAdapter
from lifelong.feedback_store.models import Adapter, AdapterFeedback, Feedback


def id_ranges(ids: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted inclusive ranges covering exactly `ids`: [1, 2, 3, 7] -> [(1, 3), (7, 7)]."""
    ranges: list[tuple[int, int]] = []
    for i in sorted(set(ids)):
        if ranges and ranges[-1][1] == i - 1:
            ranges[-1] = (ranges[-1][0], i)
        else:
            ranges.append((i, i))
    return ranges


def record(session: Session, *, version: str, feedback_ids: Iterable[int]) -> int:
    """Record the feedback ids `version` was trained on (flushed; the caller commits, in the
    transaction that registers it). Returns the number of ranges."""
    ranges = id_ranges(feedback_ids)
    session.add_all(AdapterFeedback(adapter_version=version, first_id=first, last_id=last)
                    for first, last in ranges)
    session.flush()
    return len(ranges)


def trained_ids(session: Session, *, version: str) -> list[tuple[int, int]]:
    """The ranges of feedback ids `version` itself was trained on, in order."""
    rows = session.execute(select(AdapterFeedback.first_id, AdapterFeedback.last_id)
                           .where(AdapterFeedback.adapter_version == version)
                           .order_by(AdapterFeedback.first_id))
    return [(row.first_id, row.last_id) for row in rows]


def merged(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Overlapping or touching ranges joined: [(1, 5), (3, 8), (9, 9)] -> [(1, 9)]."""
    out: list[tuple[int, int]] = []
    for first, last in sorted(ranges):
        if out and first <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], last))
        else:
            out.append((first, last))
    return out


@dataclass(frozen=True)
class DataLineage:
    """`version`'s own training data and its chain's (itself and its ancestors), in feedback
    rows: how many it was trained on and how many of those have been deleted since."""

    version: str
    chain: tuple[str, ...]  # the adapter first, then its parent, ... back to the base model
    trained: int
    deleted: int
    chain_trained: int  # distinct ids over the chain (a replayed row counts once)
    chain_deleted: int
    unrecorded: tuple[str, ...]  # adapters of the chain with no ranges (GRPO-only or pre-0010)

    @property
    def flagged(self) -> bool:
        """Whether any of the chain's training data has been deleted since."""
        return self.chain_deleted > 0


def lineage(session: Session, *, version: str) -> DataLineage:
    """`version`'s data lineage. Raises UnknownAdapter."""
    chain: list[str] = []
    current: str | None = version
    while current is not None and current not in chain:
        adapter = session.get(Adapter, current)
        if adapter is None:
            raise UnknownAdapter(f"no adapter {current!r}", field="version")
        chain.append(current)
        current = adapter.parent_version
    rows = session.execute(select(AdapterFeedback.adapter_version, AdapterFeedback.first_id,
                                  AdapterFeedback.last_id)
                           .where(AdapterFeedback.adapter_version.in_(chain))).all()
    own = [(r.first_id, r.last_id) for r in rows if r.adapter_version == version]
    trained = sum(last - first + 1 for first, last in own)
    chain_ranges = merged((r.first_id, r.last_id) for r in rows)
    chain_trained = sum(last - first + 1 for first, last in chain_ranges)
    present = _present(session, own)
    chain_present = _present(session, chain_ranges)
    recorded = {r.adapter_version for r in rows}
    return DataLineage(
        version=version, chain=tuple(chain), trained=trained, deleted=trained - present,
        chain_trained=chain_trained, chain_deleted=chain_trained - chain_present,
        unrecorded=tuple(v for v in chain if v not in recorded),
    )


def _present(session: Session, ranges: list[tuple[int, int]]) -> int:
    """How many ids within these disjoint ranges are still in `feedback`: one count per chunk of
    ranges, each an index range scan."""
    present = 0
    for start in range(0, len(ranges), 200):
        chunk = ranges[start:start + 200]
        present += session.scalar(select(func.count()).select_from(Feedback).where(
            _any(chunk))) or 0
    return present


def _any(ranges: list[tuple[int, int]]) -> ColumnElement[bool]:
    return or_(*(and_(Feedback.id >= first, Feedback.id <= last) for first, last in ranges))
