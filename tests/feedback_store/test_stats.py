"""The store's learning-side figures (`stats.py`), read as plain dataclasses; their Prometheus
families are tested in tests/daemon/test_state_collector.py."""

from __future__ import annotations

from sqlalchemy import Engine
from sqlalchemy.orm import sessionmaker

from lifelong.feedback_store import registry
from lifelong.feedback_store.runs import finish_training_run, start_training_run
from lifelong.feedback_store.stats import read_stats, recent_versions


def test_recent_versions_name_the_champion_the_previous_ones_and_the_newest(engine: Engine):
    sessions = sessionmaker(engine, expire_on_commit=False)
    with sessions.begin() as session:
        for i in range(1, 7):
            registry.register(session, version=f"v{i:04d}", path=f"/a/v{i:04d}", checksum="x")
        for version in ("v0001", "v0002", "v0003"):
            registry.set_champion(session, version=version, promoted_by="ops")
    with sessions() as session:
        recent = recent_versions(session, previous_champions=1, newest=2)
    assert recent.champion == "v0003"
    assert recent.previous_champions == ["v0002"]
    assert recent.newest == ["v0006", "v0005"]


def test_read_stats_counts_runs_and_promotions(engine: Engine):
    sessions = sessionmaker(engine, expire_on_commit=False)
    with sessions.begin() as session:
        run = start_training_run(session, method="sft", parent_version=None, config={})
        finish_training_run(session, run_id=run.id, status="failed", error="boom")
        registry.register(session, version="v0001", path="/a/v0001", checksum="x")
        registry.set_champion(session, version="v0001", promoted_by="ops", forced=True)
    with sessions() as session:
        stats = read_stats(session, running_run=None, recent_decisions=5)
    assert stats.training.runs_by_status == {"failed": 1}
    assert stats.training.last_succeeded_seconds is None and stats.training.current_metrics is None
    assert (stats.promotions.promoted, stats.promotions.forced) == (1, 1)
    assert stats.promotions.champion == "v0001" and stats.promotions.champion_parent is None
    assert stats.recent_decisions == []
