"""Importing a GGUF file: the pinned SmolLM2 becomes a chat model folder, once; every file that
cannot become one is refused with the fix, before anything is written."""

import json
import time

import numpy as np
import pytest
from gguf import GGUFReader, GGUFValueType, GGUFWriter
from transformers import AutoTokenizer

from lifelong.base_model import (
    MARKER,
    BaseModelFolderTaken,
    GgufImportError,
    answer,
    build,
    import_gguf,
    smollm2_gguf,
)
from lifelong.base_model import gguf_import as gguf_import_module
from lifelong.base_model.gguf_import import SMOLLM2_SHA256


def only(folder):
    """The names in `folder`: what an import left behind beside its inputs."""
    return sorted(path.name for path in folder.iterdir())


def copy_without_chat_template(source, destination):
    """`source` with every key and tensor but tokenizer.chat_template (as gguf's own
    gguf_new_metadata.py copies a file)."""
    reader = GGUFReader(source)
    architecture = reader.get_field("general.architecture").contents()
    writer = GGUFWriter(destination, arch=architecture, endianess=reader.endianess)
    for field in reader.fields.values():
        # The writer adds the architecture and the GGUF.* header fields itself.
        if field.name in ("general.architecture", "tokenizer.chat_template") \
                or field.name.startswith("GGUF."):
            continue
        kind = field.types[0]
        sub_type = field.types[-1] if kind == GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), kind, sub_type=sub_type)
    for tensor in reader.tensors:
        writer.add_tensor_info(tensor.name, tensor.data.shape, tensor.data.dtype,
                               tensor.data.nbytes, tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in reader.tensors:
        writer.write_tensor_data(tensor.data, tensor_endianess=reader.endianess)
    writer.close()


def test_the_pinned_smollm2_becomes_a_chat_model_that_transformers_loads(smollm2_base_model):
    marker = json.loads((smollm2_base_model / MARKER).read_text())
    assert marker["imported_from"] == str(smollm2_gguf())
    assert marker["sha256"] == SMOLLM2_SHA256 and marker["architecture"] == "llama"
    tokenizer = AutoTokenizer.from_pretrained(smollm2_base_model)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False)
    assert prompt.startswith("<|im_start|>")
    # The dequantized weights are the instruct model's: it knows things and stops at its turn's end.
    assert "Paris" in answer(smollm2_base_model, "What is the capital of France?")


def test_a_second_import_of_the_same_file_reuses_the_folder(smollm2_base_model, monkeypatch):
    before = (smollm2_base_model / "model.safetensors").stat().st_mtime_ns

    def no_import(*args, **kwargs):
        raise AssertionError("an imported file must not be imported again")

    monkeypatch.setattr(gguf_import_module, "_import_into", no_import)
    started = time.monotonic()
    report = import_gguf(smollm2_gguf(), smollm2_base_model, expected_sha256=SMOLLM2_SHA256)
    assert report.reused and report.path == smollm2_base_model
    assert "already there" in report.describe()
    assert time.monotonic() - started < 20  # a checksum of 98 MB, on a shared machine
    assert (smollm2_base_model / "model.safetensors").stat().st_mtime_ns == before


def test_a_file_with_another_checksum_than_expected_is_refused_naming_the_fix(tmp_path):
    with pytest.raises(GgufImportError, match="reinstall it"):
        import_gguf(smollm2_gguf(), tmp_path / "model", expected_sha256="0" * 64)
    assert only(tmp_path) == []


def test_a_truncated_file_is_refused_and_leaves_nothing_behind(tmp_path):
    truncated = tmp_path / "SmolLM2.gguf"
    with smollm2_gguf().open("rb") as file:
        truncated.write_bytes(file.read(10 << 20))
    with pytest.raises(GgufImportError, match="truncated: download it again"):
        import_gguf(truncated, tmp_path / "model")
    assert only(tmp_path) == ["SmolLM2.gguf"]  # no model folder, no staging folder


def test_another_architecture_is_refused_naming_it(tmp_path):
    gpt2 = tmp_path / "gpt2.gguf"
    writer = GGUFWriter(gpt2, arch="gpt2")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    writer.add_tensor("output_norm.weight", np.ones(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(GgufImportError, match="holds a 'gpt2' model; lifelong imports llama"):
        import_gguf(gpt2, tmp_path / "model")
    assert only(tmp_path) == ["gpt2.gguf"]


def test_a_model_without_a_chat_template_is_refused_before_its_weights_are_read(
    tmp_path, monkeypatch
):
    base = tmp_path / "base.gguf"
    copy_without_chat_template(smollm2_gguf(), base)

    def no_import(*args, **kwargs):
        raise AssertionError("the header says enough: no weights should be dequantized")

    monkeypatch.setattr(gguf_import_module, "_import_into", no_import)
    with pytest.raises(GgufImportError, match="no chat template.*use an instruct model's GGUF"):
        import_gguf(base, tmp_path / "model")
    assert only(tmp_path) == ["base.gguf"]


def test_a_folder_holding_something_else_is_not_overwritten(tmp_path):
    taken = tmp_path / "model"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    with pytest.raises(BaseModelFolderTaken):
        import_gguf(smollm2_gguf(), taken, expected_sha256=SMOLLM2_SHA256)
    assert only(taken) == ["notes.txt"]
    assert only(tmp_path) == ["model"]


def test_a_missing_file_is_refused_naming_what_to_give(tmp_path):
    with pytest.raises(GgufImportError, match="give the path of a .gguf file"):
        import_gguf(tmp_path / "nowhere.gguf", tmp_path / "model")
    assert only(tmp_path) == []


def test_the_tiny_builder_never_overwrites_an_imported_model(smollm2_base_model):
    with pytest.raises(BaseModelFolderTaken):
        build(smollm2_base_model, seed=0, steps=1)
    assert json.loads((smollm2_base_model / "lifelong_base.json").read_text())["imported_from"]
