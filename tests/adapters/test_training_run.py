"""`run_training`, end to end on real rows: a run row, a verified folder, a candidate, or a clean failure."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest
from peft import PeftModel
from sqlalchemy import select
from transformers import AutoModelForCausalLM

from lifelong.adapters import (
    AdapterChecksumMismatch,
    InvalidRecipe,
    NothingTrained,
    TrainingCancelled,
    UnknownMethod,
    manifest_checksum,
    run_training,
    verify,
)
from lifelong.adapters import training_run as training_run_module
from lifelong.adapters.artifact import base_model_identity
from lifelong.adapters.grpo_run import PracticeSpec
from lifelong.evals.general import general_prompts
from lifelong.feedback_store import registry
from lifelong.feedback_store.models import Adapter, TrainingRun
from lifelong.feedback_store.records import Correction, Outcome, Rating


def teach(store, first: int, count: int) -> list[int]:
    """Wrong subtraction answers corrected, right ones passed; the feedback ids."""
    wrong = store.ask_many([(f"What is {a} - 10?", str(a + 10)) for a in range(first, first + count)])
    right = store.ask_many([(f"What is {a} - 10?", str(a - 10)) for a in range(first, first + count)])
    return store.give(*[Correction(i, text=str(a - 10)) for a, i in enumerate(wrong, first)],
                      *[Outcome(i, passed=True) for i in right])


@pytest.fixture
def train(store, tiny_base_model, small, tmp_path):
    def train(**kwargs):
        arguments = {
            "db_url": store.url, "base_model_dir": tiny_base_model,
            "adapters_dir": tmp_path / "adapters", "methods": ("sft",), "config": small,
            "device": "cpu", "progress": False, **kwargs,
        }
        return run_training(**arguments)

    return train


def run_row(store, run_id) -> TrainingRun:
    with store.sessions() as session:
        return session.get(TrainingRun, run_id)


def adapters(store) -> list[Adapter]:
    with store.sessions() as session:
        return list(session.scalars(select(Adapter)))


def version_folders(tmp_path) -> list[str]:
    folder = tmp_path / "adapters"
    return sorted(p.name for p in folder.iterdir() if not p.is_symlink()) \
        if folder.exists() else []


def test_a_run_trains_writes_and_registers_a_candidate(store, train, tiny_base_model, small):
    feedback_ids = teach(store, 20, 6)
    outcome = train()

    assert (outcome.status, outcome.adapter_version) == ("succeeded", "v0001")
    run = run_row(store, outcome.run_id)
    assert (run.status, run.adapter_version, run.error) == ("succeeded", "v0001", None)
    assert run.data_watermark == feedback_ids[-1] and run.parent_version is None
    assert run.metrics["outcome"] == "trained" and run.metrics["steps"] == small.max_steps
    assert run.metrics["history"]["step"] == [1, 2, 3]
    assert run.config["hyperparameters"] == small.to_dict()

    (adapter,) = adapters(store)
    assert (adapter.version, adapter.status, adapter.parent_version) == ("v0001", "candidate", None)
    assert (adapter.training_run_id, adapter.data_watermark) == (run.id, feedback_ids[-1])
    assert adapter.checksum == manifest_checksum(outcome.adapter_path)
    manifest = verify(outcome.adapter_path, tiny_base_model, checksum=adapter.checksum)
    assert manifest.data["examples"] == {"sft": {"new": 12, "replayed": 0}}
    assert json.loads((outcome.adapter_path / "feedback_ids.json").read_text()) == feedback_ids
    # What vLLM and the evals will do with it: peft loads it onto the base model.
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base_model),
                              str(outcome.adapter_path))


def test_a_recipe_ending_in_grpo_with_no_task_to_practise_on_leaves_grpo_out(store, train):
    teach(store, 20, 6)
    # Nothing listens there: with no task, practice never contacts vLLM.
    outcome = train(methods=("sft", "grpo"), practice=PracticeSpec(vllm_url="http://127.0.0.1:9"))
    assert outcome.status == "succeeded"
    assert outcome.metrics["data"]["grpo_left_out"].startswith("no train-split task")
    assert "rounds" not in outcome.metrics
    assert json.loads((outcome.adapter_path / "manifest.json").read_text())["methods"] == ["sft"]
    assert run_row(store, outcome.run_id).method == "sft+grpo"


@pytest.mark.parametrize(("methods", "message"), [
    (("grpo", "sft"), "grpo comes last"), (("sft", "grpo", "grpo"), "grpo comes last"),
    (("grpo",), "run_grpo's"), (("sft", "ppo"), "unknown training methods"),
])
def test_a_bad_recipe_is_refused_before_any_run(store, train, methods, message):
    with pytest.raises((InvalidRecipe, UnknownMethod), match=message):
        train(methods=methods, practice=PracticeSpec(vllm_url="http://127.0.0.1:9"))
    with pytest.raises(ValueError, match="needs `practice`"):
        train(methods=("sft", "grpo"))
    with store.sessions() as session:
        assert session.scalars(select(TrainingRun)).all() == []


def test_per_step_metrics_reach_the_run_row_while_it_runs(store, train, small):
    teach(store, 20, 10)
    seen = []

    def peek() -> bool:  # asked before every step: what does the daemon see right now?
        with store.sessions() as session:
            row = session.scalars(select(TrainingRun)).one()
            seen.append(row.metrics and row.metrics["history"]["step"])
        return False

    train(config=dataclasses.replace(small, max_steps=5), metrics_every=2, cancelled=peek)
    assert seen == [None, None, [1, 2], [1, 2], [1, 2, 3, 4]]


def test_too_little_new_data_skips_the_run_and_says_why(store, train, tmp_path):
    teach(store, 20, 2)
    outcome = train(min_new_examples=5)
    assert (outcome.status, outcome.adapter_version) == ("skipped", None)
    assert outcome.reason == "4 new examples for sft since feedback id 0; at least 5 needed"
    run = run_row(store, outcome.run_id)
    assert run.status == "skipped" and run.adapter_version is None
    assert run.metrics["outcome"] == "skipped" and run.metrics["reason"] == outcome.reason
    assert adapters(store) == [] and version_folders(tmp_path) == []


def test_a_crash_during_training_fails_the_run_and_leaves_no_adapter(store, train, monkeypatch,
                                                                   tmp_path):
    teach(store, 20, 6)
    real = training_run_module.train_lora

    def crash_at_step_two(*args, on_step, **kwargs):
        def step(step, *values):
            on_step(step, *values)
            if step == 2:
                raise RuntimeError("injected at step 2")
        return real(*args, on_step=step, **kwargs)

    monkeypatch.setattr(training_run_module, "train_lora", crash_at_step_two)
    with pytest.raises(RuntimeError, match="injected"):
        train()
    (run,) = _runs(store)
    assert (run.status, run.error) == ("failed", "RuntimeError: injected at step 2")
    assert run.metrics["history"]["step"] == [1, 2] and run.finished_at is not None
    assert adapters(store) == [] and version_folders(tmp_path) == []


def test_a_crash_while_registering_removes_the_written_folder(store, train, monkeypatch, tmp_path):
    teach(store, 20, 6)

    def refuse(*args, **kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr(registry, "register", refuse)
    with pytest.raises(RuntimeError, match="went away"):
        train()
    (run,) = _runs(store)
    assert (run.status, run.adapter_version) == ("failed", None)
    assert adapters(store) == [] and version_folders(tmp_path) == []


def test_cancelling_fails_the_run_and_registers_nothing(store, train, tmp_path):
    teach(store, 20, 6)
    with pytest.raises(TrainingCancelled):
        train(cancelled=lambda: True)
    (run,) = _runs(store)
    assert (run.status, run.error) == ("failed", "TrainingCancelled: cancelled after 0 steps")
    assert adapters(store) == [] and version_folders(tmp_path) == []


def test_the_time_limit_keeps_what_was_learned_and_says_so(store, train, small):
    teach(store, 20, 10)

    def slow() -> bool:  # each step takes at least 0.3 s, so 1 s allows a few, never all 50
        time.sleep(0.3)
        return False

    config = dataclasses.replace(small, max_steps=50, epochs=20)
    outcome = train(config=config, cancelled=slow, max_seconds=1.0)
    assert outcome.status == "succeeded"
    assert outcome.metrics["stop_reason"] == "time_limit"
    assert 1 <= outcome.metrics["steps"] < 50


def test_a_time_limit_that_ends_before_the_first_step_fails_the_run(store, train):
    teach(store, 20, 2)
    with pytest.raises(NothingTrained):
        train(max_seconds=0.0)
    assert _runs(store)[0].status == "failed" and adapters(store) == []


def test_a_run_continues_the_champion_on_newer_feedback_plus_replay(store, train, tiny_base_model):
    old = teach(store, 20, 8)  # 16 examples
    first = train()
    with store.sessions.begin() as session:
        registry.set_champion(session, version=first.adapter_version, promoted_by="test")
    new = teach(store, 40, 3)  # 6 examples

    second = train(replay_fraction=0.25)  # one old for every three new: 2

    assert second.adapter_version == "v0002"
    (_, run) = _runs(store)
    assert run.parent_version == "v0001" and run.data_watermark == new[-1]
    manifest = verify(second.adapter_path, tiny_base_model)
    assert manifest.parent_version == "v0001"
    assert manifest.data["since"] == old[-1]
    assert manifest.data["examples"] == {"sft": {"new": 6, "replayed": 2}}
    learned = json.loads((second.adapter_path / "feedback_ids.json").read_text())
    assert set(new) <= set(learned) and len(set(learned) & set(old)) == 2
    with store.sessions() as session:
        assert registry.get(session, version="v0002").parent_version == "v0001"


def test_a_corrupted_parent_fails_the_run(store, train, tmp_path):
    teach(store, 20, 4)
    first = train()
    weights = first.adapter_path / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    teach(store, 40, 2)
    with pytest.raises(AdapterChecksumMismatch):
        train(parent_version="v0001")
    assert _runs(store)[-1].status == "failed"
    assert version_folders(tmp_path) == ["v0001"]


def test_the_run_ignores_thumbs_it_has_no_method_for(store, train):
    (answer,) = store.ask_many([("What is 5 + 5?", "10")])
    store.give(Rating(answer, score=-1))
    outcome = train(methods=("sft", "dpo"))
    assert outcome.status == "skipped"


def test_parent_version_and_fresh_together_are_refused_before_any_run(store, train):
    with pytest.raises(ValueError, match="not both"):
        train(parent_version="v0001", fresh=True)
    assert _runs(store) == []


def _runs(store) -> list[TrainingRun]:
    with store.sessions() as session:
        return list(session.scalars(select(TrainingRun).order_by(TrainingRun.id)))


def test_anchors_replay_the_base_models_own_answers_beside_the_feedback(
    store, train, tmp_path, tiny_base_model
):
    teach(store, 20, 6)  # 12 SFT examples
    anchors_file = tmp_path / "anchors.jsonl"
    outcome = train(anchor_fraction=0.5, anchors_file=anchors_file)
    assert outcome.status == "succeeded"
    # Half the SFT stage: as many anchors as feedback examples, from the shipped prompts' anchor
    # half, answered once by the base model (adapter off) and kept for the next run.
    assert outcome.metrics["data"]["anchors"] == 12
    (stage,) = outcome.metrics["stages"]
    assert stage["examples"] == 24
    cached = json.loads(anchors_file.read_text())
    assert set(cached["answers"]) == set(general_prompts("anchor"))
    assert cached["base_sha256"] == base_model_identity(tiny_base_model)["sha256"]
    again = train(anchor_fraction=0.5, anchors_file=anchors_file, fresh=True)
    assert again.metrics["data"]["anchors"] == 12
    assert json.loads(anchors_file.read_text()) == cached  # read back, not generated again

