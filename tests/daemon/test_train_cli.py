"""`lifelong train` and `lifelong adapters`: real training runs on the tiny model from rows in a
real SQLite store, driven through the console script as a person would."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from sqlalchemy import func, select

from lifelong.base_model import messages
from lifelong.feedback_store.models import Adapter, Rollout, TrainingRun
from lifelong.feedback_store.records import Correction, NewTask
from lifelong.feedback_store.tasks import add_task

LIFELONG = str(Path(sys.executable).parent / "lifelong")


def lifelong(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LIFELONG, *args, "--config", str(config)], capture_output=True,
                          text=True, timeout=600)


@pytest.fixture
def setup(tmp_path, tiny_base_model, migrated_store):
    config = tmp_path / "lifelong.yaml"
    config.write_text(yaml.safe_dump({
        "data_dir": str(tmp_path / "data"), "base_model": {"path": str(tiny_base_model)},
        # The tiny model speaks digits: no anchors or general suite (made for chat models).
        "training": {"max_steps": 30, "batch_size": 8, "min_new_examples": 20, "device": "cpu",
                     "anchor_fraction": 0.0},
        "evals": {"general_suite": False},
    }))
    assert lifelong("db", "upgrade", config=config).returncode == 0
    with migrated_store(f"sqlite:///{tmp_path / 'data' / 'lifelong.db'}") as store:
        yield config, store


def correct(store, n: int, seed: int) -> None:
    """`n` echo questions the model got wrong, each corrected."""
    rng = random.Random(seed)
    pairs = [(f"Repeat {x}.", str(x)) for x in (rng.randint(1000, 9999) for _ in range(n))]
    ids = store.ask_many([(question, "0") for question, _ in pairs])
    store.give(*[Correction(i, text=answer) for i, (_, answer) in zip(ids, pairs, strict=True)])


def test_train_skips_too_little_data_then_now_trains_a_candidate_that_adapters_show(setup):
    config, store = setup
    correct(store, 3, seed=0)
    skipped = lifelong("train", config=config)
    assert skipped.returncode == 0, skipped.stderr
    # Each correction is an SFT example and a pair (the correction preferred over the answer).
    assert "skipped: 6 new examples for sft+dpo since feedback id 0; at least 20 needed" in skipped.stdout

    trained = lifelong("train", "--now", config=config)
    assert trained.returncode == 0, trained.stderr
    assert "made candidate v0001" in trained.stdout
    assert "sft 3 examples" in trained.stdout and "dpo 3 examples" in trained.stdout
    assert "training: 100%" in trained.stderr  # the progress bar

    listed = lifelong("adapters", "list", config=config)
    assert listed.stdout.splitlines()[1].split()[:3] == ["v0001", "candidate", "-"]
    (row,) = [json.loads(line) for line in lifelong("adapters", "list", "--json",
                                                    config=config).stdout.splitlines()]
    assert (row["version"], row["examples"]) == ("v0001", "sft 3+0, dpo 3+0")

    shown = lifelong("adapters", "show", "v0001", config=config)
    assert shown.returncode == 0, shown.stderr
    assert "sft   3 new + 0 replayed" in shown.stdout and "sft loss:" in shown.stdout
    detail = json.loads(lifelong("adapters", "show", "v0001", "--json", config=config).stdout)
    assert detail["verified"] is True
    run = detail["training_run"]
    assert [(c["method"], c["steps"]) for c in run["loss_curves"]] == [
        (stage["method"], stage["steps"]) for stage in run["stages"]]

    # A candidate is not the champion: until one is promoted, the next run starts again from
    # the base model on everything since the champion's watermark (here: all of it).
    again = lifelong("train", "--now", config=config)
    assert "made candidate v0002" in again.stdout and "sft 3 examples" in again.stdout


def test_train_continues_a_named_parent_on_the_new_data_only(setup):
    config, store = setup
    correct(store, 20, seed=0)
    assert lifelong("train", "--method", "sft", config=config).returncode == 0
    correct(store, 20, seed=1)
    done = lifelong("train", "--method", "sft", "--parent", "v0001", config=config)
    assert done.returncode == 0, done.stderr
    detail = json.loads(lifelong("adapters", "show", "v0002", "--json", config=config).stdout)
    assert detail["parent_version"] == "v0001"
    assert detail["manifest"]["data"]["since"] == 20  # v0001's watermark
    assert detail["manifest"]["data"]["examples"]["sft"]["new"] == 20


def test_a_corrupted_adapter_is_shown_with_its_problem(setup):
    config, store = setup
    correct(store, 20, seed=0)
    assert lifelong("train", config=config).returncode == 0
    weights = Path(json.loads(lifelong("adapters", "show", "v0001", "--json",
                                       config=config).stdout)["path"]) / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    shown = lifelong("adapters", "show", "v0001", config=config)
    assert "PROBLEM:" in shown.stdout and "adapter_model.safetensors" in shown.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("train", "--fresh", "--parent", "v0001"), "give --fresh or --parent, not both"),
        (("train", "--method", "ppo"), "unknown training methods ['ppo']"),
        (("train", "-m", "grpo", "-m", "sft"), "grpo comes last in a recipe, once (it practises"),
        (("train", "--parent", "v0042"), "training run failed: no adapter 'v0042'"),
        (("adapters", "show", "v0099"), "no adapter 'v0099'; `lifelong adapters list` shows"),
    ],
)
def test_mistakes_end_in_one_line_naming_the_fix(setup, args, message):
    config, _ = setup
    done = lifelong(*args, config=config)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_ctrl_c_cancels_training_marks_the_run_failed_and_registers_nothing(setup, tmp_path):
    config, store = setup
    settings = yaml.safe_load(config.read_text())
    settings["training"].update(max_steps=100_000, epochs=10_000)
    config.write_text(yaml.safe_dump(settings))
    correct(store, 20, seed=0)
    process = subprocess.Popen([LIFELONG, "train", "--no-progress", "--config", str(config)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not _steps_recorded(store) and time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1, stderr
    assert "training run failed: TrainingCancelled: cancelled after" in stderr
    with store.sessions() as session:
        (run,) = session.scalars(select(TrainingRun)).all()
        assert (run.status, run.adapter_version) == ("failed", None)
        assert run.error.startswith("TrainingCancelled")
        assert session.scalars(select(Adapter)).all() == []
    assert not any((tmp_path / "data" / "adapters").glob("v*"))


def _steps_recorded(store) -> bool:
    with store.sessions() as session:
        run = session.scalars(select(TrainingRun)).first()
        return bool(run and run.metrics and run.metrics.get("history", {}).get("step"))


def practise_through(config: Path, vllm_url: str) -> None:
    """Point the settings at `vllm_url`, with two small GRPO rounds."""
    settings = yaml.safe_load(config.read_text())
    settings["vllm"] = {"upstreams": [vllm_url]}
    settings["training"]["grpo"] = {"rounds": 2, "prompts_per_round": 4, "group_size": 4,
                                    "max_new_tokens": 8, "batch_size": 8}
    config.write_text(yaml.safe_dump(settings))


def add_sum_tasks(store) -> None:
    """Four train-split sums to practise on."""
    with store.sessions.begin() as session:
        for n in range(4):
            add_task(session, task=NewTask(reference=str(20 + n), verifier="numeric",
                                           options={"abs_tol": 5}, heldout=False,
                                           messages=messages(f"What is 1{n} + 10?")),
                     principal=None, heldout_fraction=0.0)


@pytest.mark.integration
def test_train_grpo_practises_through_vllm_and_adapters_show_the_candidate(setup, vllm_url):
    config, store = setup
    practise_through(config, vllm_url)
    add_sum_tasks(store)

    trained = lifelong("train", "-m", "grpo", config=config)
    assert trained.returncode == 0, trained.stderr
    assert "made candidate v0001" in trained.stdout and "(grpo, 2 rounds" in trained.stdout
    shown = lifelong("adapters", "show", "v0001", config=config)
    assert shown.returncode == 0, shown.stderr
    assert "grpo " in shown.stdout
    with store.sessions() as session:
        (run,) = session.scalars(select(TrainingRun)).all()
        assert (run.method, run.status) == ("grpo", "succeeded")


@pytest.mark.integration
def test_a_recipe_ending_in_grpo_learns_from_feedback_then_practises_into_one_candidate(
    setup, vllm_url
):
    config, store = setup
    practise_through(config, vllm_url)
    correct(store, 20, seed=0)
    add_sum_tasks(store)
    trained = lifelong("train", "-m", "sft", "-m", "grpo", config=config)
    assert trained.returncode == 0, trained.stderr
    assert "made candidate v0001" in trained.stdout
    assert "(sft 20 examples" in trained.stdout and "grpo 2 rounds" in trained.stdout
    detail = json.loads(lifelong("adapters", "show", "v0001", "--json", config=config).stdout)
    manifest = detail["manifest"]
    assert manifest["methods"] == ["sft", "grpo"]
    assert manifest["data"]["watermark"] == 20  # the feedback was read
    assert manifest["data"]["rollouts"] == 2 * 4 * 4
    assert set(manifest["data"]["examples"]) == {"sft", "grpo"}
    with store.sessions() as session:
        run = session.scalars(select(TrainingRun).order_by(TrainingRun.id.desc())).first()
        assert (run.method, run.status, run.adapter_version) == ("sft+grpo", "succeeded", "v0001")
        assert [r["round"] for r in run.metrics["rounds"]] == [0, 1]
        assert run.metrics["stages"][0]["method"] == "sft"
        assert session.scalar(select(func.count()).select_from(Rollout)
                              .where(Rollout.training_run_id == run.id)) == 2 * 4 * 4
