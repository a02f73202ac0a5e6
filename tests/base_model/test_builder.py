"""Building the base model: deterministic per seed, cached by its marker, never half-built."""

import json

import pytest
import torch
from safetensors.torch import load_file

from lifelong.base_model import MARKER, BaseModelFolderTaken, build
from lifelong.base_model import builder as builder_module

# Far too short to learn anything; enough to tell weights apart and keep the tests fast.
QUICK = {"steps": 8, "layers": 2, "hidden": 128, "batch_size": 8, "eval_items": 5,
         "progress": False}


def weights(folder):
    return load_file(folder / "model.safetensors")


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def test_the_same_seed_gives_bit_identical_weights_and_another_seed_does_not(tmp_path):
    first = weights(build(tmp_path / "a", seed=7, **QUICK).path)
    again = weights(build(tmp_path / "b", seed=7, **QUICK).path)
    other = weights(build(tmp_path / "c", seed=8, **QUICK).path)
    assert same_weights(first, again)
    assert not same_weights(first, other)


def test_a_second_build_with_the_same_parameters_reuses_the_folder_without_training(
    tiny_base_model, monkeypatch
):
    recorded = json.loads((tiny_base_model / MARKER).read_text())
    before = weights(tiny_base_model)

    def no_training(*args, **kwargs):
        raise AssertionError("a cached build must not train")

    monkeypatch.setattr(builder_module, "train", no_training)
    report = build(tiny_base_model, **recorded["params"], progress=False)
    assert report.reused
    assert report.accuracy == recorded["summary"]["accuracy"]
    assert same_weights(weights(tiny_base_model), before)


def test_other_parameters_rebuild_and_replace_the_folder(tmp_path):
    first = build(tmp_path / "m", seed=0, **QUICK)
    second = build(tmp_path / "m", seed=1, **QUICK)
    assert not second.reused
    assert json.loads((tmp_path / "m" / MARKER).read_text())["params"]["seed"] == 1
    assert first.path == second.path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # nothing left beside it


def test_a_failed_build_leaves_no_folder_that_could_pass_for_built(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(builder_module, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build(tmp_path / "m", seed=0, **QUICK)
    assert list(tmp_path.iterdir()) == []


def test_a_folder_without_the_marker_is_neither_used_nor_overwritten(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")  # e.g. someone's own, or half-copied, model
    with pytest.raises(BaseModelFolderTaken, match="remove it or build into another folder"):
        build(folder, seed=0, **QUICK)
    assert [p.name for p in folder.iterdir()] == ["config.json"]


def test_the_marker_records_parameters_shape_and_heldout_accuracy(tiny_base_model):
    marker = json.loads((tiny_base_model / MARKER).read_text())
    assert marker["params"]["layers"] == 2 and marker["params"]["hidden"] == 128
    assert marker["summary"]["corpus_skills"] == ["add2"]
    assert set(marker["summary"]["accuracy"]) == {"add2", "sub2", "add3", "echo", "last_digit"}
    assert all(0.0 <= value <= 1.0 for value in marker["summary"]["accuracy"].values())


def test_the_report_describes_accuracy_per_skill(tiny_base_model):
    params = json.loads((tiny_base_model / MARKER).read_text())["params"]
    text = build(tiny_base_model, **params, progress=False).describe()
    assert "reused" in text
    assert all(skill in text for skill in ("add2", "sub2", "add3", "echo", "last_digit"))


def test_stop_after_is_the_full_schedule_cut_short(tmp_path, monkeypatch):
    calls = []
    real_train = builder_module.train

    def counting(model, data, **kwargs):
        calls.append(kwargs)
        return real_train(model, data, **kwargs)

    monkeypatch.setattr(builder_module, "train", counting)
    half = build(tmp_path / "half", seed=7, stop_after=4, **QUICK)
    full = build(tmp_path / "full", seed=7, **QUICK)
    assert [(c["steps"], c["stop_after"]) for c in calls] == [(8, 4), (8, None)]
    assert "4 of 8 steps" in half.describe() and "seed 7, 8 steps" in full.describe()
    assert not same_weights(weights(half.path), weights(full.path))
    assert build(tmp_path / "half", seed=7, stop_after=4, **QUICK).reused
    with pytest.raises(ValueError, match="stop_after must be between 1 and steps"):
        build(tmp_path / "bad", seed=7, stop_after=9, **QUICK)


def test_a_marker_from_before_stop_after_still_matches_a_full_build(tmp_path):
    build(tmp_path / "m", seed=7, **QUICK)
    marker = json.loads((tmp_path / "m" / MARKER).read_text())
    del marker["params"]["stop_after"]
    (tmp_path / "m" / MARKER).write_text(json.dumps(marker))
    assert build(tmp_path / "m", seed=7, **QUICK).reused


def test_stop_at_ends_training_once_the_corpus_skill_is_half_known(tmp_path, monkeypatch):
    monkeypatch.setattr(builder_module, "STOP_CHECK_EVERY", 2)
    asked = []

    def answering(model, tokenizer, conversations, **kwargs):
        # the stop checks (STOP_CHECK_ITEMS sums): wrong at the first two (steps 2 and 4), right
        # from the third (step 6); the final held-out measure (eval_items each) gets "0"
        if len(conversations) != builder_module.STOP_CHECK_ITEMS:
            return ["0"] * len(conversations)
        asked.append(len(conversations))
        if len(asked) < 3:
            return ["0"] * len(conversations)
        return [str(sum(map(int, c[-1]["content"][8:-1].split(" + ")))) for c in conversations]

    monkeypatch.setattr("lifelong.base_model.accuracy.replies", answering)
    half = build(tmp_path / "half", seed=7, stop_at=0.6, **QUICK)
    assert half.trained_steps == 6 and asked == [builder_module.STOP_CHECK_ITEMS] * 3
    assert "6 of 8 steps (stopped at 60% of sums)" in half.describe()
    again = build(tmp_path / "half", seed=7, stop_at=0.6, **QUICK)
    assert again.reused and again.trained_steps == 6
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="stop_at must be a share"):
            build(tmp_path / "bad", seed=7, stop_at=bad, **QUICK)
