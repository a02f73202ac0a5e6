"""The adapter registry: lineage, statuses, and exactly one champion, whatever happens."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from lifelong.feedback_store import registry
from lifelong.feedback_store.errors import DuplicateAdapter, UnknownAdapter, UnknownRun
from lifelong.feedback_store.models import Adapter


def register(sessions, version, **fields):
    with sessions.begin() as session:
        return registry.register(
            session, version=version, path=f"/adapters/{version}", checksum="sha256:0", **fields
        )


def champions(sessions) -> list[str]:
    with sessions() as session:
        return list(session.scalars(select(Adapter.version).where(Adapter.status == "champion")))


def test_registered_adapter_is_a_candidate_with_its_lineage(sessions):
    register(sessions, "v1")
    register(sessions, "v2", parent_version="v1", data_watermark=42)
    with sessions() as session:
        row = registry.get(session, version="v2")
        assert (row.status, row.parent_version, row.data_watermark) == ("candidate", "v1", 42)
        assert (row.forced, row.promoted_at, row.promoted_by) == (False, None, None)
        assert row.created_at.tzinfo is not None
        assert [a.version for a in registry.list_adapters(session)] == ["v1", "v2"]
        assert registry.champion(session) is None


def test_unknown_adapter_raises(sessions):
    with sessions() as session, pytest.raises(UnknownAdapter) as raised:
        registry.get(session, version="v9")
    assert raised.value.field == "version"
    with sessions() as session, pytest.raises(UnknownAdapter):
        registry.set_champion(session, version="v9", promoted_by="gate")


def test_registering_with_unknown_parent_or_run_raises(sessions):
    with pytest.raises(UnknownAdapter) as raised:
        register(sessions, "v2", parent_version="v1")
    assert raised.value.field == "parent_version"
    with pytest.raises(UnknownRun):
        register(sessions, "v2", training_run_id=123)


def test_registering_a_version_twice_raises(sessions):
    register(sessions, "v1")
    with pytest.raises(DuplicateAdapter):
        register(sessions, "v1")


def test_set_champion_retires_the_previous_one(sessions):
    for version in ("v1", "v2"):
        register(sessions, version)
    with sessions.begin() as session:
        registry.set_champion(session, version="v1", promoted_by="gate")
    with sessions.begin() as session:
        row = registry.set_champion(session, version="v2", promoted_by="ops", forced=True)
        assert (row.status, row.promoted_by, row.forced) == ("champion", "ops", True)
    with sessions() as session:
        assert registry.champion(session).version == "v2"
        assert registry.get(session, version="v1").status == "retired"
        assert [a.version for a in registry.list_adapters(session, status="retired")] == ["v1"]
        assert registry.champion(session).promoted_at is not None


def test_promoting_the_champion_again_changes_nothing(sessions):
    register(sessions, "v1")
    for _ in range(2):
        with sessions.begin() as session:
            registry.set_champion(session, version="v1", promoted_by="gate")
    assert champions(sessions) == ["v1"]


def test_a_rejected_adapter_is_marked_and_the_champion_cannot_be(sessions):
    register(sessions, "v1")
    register(sessions, "v2")
    with sessions.begin() as session:
        registry.set_champion(session, version="v1", promoted_by="gate")
        assert registry.reject(session, version="v2").status == "rejected"
    with sessions() as session, pytest.raises(ValueError, match="champion"):
        registry.reject(session, version="v1")


def test_database_refuses_a_second_champion(sessions):
    register(sessions, "v1")
    register(sessions, "v2")
    with sessions.begin() as session:
        registry.set_champion(session, version="v1", promoted_by="gate")
    # Bypass the registry: the partial unique index alone must refuse it.
    with pytest.raises(IntegrityError), sessions.begin() as session:
        session.execute(update(Adapter).where(Adapter.version == "v2").values(status="champion"))
    assert champions(sessions) == ["v1"]


def test_concurrent_promotions_leave_exactly_one_champion(sessions):
    versions = [f"v{i}" for i in range(8)]
    for version in versions:
        register(sessions, version)
    start = threading.Barrier(len(versions))
    errors: list[Exception] = []

    def promote(version: str) -> None:
        start.wait()
        try:
            for _ in range(5):
                with sessions.begin() as session:
                    registry.set_champion(session, version=version, promoted_by="gate")
        except Exception as exc:  # collected: the assertion below names it
            errors.append(exc)

    threads = [threading.Thread(target=promote, args=(v,)) for v in versions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(champions(sessions)) == 1
    with sessions() as session:
        statuses = session.execute(
            select(Adapter.status, func.count()).group_by(Adapter.status)
        ).all()
    assert dict((status, n) for status, n in statuses) == {"champion": 1, "retired": 7}


def test_a_judged_adapter_is_approved_and_an_approved_one_can_be_promoted(sessions):
    register(sessions, "v1")
    register(sessions, "v2")
    with sessions.begin() as session:
        assert registry.approve(session, version="v1").status == "approved"
        registry.reject(session, version="v2")
        assert registry.approve(session, version="v2").status == "approved"  # judged again
        registry.set_champion(session, version="v1", promoted_by="gate")
        with pytest.raises(ValueError, match="champion; only a candidate"):
            registry.approve(session, version="v1")
    assert champions(sessions) == ["v1"]


def test_every_change_of_champion_is_logged_and_rollback_walks_the_lineage_back(sessions):
    for version in ("v1", "v2", "v3"):
        register(sessions, version)
    with sessions.begin() as session:
        with pytest.raises(registry.NothingToRollBack, match="base model is serving"):
            registry.previous_champion(session)
        registry.set_champion(session, version="v1", promoted_by="gate")
        registry.set_champion(session, version="v2", promoted_by="gate")
        registry.set_champion(session, version="v3", promoted_by="ops", forced=True, reason="hotfix")
    with sessions.begin() as session:
        assert registry.previous_champion(session) == "v2"
        registry.set_champion(session, version="v2", promoted_by="ops", kind="rollback")
        assert registry.previous_champion(session) == "v1"  # not back to v3
        registry.set_champion(session, version="v1", promoted_by="ops", kind="rollback")
        assert registry.previous_champion(session) is None  # the base model
        registry.set_champion(session, version=None, promoted_by="ops", kind="rollback")
        assert registry.champion(session) is None
    with sessions() as session:
        log = [(p.kind, p.from_version, p.to_version, p.by, p.forced)
               for p in reversed(registry.promotions(session))]
        assert log == [
            ("promote", None, "v1", "gate", False), ("promote", "v1", "v2", "gate", False),
            ("promote", "v2", "v3", "ops", True), ("rollback", "v3", "v2", "ops", False),
            ("rollback", "v2", "v1", "ops", False), ("rollback", "v1", None, "ops", False),
        ]
        assert registry.get(session, version="v3").status == "retired"
