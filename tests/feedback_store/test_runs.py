"""Training and eval runs: started as running, finished with what they produced or why not."""

from __future__ import annotations

import pytest

from lifelong.feedback_store import registry
from lifelong.feedback_store.errors import UnknownRun
from lifelong.feedback_store.models import EvalRun, TrainingRun
from lifelong.feedback_store.runs import (
    finish_eval_run,
    finish_training_run,
    start_eval_run,
    start_training_run,
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


def test_a_run_finishes_only_as_succeeded_or_failed(sessions):
    with sessions() as session, pytest.raises(ValueError):
        finish_training_run(session, run_id=1, status="running")  # type: ignore[arg-type]
