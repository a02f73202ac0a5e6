"""Lineage to data: the feedback ids an adapter learned from, kept as ranges, and how many of
them (its own and its ancestors') have been deleted since."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from lifelong.feedback_store import lineage, registry
from lifelong.feedback_store.deletion import Subject, erase
from lifelong.feedback_store.feedback import add_feedback
from lifelong.feedback_store.interactions import add_interactions
from lifelong.feedback_store.models import AdapterFeedback
from lifelong.feedback_store.records import NewInteraction, Rating


def test_ids_become_the_fewest_ranges_and_back():
    assert lineage.id_ranges([7, 1, 2, 3, 3, 9, 10]) == [(1, 3), (7, 7), (9, 10)]
    assert lineage.id_ranges([]) == []
    assert lineage.merged([(3, 8), (1, 5), (9, 9), (20, 21)]) == [(1, 9), (20, 21)]


def _rated(sessions: sessionmaker[Session], build: Callable[..., NewInteraction], *,
           user_key: str, n: int) -> list[int]:
    records = [build(user_key=user_key) for _ in range(n)]
    with sessions.begin() as session:
        add_interactions(session, records=records, heldout_fraction=0.0)
        rows = add_feedback(session, items=[Rating(r.id, 1.0) for r in records],
                            principal="alice", admin=True)
        return [row.id for row in rows]


def _register(sessions: sessionmaker[Session], version: str, parent: str | None,
              ids: list[int]) -> None:
    with sessions.begin() as session:
        registry.register(session, version=version, path=f"/adapters/{version}",
                          checksum="sha256:0", parent_version=parent)
        lineage.record(session, version=version, feedback_ids=ids)


def test_an_adapter_trained_before_an_erasure_is_flagged_and_so_is_its_child(
    sessions: sessionmaker[Session], interaction_record: Callable[..., NewInteraction]
):
    kept = _rated(sessions, interaction_record, user_key="kept", n=30)
    erased = _rated(sessions, interaction_record, user_key="erased", n=12)
    later = _rated(sessions, interaction_record, user_key="kept", n=5)
    # v0001 learned from every other id (a sparse set: many ranges), v0002 from the later ones
    # plus a replay of some of v0001's.
    first = (kept + erased)[::2]
    _register(sessions, "v0001", None, first)
    _register(sessions, "v0002", "v0001", later + kept[:4])
    with sessions() as session:
        ranges = session.scalar(select(func.count()).select_from(AdapterFeedback)
                                .where(AdapterFeedback.adapter_version == "v0001"))
        assert ranges == len(lineage.id_ranges(first))
        before = lineage.lineage(session, version="v0002")
    assert (before.trained, before.deleted, before.chain_deleted) == (9, 0, 0)
    assert not before.flagged

    erase(sessions, subject=Subject(user_key="erased"))

    with sessions() as session:
        parent = lineage.lineage(session, version="v0001")
        child = lineage.lineage(session, version="v0002")
    assert parent.trained == len(first) == 21
    assert parent.deleted == len(set(first) & set(erased)) == 6
    assert parent.flagged
    assert (child.trained, child.deleted) == (9, 0)  # its own data is intact...
    assert child.chain == ("v0002", "v0001")
    assert child.chain_trained == len(set(first) | set(later) | set(kept[:4]))
    assert child.chain_deleted == 6  # ...but its weights carry its parent's
    assert child.flagged and child.unrecorded == ()


def test_an_adapter_with_no_recorded_ids_says_so(sessions: sessionmaker[Session]):
    _register(sessions, "v0001", None, [])  # e.g. GRPO alone: it learned from tasks
    with sessions() as session:
        found = lineage.lineage(session, version="v0001")
    assert (found.trained, found.deleted, found.unrecorded) == (0, 0, ("v0001",))
