"""Building the embedded base model: pretrain a small Llama from scratch and save it, once.

`build` trains on the synthetic corpus, measures held-out accuracy, and saves a Hugging Face
folder (safetensors, tokenizer, chat template, generation config) that transformers, peft and
vLLM load unchanged. The same seed gives bit-identical weights: one thread count, one seeded
initialisation, one seeded data order.

The folder is written beside its destination and renamed into place, with the marker file
`lifelong_base.json` (the build parameters and a summary) written last, so a folder with the
marker is complete, and a second build with the same parameters only reads the marker.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

from lifelong.base_model.accuracy import exact_match, share_right
from lifelong.base_model.corpus import Batch, batches
from lifelong.base_model.generation import transformers_bars_off
from lifelong.base_model.skills import CORPUS_SKILLS, NEIGHBOUR_SKILLS, SKILLS, training_items
from lifelong.base_model.tokenizer import make_tokenizer

logger = logging.getLogger(__name__)

MARKER = "lifelong_base.json"
MARKER_FORMAT = 1
DEFAULT_STEPS = 700
HEAD_DIM = 64  # vLLM's CPU attention kernels take head sizes 64 and 128
# Bit-identical weights need the same reduction order in every matmul, hence a fixed thread
# count rather than whatever the machine offers.
BUILD_THREADS = 2
WARMUP_SHARE = 0.05
# build() arguments for a model that half-knows add2: the tiny test shape on a 2000-step schedule,
# stopped once it answers 60% of STOP_CHECK_ITEMS train-split sums (checked every
# STOP_CHECK_EVERY steps). RL needs such a model: its samples pass sometimes, so verifier rewards
# carry signal. Stopping at a step count instead (1100) gave greedy held-out exact match 60% on
# one machine and 93.5% on another: when the tiny model learns sums moves with the CPU.
HALF_TRAINED = {"seed": 0, "steps": 2000, "stop_at": 0.6, "layers": 2, "hidden": 128,
                "batch_size": 32}
STOP_CHECK_EVERY = 25
STOP_CHECK_ITEMS = 100


class BaseModelFolderTaken(Exception):
    """The destination exists, is not empty and is not a base model built here."""

    def __init__(self, path: Path) -> None:
        super().__init__(
            f"{path} exists and holds no {MARKER}; remove it or build into another folder"
        )
        self.path = path


@dataclass(frozen=True)
class BuildParams:
    """Everything that decides the built folder; equal params mean an equal folder."""

    seed: int
    steps: int
    layers: int
    hidden: int
    batch_size: int
    lr: float
    eval_items: int
    # Train on the schedule of `steps` but stop after this many: a model caught half-way
    # through learning its skill (tests of RL need one that half-knows it). None: all of them.
    stop_after: int | None = None
    # Or stop once greedy exact match on STOP_CHECK_ITEMS train-split questions of the corpus
    # skill reaches this share (checked every STOP_CHECK_EVERY steps). None: never.
    stop_at: float | None = None


@dataclass(frozen=True)
class BuildReport:
    """What a build made (or found already made) and how good it is."""

    path: Path
    params: BuildParams
    corpus_skills: tuple[str, ...]
    accuracy: dict[str, float]  # held-out exact match per skill, corpus and neighbours
    final_loss: float
    parameters: int
    train_seconds: float
    reused: bool
    trained_steps: int | None = None  # None in markers from before it was recorded

    def _steps(self) -> str:
        p = self.params
        if p.stop_at is not None:
            return (f"{self.trained_steps} of {p.steps} steps (stopped at {p.stop_at:.0%} of "
                    "sums)")
        return f"{p.steps} steps" if p.stop_after is None else f"{p.stop_after} of {p.steps} steps"

    def describe(self) -> str:
        p = self.params
        how = "reused" if self.reused else f"trained in {self.train_seconds:.0f} s"
        lines = [
            f"base model at {self.path} ({how}): Llama {p.layers} layers x {p.hidden}, "
            f"{self.parameters / 1e6:.1f}M parameters, seed {p.seed}, "
            f"{self._steps()}, "
            f"final loss {self.final_loss:.3f}",
            f"held-out exact match ({p.eval_items} questions each):",
        ]
        for skill, value in self.accuracy.items():
            where = "in corpus" if skill in self.corpus_skills else "never seen"
            lines.append(f"  {skill:<10} {value:6.1%}  ({where})")
        return "\n".join(lines)


def build(
    out_dir: Path,
    *,
    seed: int,
    steps: int = DEFAULT_STEPS,
    layers: int = 4,
    hidden: int = 192,
    batch_size: int = 64,
    lr: float = 3e-3,
    eval_items: int = 200,
    stop_after: int | None = None,
    stop_at: float | None = None,
    progress: bool = True,
) -> BuildReport:
    """Build the base model into `out_dir`, or return the existing build with these parameters.

    `stop_after`: stop after this many of the `steps` (the learning-rate schedule is that of
    `steps`), leaving a model that has half learned its skill. Raises ValueError unless
    1 <= stop_after <= steps. `stop_at`: stop once the model answers this share of
    STOP_CHECK_ITEMS train-split questions of its corpus skill (checked every STOP_CHECK_EVERY
    steps): a model half-way through learning, whatever the CPU. Raises ValueError unless
    0 < stop_at <= 1.

    `progress` shows a tqdm bar with the loss on stderr. Raises BaseModelFolderTaken if
    `out_dir` holds something other than a base model build.
    """
    out_dir = Path(out_dir)
    if stop_after is not None and not 1 <= stop_after <= steps:
        raise ValueError(f"stop_after must be between 1 and steps ({steps}), got {stop_after}")
    if stop_at is not None and not 0 < stop_at <= 1:
        raise ValueError(f"stop_at must be a share in (0, 1], got {stop_at}")
    params = BuildParams(
        seed=seed, steps=steps, layers=layers, hidden=hidden, batch_size=batch_size, lr=lr,
        eval_items=eval_items, stop_after=stop_after, stop_at=stop_at,
    )
    existing = _read_marker(out_dir)
    if existing is not None and existing.get("imported_from"):
        raise BaseModelFolderTaken(out_dir)  # an imported model (gguf_import), not a build
    # Markers written before stop_after and stop_at existed describe full builds.
    recorded = ({"stop_after": None, "stop_at": None, **existing.get("params", {})}
                if existing else None)
    if recorded == asdict(params):
        logger.info("base model at %s already built with these parameters", out_dir)
        return _report(out_dir, params, existing["summary"], reused=True)
    if existing is None and out_dir.exists() and any(out_dir.iterdir()):
        raise BaseModelFolderTaken(out_dir)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
    try:
        summary = _build_into(staging, params, progress=progress)
        _write_marker(staging, params, summary)
        replace_folder(out_dir, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already unless the build failed
    return _report(out_dir, params, summary, reused=False)


def model_config(
    *, layers: int, hidden: int, vocab_size: int, eos_id: int, pad_id: int
) -> LlamaConfig:
    """The Llama shape: heads of HEAD_DIM, full multi-head attention, tied embeddings."""
    if hidden % HEAD_DIM:
        raise ValueError(f"hidden must be a multiple of {HEAD_DIM}, got {hidden}")
    heads = hidden // HEAD_DIM
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=HEAD_DIM,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )


def train(
    model: LlamaForCausalLM, data: Iterator[Batch], *, steps: int, lr: float, progress: bool,
    stop_after: int | None = None, done: Callable[[], bool] | None = None,
) -> tuple[float, int]:
    """AdamW with linear warmup and cosine decay for `steps` batches, stopping after
    `stop_after` of them or once `done()` (asked every STOP_CHECK_EVERY steps) says so, if
    given; returns the last loss and the steps taken."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, int(WARMUP_SHARE * steps))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        # Down to a tenth of the peak rather than zero: the last steps still teach something.
        return 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    model.train()
    bar = tqdm(range(steps if stop_after is None else stop_after), desc="base model",
               file=sys.stderr, disable=not progress)
    loss = torch.tensor(float("nan"))
    taken = 0
    for step in bar:
        if done is not None and step and step % STOP_CHECK_EVERY == 0:
            model.eval()
            finished = done()
            model.train()
            if finished:
                break
        batch = next(data)
        loss = model(input_ids=batch.input_ids, labels=batch.labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        taken = step + 1
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    model.eval()
    return loss.item(), taken


def _build_into(folder: Path, params: BuildParams, *, progress: bool) -> dict[str, object]:
    threads = torch.get_num_threads()
    torch.set_num_threads(BUILD_THREADS)
    try:
        tokenizer = make_tokenizer()
        torch.manual_seed(params.seed)
        config = model_config(
            layers=params.layers, hidden=params.hidden, vocab_size=len(tokenizer),
            eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id,
        )
        model = LlamaForCausalLM(config)
        data = batches(
            tokenizer, skills=CORPUS_SKILLS, seed=params.seed, batch_size=params.batch_size
        )
        started = time.monotonic()
        done = None
        if params.stop_at is not None:
            stop_at, skill = params.stop_at, SKILLS[CORPUS_SKILLS[0]]
            stream = training_items(skill, random.Random(f"stop:{params.seed}"))
            checks = [next(stream) for _ in range(STOP_CHECK_ITEMS)]

            def done() -> bool:
                with torch.no_grad():
                    return share_right(model, tokenizer, checks) >= stop_at

        final_loss, trained_steps = train(
            model, data, steps=params.steps, lr=params.lr, progress=progress,
            stop_after=params.stop_after, done=done)
        train_seconds = time.monotonic() - started

        model.generation_config = GenerationConfig(
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
        )
        # Trained in float32, saved in bfloat16: vLLM on a CPU serves float32 checkpoints in
        # bfloat16 anyway (warning about every tensor), and the accuracy measured below should
        # be that of the weights it serves. Upcasting for LoRA training is exact.
        model.to(torch.bfloat16)
        with transformers_bars_off():
            model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        # Measured on the saved folder, which also proves that it loads.
        accuracy = {
            skill: exact_match(folder, skill=skill, n=params.eval_items)
            for skill in (*CORPUS_SKILLS, *NEIGHBOUR_SKILLS)
        }
    finally:
        torch.set_num_threads(threads)
    return {
        "corpus_skills": list(CORPUS_SKILLS),
        "accuracy": accuracy,
        "final_loss": final_loss,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": train_seconds,
        "trained_steps": trained_steps,
    }


def _read_marker(out_dir: Path) -> dict | None:
    try:
        marker = json.loads((out_dir / MARKER).read_text())
    except FileNotFoundError:
        return None
    # A marker from another format version is still ours, but never a match for these params.
    return marker if marker.get("format") == MARKER_FORMAT else {"format": marker.get("format")}


def _write_marker(folder: Path, params: BuildParams, summary: dict[str, object]) -> None:
    marker = {"format": MARKER_FORMAT, "params": asdict(params), "summary": summary}
    (folder / MARKER).write_text(json.dumps(marker, indent=2) + "\n")


def replace_folder(out_dir: Path, staging: Path) -> None:
    # A rename cannot replace a non-empty folder, so an older build steps aside first; at every
    # moment `out_dir` is either absent or a complete build.
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        os.rename(out_dir, old / out_dir.name)
        os.rename(staging, out_dir)
        shutil.rmtree(old)
    else:
        os.rename(staging, out_dir)


def _report(
    out_dir: Path, params: BuildParams, summary: dict, *, reused: bool
) -> BuildReport:
    return BuildReport(
        path=out_dir,
        params=params,
        corpus_skills=tuple(summary["corpus_skills"]),
        accuracy=dict(summary["accuracy"]),
        final_loss=summary["final_loss"],
        parameters=summary["parameters"],
        train_seconds=summary["train_seconds"],
        reused=reused,
        trained_steps=summary.get("trained_steps"),
    )
