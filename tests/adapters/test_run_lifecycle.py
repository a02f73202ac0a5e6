"""A run's row from open to its one end, the same for a GRPO run as for a feedback run (no vLLM:
these runs end before practice would reach a server)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from lifelong.adapters import TrainingCancelled
from lifelong.adapters.grpo_run import run_grpo
from lifelong.adapters.run_lifecycle import opened_run
from lifelong.feedback_store.errors import UnknownAdapter
from lifelong.feedback_store.models import TrainingRun

NOWHERE = "http://127.0.0.1:9"  # nothing listens: a test that reached vLLM would fail


def runs(store) -> list[TrainingRun]:
    with store.sessions() as session:
        return list(session.scalars(select(TrainingRun)))


def test_a_grpo_run_with_no_task_to_practise_on_is_skipped_and_says_why(store, tiny_base_model,
                                                                     tmp_path):
    outcome = run_grpo(db_url=store.url, base_model_dir=tiny_base_model,
                       adapters_dir=tmp_path / "adapters", vllm_url=NOWHERE, device="cpu")
    assert (outcome.status, outcome.adapter_version) == ("skipped", None)
    (run,) = runs(store)
    assert (run.status, run.method) == ("skipped", "grpo")
    assert run.metrics == {"outcome": "skipped", "reason": outcome.reason}
    assert outcome.reason.startswith("no train-split task")


def test_a_grpo_run_from_an_unknown_parent_fails_its_row(store, tiny_base_model, tmp_path):
    with pytest.raises(UnknownAdapter):
        run_grpo(db_url=store.url, base_model_dir=tiny_base_model,
                 adapters_dir=tmp_path / "adapters", vllm_url=NOWHERE, parent_version="v0042")
    (run,) = runs(store)
    assert run.status == "failed" and run.error.startswith("UnknownAdapter")
    assert run.metrics == {"outcome": "failed", "rounds": []}


@pytest.mark.parametrize("error", [RuntimeError("boom"), TrainingCancelled("at step 3"),
                                   KeyboardInterrupt()])
def test_anything_leaving_the_block_fails_the_run_with_what_it_had_learned(store, error):
    with pytest.raises(type(error)), opened_run(store.url, run_id=None, recipe=("sft",),
                                                parent_version=None, config={}) as run:
        run.failure_metrics = lambda: {"history": {"step": [1, 2]}}
        raise error
    (row,) = runs(store)
    assert (row.status, row.error) == ("failed", f"{type(error).__name__}: {error}")
    assert row.metrics == {"outcome": "failed", "history": {"step": [1, 2]}}
