"""The adapter folder: what its manifest records, and that a changed byte or base model is refused."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lifelong.adapters import (
    AdapterChecksumMismatch,
    AdapterManifestInvalid,
    BaseModelMismatch,
    VersionTaken,
    base_model_identity,
    load_model,
    manifest_checksum,
    next_version,
    verify,
    write_adapter,
)
from lifelong.adapters.artifact import served_name


@pytest.fixture
def model(tiny_base_model, small):
    return load_model(tiny_base_model, parent_dir=None, config=small, seed=0,
                      device=torch.device("cpu"))[0]


@pytest.fixture
def write(model, tiny_base_model, small, tmp_path):
    def write(version="v0001", **fields):
        values = {
            "adapters_dir": tmp_path / "adapters", "version": version, "parent_version": None,
            "base_model": base_model_identity(tiny_base_model), "data_watermark": 42,
            "data": {"since": 0, "examples": {"sft": {"new": 3, "replayed": 0}}},
            "feedback_ids": [3, 7, 42], "methods": ["sft"], "hyperparameters": small.to_dict(),
            "seed": 0, "metrics": {"steps": 3}, **fields,
        }
        return write_adapter(model, **values)

    return write


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_manifest_records_lineage_base_model_data_settings_and_every_checksum(
    write, tiny_base_model, small
):
    folder, manifest = write("v0002", parent_version="v0001")
    assert folder.name == "v0002"
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors", "feedback_ids.json",
        "manifest.json",
    ]
    on_disk = json.loads((folder / "manifest.json").read_text())
    assert on_disk["version"] == "v0002" and on_disk["parent_version"] == "v0001"
    assert on_disk["base_model"] == {"path": str(tiny_base_model.resolve()),
                                     "sha256": base_model_identity(tiny_base_model)["sha256"]}
    assert on_disk["data_watermark"] == 42
    assert on_disk["data"]["examples"] == {"sft": {"new": 3, "replayed": 0}}
    assert json.loads((folder / "feedback_ids.json").read_text()) == [3, 7, 42]
    assert on_disk["data"]["feedback_ids"] == 3
    assert on_disk["data"]["feedback_ids_sha256"] == hashlib.sha256(b"[3,7,42]").hexdigest()
    assert on_disk["hyperparameters"] == small.to_dict()
    assert on_disk["files"] == {p.name: sha256(p) for p in folder.iterdir()
                                if p.name != "manifest.json"}
    assert manifest_checksum(folder) == f"sha256:{sha256(folder / 'manifest.json')}"
    assert manifest.files == on_disk["files"]


def test_an_intact_adapter_verifies(write, tiny_base_model):
    folder, manifest = write()
    assert verify(folder, tiny_base_model, checksum=manifest_checksum(folder)) == manifest


@pytest.mark.parametrize("name", ["adapter_model.safetensors", "adapter_config.json",
                                  "feedback_ids.json"])
def test_a_changed_byte_in_any_file_is_refused(write, tiny_base_model, name):
    folder, _ = write()
    data = bytearray((folder / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (folder / name).write_bytes(bytes(data))
    with pytest.raises(AdapterChecksumMismatch, match=name):
        verify(folder, tiny_base_model)


def test_a_missing_file_is_refused(write, tiny_base_model):
    folder, _ = write()
    (folder / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterChecksumMismatch, match="missing"):
        verify(folder, tiny_base_model)


def test_a_manifest_other_than_the_registered_one_is_refused(write, tiny_base_model):
    folder, _ = write()
    registered = manifest_checksum(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["data_watermark"] = 1_000_000  # consistent with the files, yet not what was written
    (folder / "manifest.json").write_text(json.dumps(manifest))
    verify(folder, tiny_base_model)  # the files themselves are intact
    with pytest.raises(AdapterChecksumMismatch, match="registry"):
        verify(folder, tiny_base_model, checksum=registered)


def test_a_folder_without_a_manifest_is_refused(tmp_path, tiny_base_model):
    (tmp_path / "v0001").mkdir()
    with pytest.raises(AdapterManifestInvalid, match="no manifest.json"):
        verify(tmp_path / "v0001", tiny_base_model)


def test_an_adapter_is_refused_on_another_base_model(write, tiny_base_model, tmp_path):
    folder, _ = write()
    # Same shapes, one weight changed: what a rebuild with another seed looks like.
    other = tmp_path / "other_base"
    shutil.copytree(tiny_base_model, other)
    (weights,) = other.glob("*.safetensors")
    tensors = load_file(weights)
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(BaseModelMismatch, match="trained on the base model at"):
        verify(folder, other)


def test_versions_count_up_from_the_highest_folder_or_registered_version(tmp_path):
    assert next_version(tmp_path / "absent") == "v0001"
    for name in ("v0001", "v0003", "notes", ".v0009.staging-x"):
        (tmp_path / name).mkdir()
    assert next_version(tmp_path) == "v0004"
    assert next_version(tmp_path, taken=["v0007"]) == "v0008"
    assert sorted(["v0010", "v0002", "v0001"]) == ["v0001", "v0002", "v0010"]


def test_a_taken_version_is_refused_and_nothing_is_left_behind(write, tmp_path):
    write("v0001")
    with pytest.raises(VersionTaken):
        write("v0001")
    folders = [p.name for p in (tmp_path / "adapters").iterdir() if not p.is_symlink()]
    assert folders == ["v0001"]


def test_a_write_that_fails_midway_leaves_no_folder(write, model, monkeypatch, tmp_path):
    def save_then_fail(path):
        (Path(path) / "adapter_model.safetensors").write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(model, "save_pretrained", save_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write("v0001")
    assert list((tmp_path / "adapters").iterdir()) == []


def test_the_served_name_carries_the_checksum_and_links_to_the_folder(write, tmp_path):
    folder, _ = write("v0001")
    name = served_name("v0001", manifest_checksum(folder))
    assert re.fullmatch(r"v0001-[0-9a-f]{12}", name)
    link = tmp_path / "adapters" / name
    # vLLM's filesystem resolver loads `<its cache dir>/<served name>`: a relative link, so the
    # shared volume may be mounted anywhere.
    assert link.is_symlink() and os.readlink(link) == "v0001"
    assert link.resolve() == folder.resolve()
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(Path(config["base_model_name_or_path"]).resolve())
