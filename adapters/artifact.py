"""The adapter artifact: one folder per version, complete or absent, checked before it is used.

A version folder (`v0001`, `v0002`, ...: readable, and sorted by number) holds peft's files
(`adapter_model.safetensors`, `adapter_config.json`, which vLLM loads as they are),
`feedback_ids.json` (every feedback id the adapter learned from) and `manifest.json`: version,
parent, base model identity, data watermark, examples per method, hyperparameters, final metrics
and the sha256 of every other file. The registry's checksum of an adapter is the sha256 of its
manifest, which therefore covers every byte of the folder.

`write_adapter` writes into a hidden staging folder beside the destination, fsyncs every file
and the folder, then renames it into place (and fsyncs the parent), so a crash leaves either no
folder or a complete one; the caller registers the version only afterwards. `verify` recomputes
every checksum and the base model's identity and raises `AdapterChecksumMismatch`,
`BaseModelMismatch` or `AdapterManifestInvalid`.

Versions: `next_version` is the highest existing number + 1. That is race-free only with one
trainer at a time (the daemon runs one); two racing writers of the same version cannot both
succeed, since the second rename finds the folder taken and raises `VersionTaken`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the registry reads manifests without loading torch
    from peft import PeftModel

FORMAT = 1
MANIFEST = "manifest.json"
FEEDBACK_IDS = "feedback_ids.json"
PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")
_VERSION = re.compile(r"v(\d{4,})")
_CHUNK = 1 << 20


class AdapterError(Exception):
    """Base of the errors about adapter folders."""


class AdapterManifestInvalid(AdapterError):
    """The folder has no readable manifest of this format, or it lacks the peft files."""


class AdapterChecksumMismatch(AdapterError):
    """A file of the adapter is missing or its bytes are not those the manifest recorded."""


class BaseModelMismatch(AdapterError):
    """The adapter was trained on another base model than the one it is checked against."""


class VersionTaken(AdapterError):
    """A folder for this version exists already."""


@dataclass(frozen=True)
class Manifest:
    """What `manifest.json` says about one adapter version."""

    format: int
    version: str
    parent_version: str | None
    created_at: str  # ISO 8601, UTC
    base_model: dict[str, str]  # {"path": ..., "sha256": ...}: see base_model_identity
    data_watermark: int  # the highest feedback id the training data was read up to
    # since, examples per method (new/replayed), and the feedback ids (all in feedback_ids.json):
    # their number and the sha256 of their compact JSON list
    data: dict[str, Any]
    methods: list[str]
    hyperparameters: dict[str, Any]
    seed: int
    metrics: dict[str, Any]
    files: dict[str, str]  # file name -> sha256 hex, every file but the manifest


def version_name(number: int) -> str:
    return f"v{number:04d}"


def version_number(version: str) -> int:
    """12 for "v0012". Raises ValueError for a name that is not a version."""
    match = _VERSION.fullmatch(version)
    if match is None:
        raise ValueError(f"{version!r} is not an adapter version (v0001, v0002, ...)")
    return int(match.group(1))


def next_version(adapters_dir: Path, *, taken: Iterable[str] = ()) -> str:
    """One past the highest version among the folders in `adapters_dir` and `taken` (the
    registry's versions, in case a folder was deleted): "v0001" when there is none."""
    names = [path.name for path in adapters_dir.iterdir()] if adapters_dir.is_dir() else []
    numbers = [int(m.group(1)) for name in [*names, *taken] if (m := _VERSION.fullmatch(name))]
    return version_name(max(numbers, default=0) + 1)


def base_model_identity(base_model_dir: Path) -> dict[str, str]:
    """The base model's path and a sha256 over its config.json and weight files (name and
    content of each): a rebuilt model with the same shapes but other weights differs too.
    Reads every weight byte once (seconds for a few GB)."""
    folder = Path(base_model_dir).resolve()
    weights = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    digest = hashlib.sha256()
    for path in [folder / "config.json", *weights]:
        digest.update(f"{path.name}\0{_sha256(path)}\n".encode())
    return {"path": str(folder), "sha256": digest.hexdigest()}


def write_adapter(
    model: PeftModel,
    *,
    adapters_dir: Path,
    version: str,
    parent_version: str | None,
    base_model: dict[str, str],
    data_watermark: int,
    data: dict[str, Any],
    feedback_ids: list[int],
    methods: list[str],
    hyperparameters: dict[str, Any],
    seed: int,
    metrics: dict[str, Any],
) -> tuple[Path, Manifest]:
    """Write `model`'s adapter as `adapters_dir/version`, atomically; returns the folder and
    its manifest. Raises VersionTaken, having written nothing."""
    version_number(version)
    adapters_dir.mkdir(parents=True, exist_ok=True)
    final = adapters_dir / version
    if final.exists():
        raise VersionTaken(f"{final} exists already")
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.staging-", dir=adapters_dir))
    try:
        model.save_pretrained(str(staging))
        _name_base_model(staging / "adapter_config.json", base_model["path"])
        ids = json.dumps(feedback_ids, separators=(",", ":"))
        (staging / FEEDBACK_IDS).write_text(ids + "\n")
        manifest = Manifest(
            format=FORMAT,
            version=version,
            parent_version=parent_version,
            created_at=datetime.now(UTC).isoformat(),
            base_model=base_model,
            data_watermark=data_watermark,
            data={**data, "feedback_ids": len(feedback_ids),
                  "feedback_ids_sha256": hashlib.sha256(ids.encode()).hexdigest()},
            methods=methods,
            hyperparameters=hyperparameters,
            seed=seed,
            metrics=metrics,
            files={path.name: _sha256(path) for path in sorted(staging.iterdir())},
        )
        (staging / MANIFEST).write_text(json.dumps(asdict(manifest), indent=2) + "\n")
        for path in staging.iterdir():
            _fsync(path)
        staging.chmod(0o755)  # mkdtemp's 0700 would hide it from a vLLM running as another user
        _fsync(staging)
        try:
            # On POSIX a rename onto an empty folder succeeds; ours never makes empty ones, and
            # a non-empty one (a racing writer) makes it fail.
            os.rename(staging, final)
        except OSError as exc:
            raise VersionTaken(f"{final} appeared while writing it: {exc}") from exc
        _fsync(adapters_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already unless something failed
    # The served name as a link beside the folder: vLLM's filesystem LoRA resolver, asked for
    # that name by a server that was never given the adapter, loads it from here.
    link = adapters_dir / served_name(version, manifest_checksum(final))
    if not link.is_symlink():
        link.symlink_to(version)
    return final, manifest


def _name_base_model(config_file: Path, path: str) -> None:
    """The base model as vLLM's `--model` names it (the resolved folder): peft writes whatever
    path the trainer was given (relative, or inherited from a parent adapter), and vLLM's
    filesystem LoRA resolver serves an adapter only if this matches its `--model` exactly."""
    config = json.loads(config_file.read_text())
    config["base_model_name_or_path"] = path
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def served_name(version: str, checksum: str) -> str:
    """The name vLLM serves an adapter under: its version and the start of its checksum, so a
    server that kept a same-named adapter from another registry (a database started afresh, a
    second deployment) can never answer with those weights under this name."""
    return f"{version}-{checksum.removeprefix('sha256:')[:12]}"


def manifest_checksum(folder: Path) -> str:
    """The adapter's checksum as the registry keeps it: "sha256:" + sha256 of manifest.json.
    Raises AdapterManifestInvalid when there is no manifest."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise AdapterManifestInvalid(f"{folder} has no {MANIFEST}")
    return f"sha256:{_sha256(path)}"


def read_manifest(folder: Path) -> Manifest:
    """The folder's manifest, unchecked. Raises AdapterManifestInvalid."""
    path = Path(folder) / MANIFEST
    try:
        values = json.loads(path.read_text())
        manifest = Manifest(**{f.name: values[f.name] for f in fields(Manifest)})
    except FileNotFoundError as exc:
        raise AdapterManifestInvalid(f"{folder} has no {MANIFEST}") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise AdapterManifestInvalid(f"{path} is not a readable manifest: {exc!r}") from exc
    if manifest.format != FORMAT:
        raise AdapterManifestInvalid(f"{path} has format {manifest.format}, this code reads {FORMAT}")
    missing = [name for name in PEFT_FILES if name not in manifest.files]
    strange = [name for name in manifest.files if Path(name).name != name or name == MANIFEST]
    if missing or strange:
        raise AdapterManifestInvalid(f"{path} lists no {missing} or odd files {strange}")
    return manifest


def verify(folder: Path, base_model_dir: Path, *, checksum: str | None = None) -> Manifest:
    """Check an adapter folder before use: the manifest (against the registry's `checksum`
    when given), every file's sha256, and that it was trained on `base_model_dir`.

    Raises AdapterManifestInvalid, AdapterChecksumMismatch or BaseModelMismatch.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    if checksum is not None and (actual := manifest_checksum(folder)) != checksum:
        raise AdapterChecksumMismatch(
            f"{folder / MANIFEST} has checksum {actual}, the registry recorded {checksum}"
        )
    for name, expected in manifest.files.items():
        path = folder / name
        if not path.is_file():
            raise AdapterChecksumMismatch(f"{path} is missing")
        if (actual := _sha256(path)) != expected:
            raise AdapterChecksumMismatch(
                f"{path} has sha256 {actual}, the manifest recorded {expected}: the file changed "
                "after it was written; retrain or restore it"
            )
    identity = base_model_identity(base_model_dir)
    if identity["sha256"] != manifest.base_model["sha256"]:
        raise BaseModelMismatch(
            f"adapter {manifest.version} was trained on the base model at "
            f"{manifest.base_model['path']} (sha256 {manifest.base_model['sha256'][:12]}...), "
            f"not on {identity['path']} (sha256 {identity['sha256'][:12]}...)"
        )
    return manifest


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    # Folders too: a rename or a new file is durable only once its folder's entry is.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
