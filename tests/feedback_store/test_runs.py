"""Training and eval runs: started as running, finished with what they produced or why not."""

from __future__ import annotations

import pytest

from lifelong.feedback_store import registry
from lifelong.feedback_store.errors import UnknownRun
from lifelong.feedback_store.models import EvalRun, TrainingRun
from lifelong.feedback_store.runs import (
    finish_eval_run,
    finish_training_run,
    interrupt_dead_training_runs,
    start_eval_run,
    start_training_run,
    update_training_run,
)


def test_training_run_records_its_adapter_and_metrics(sessions):
    with sessions.begin() as session:
        run = start_training_run(
            session, method="sft", parent_version=None, config={"steps": 10}, data_watermark=7
        )
        assert (run.status, run.finished_at) == ("running", None)
        run_id = run.id
    with sessions.begin() as session:
        finish_training_run(
            session, run_id=run_id, status="succeeded", adapter_version="v1",
            metrics={"loss": 0.5},
        )
        registry.register(session, version="v1", path="/a/v1", checksum="c", training_run_id=run_id)
    with sessions() as session:
        row = session.get(TrainingRun, run_id)
        assert (row.status, row.adapter_version, row.metrics) == ("succeeded", "v1", {"loss": 0.5})
        assert row.finished_at >= row.started_at
        assert registry.get(session, version="v1").training_run_id == run_id


def test_failed_eval_run_keeps_its_error(sessions):
    with sessions.begin() as session:
        run_id = start_eval_run(
            session, candidate_version="v2", baseline_version=None, config={"n": 50}
        ).id
        finish_eval_run(session, run_id=run_id, status="failed", error="vLLM went away")
    with sessions() as session:
        row = session.get(EvalRun, run_id)
        assert (row.status, row.error, row.summary) == ("failed", "vLLM went away", None)


def test_finishing_an_unknown_run_raises(sessions):
    with sessions() as session:
        with pytest.raises(UnknownRun):
            finish_training_run(session, run_id=404, status="failed")
        with pytest.raises(UnknownRun):
            finish_eval_run(session, run_id=404, status="succeeded")


def test_a_run_cannot_finish_as_running(sessions):
    with sessions() as session, pytest.raises(ValueError):
        finish_training_run(session, run_id=1, status="running")  # type: ignore[arg-type]
    with sessions() as session, pytest.raises(ValueError):
        finish_eval_run(session, run_id=1, status="skipped")  # type: ignore[arg-type]


def test_a_skipped_run_keeps_its_reason_and_made_no_adapter(sessions):
    with sessions.begin() as session:
        run_id = start_training_run(session, method="sft", parent_version=None, config={}).id
        finish_training_run(session, run_id=run_id, status="skipped",
                            metrics={"reason": "3 new examples; at least 20 needed"})
    with sessions() as session:
        row = session.get(TrainingRun, run_id)
        assert (row.status, row.adapter_version) == ("skipped", None)
        assert row.metrics == {"reason": "3 new examples; at least 20 needed"}


def test_progress_updates_a_running_run_and_leaves_unnamed_fields_alone(sessions):
    with sessions.begin() as session:
        run_id = start_training_run(session, method="sft", parent_version=None, config={},
                                    host="h", pid=10).id
        update_training_run(session, run_id=run_id, metrics={"step": 5}, data_watermark=42)
        update_training_run(session, run_id=run_id, pid=11)
    with sessions() as session:
        row = session.get(TrainingRun, run_id)
        assert (row.metrics, row.data_watermark, row.host, row.pid) == ({"step": 5}, 42, "h", 11)


def test_a_finished_run_takes_no_late_progress_and_no_second_end(sessions):
    with sessions.begin() as session:
        run_id = start_training_run(session, method="sft", parent_version=None, config={}).id
        finish_training_run(session, run_id=run_id, status="failed", error="killed")
    with sessions() as session:
        with pytest.raises(ValueError, match="failed, not running"):
            update_training_run(session, run_id=run_id, metrics={"step": 6})
        with pytest.raises(ValueError, match="failed, not running"):
            finish_training_run(session, run_id=run_id, status="succeeded")


def test_restart_interrupts_only_this_hosts_dead_trainers(sessions):
    with sessions.begin() as session:
        ids = {
            name: start_training_run(session, method="sft", parent_version=None, config={},
                                     host=host, pid=pid).id
            for name, host, pid in (
                ("dead", "here", 100), ("alive", "here", 200), ("unspawned", "here", None),
                ("elsewhere", "there", 100),
            )
        }
    with sessions.begin() as session:
        ended = interrupt_dead_training_runs(session, host="here", alive=lambda pid: pid == 200)
    assert sorted(ended) == sorted([ids["dead"], ids["unspawned"]])
    with sessions() as session:
        status = {name: session.get(TrainingRun, i).status for name, i in ids.items()}
    assert status == {"dead": "interrupted", "alive": "running", "unspawned": "interrupted",
                      "elsewhere": "running"}
