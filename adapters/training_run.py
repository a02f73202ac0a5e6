"""One training run from start to finish: the entry point the daemon's CLI calls in a process of
its own.

`run_training` records a `running` training run (or takes the one the daemon made), resolves the
parent adapter (the champion unless told otherwise, none when `fresh`) and verifies it, builds
the training set from the store since the parent's data watermark plus replay, trains, writes
the adapter folder and then, in one transaction, registers it as a `candidate` and finishes the
run as `succeeded` with its metrics and data watermark. The run row's life (open, update,
publish, skip, fail) is `run_lifecycle`'s, shared with `grpo_run`.

- Too few new examples: the run finishes `skipped`, without an adapter, its metrics saying
  `{"outcome": "skipped", "reason": ...}`.
- Any exception, cancellation included: the run is marked `failed` with the error text, nothing
  is registered, a folder already written is removed, and the exception propagates.
- The wall-clock limit `max_seconds` stops training where it stands; what was learned by then is
  kept as a candidate (the gate judges it) and the metrics say `stop_reason: time_limit`.
- A recipe ending in `grpo` (e.g. sft, dpo, grpo) then practises: GRPO rounds through vLLM on the
  store's verifiable tasks (`grpo_run.practise`), starting from what the feedback methods just
  taught, and one candidate holds both. Without enough new feedback the run is skipped as
  above (the daemon's practice cycles run grpo alone, `grpo_run.run_grpo`); without a task to
  practise on, grpo is left out like a method without examples.

Per-step loss, learning rate and tokens go into the run row's metrics every `metrics_every`
steps. To cancel from a signal, set a `threading.Event` in the handler and pass its `is_set`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from peft import PeftModel

from lifelong.adapters.anchors import anchor_count, anchor_examples, base_answers
from lifelong.adapters.artifact import base_model_identity
from lifelong.adapters.grpo_run import (
    PracticeSpec,
    load_practice_tasks,
    no_tasks_reason,
    practice_data,
    practise,
)
from lifelong.adapters.lora_config import LoraTrainingConfig
from lifelong.adapters.lora_trainer import TrainingReport, load_model, resolve_device, train_lora
from lifelong.adapters.recipe import (
    DEFAULT_RECIPE,
    METHOD_EXAMPLES,
    PRACTICE_METHOD,
    InvalidRecipe,
    split_recipe,
)
from lifelong.adapters.run_lifecycle import Run, RunOutcome, TrainingCancelled, opened_run
from lifelong.adapters.training_set import TrainingSet, build_training_set
from lifelong.feedback_store.models import Adapter

logger = logging.getLogger(__name__)



class NothingTrained(Exception):
    """Training stopped (time limit) before its first step; there is nothing to keep."""


def run_training(
    *,
    db_url: str,
    base_model_dir: Path,
    adapters_dir: Path,
    parent_version: str | None = None,
    fresh: bool = False,
    methods: Sequence[str] = DEFAULT_RECIPE,
    config: LoraTrainingConfig | None = None,
    seed: int = 0,
    replay_fraction: float = 0.25,
    min_new_examples: int = 1,
    min_rating: float = 1.0,
    max_seconds: float | None = None,
    device: str = "auto",
    run_id: int | None = None,
    cancelled: Callable[[], bool] | None = None,
    metrics_every: int = 10,
    progress: bool = True,
    practice: PracticeSpec | None = None,
    anchor_fraction: float = 0.0,
    anchors_file: Path | None = None,
) -> RunOutcome:
    """Train one adapter from the store's feedback and register it as a candidate.

    `parent_version`: the adapter to continue from; None: the champion (the base model if there
    is none), or nothing at all when `fresh`. `methods`: the recipe, in order; a method with no
    examples is left out. `anchor_fraction` > 0 (with `anchors_file`, where the base model's
    answers are kept): that share of the SFT stage replays the base model's own answers to
    everyday prompts (`anchors.py`). A recipe ending in grpo practises after the feedback methods, as
    `practice` says (the vLLM server, GRPO settings, tasks). `run_id`: a `running` run made by
    the caller, else one is started.

    Raises ValueError (parent_version with fresh, a bad recipe, grpo without `practice`, a run
    that is not running), DatabaseNotMigrated or UnknownRun before any run is recorded;
    afterwards whatever went wrong (UnknownAdapter, AdapterChecksumMismatch, BaseModelMismatch,
    LoraShapeMismatch, TrainingCancelled, NothingTrained, EvalRequestFailed, ...), with the run
    marked failed.
    """
    if fresh and parent_version is not None:
        raise ValueError("give parent_version or fresh, not both")
    recipe, practises = split_recipe(methods)
    if practises and not recipe:
        raise InvalidRecipe("a recipe of grpo alone is run_grpo's (grpo_run.run_grpo)")
    if practises and practice is None:
        raise ValueError("a recipe with grpo needs `practice`: the vLLM server to practise through")
    config = config or LoraTrainingConfig()
    # Absolute: the registry's path is handed to vLLM servers that do not share our cwd.
    base_model_dir, adapters_dir = Path(base_model_dir), Path(adapters_dir).resolve()
    all_methods = recipe + ((PRACTICE_METHOD,) if practises else ())
    run_config = {
        "methods": list(all_methods), "hyperparameters": config.to_dict(), "seed": seed,
        "replay_fraction": replay_fraction, "min_new_examples": min_new_examples,
        "min_rating": min_rating, "max_seconds": max_seconds, "fresh": fresh, "device": device,
        "anchor_fraction": anchor_fraction,
        "base_model_dir": str(base_model_dir),
        **(practice.to_dict() if practises and practice else {}),
    }
    started = time.monotonic()
    with opened_run(db_url, run_id=run_id, recipe=all_methods, parent_version=parent_version,
                    config=run_config) as run:
        history = _StepHistory(run, every=metrics_every)
        rounds: list[dict[str, Any]] = []
        run.failure_metrics = lambda: {"history": history.snapshot(),
                                       **({"rounds": rounds} if rounds else {})}
        parent = run.parent(parent_version=parent_version, fresh=fresh,
                            base_model_dir=base_model_dir)
        base_model = base_model_identity(base_model_dir)
        with run.sessions() as session:
            training_set = build_training_set(
                session, since=(parent.data_watermark or 0) if parent else 0,
                replay_fraction=replay_fraction, seed=seed, min_rating=min_rating,
            )
        run.update(data_watermark=training_set.watermark,
                   parent_version=parent.version if parent else None)

        new = sum(training_set.portions[METHOD_EXAMPLES[method]].new for method in recipe)
        if new < min_new_examples:
            reason = (f"{new} new examples for {'+'.join(recipe)} since feedback id "
                      f"{training_set.since}; at least {min_new_examples} needed")
            return run.skip(reason, data=_data_summary(training_set, recipe))

        model, tokenizer = load_model(
            base_model_dir, parent_dir=Path(parent.path) if parent else None, config=config,
            seed=seed, device=resolve_device(device),
        )
        if anchor_fraction > 0 and anchors_file is not None and "sft" in recipe:
            training_set = _with_anchors(training_set, model, tokenizer, file=anchors_file,
                                         base_sha256=base_model["sha256"],
                                         fraction=anchor_fraction, seed=seed)
        report = train_lora(
            model, tokenizer, training_set, methods=recipe, config=config, seed=seed,
            on_step=history.record, cancelled=cancelled, max_seconds=max_seconds,
            progress=progress,
        )
        if report.stop_reason == "cancelled":
            raise TrainingCancelled(f"cancelled after {report.steps} steps")
        if report.steps == 0:
            raise NothingTrained(f"the time limit of {max_seconds} s ran out before the "
                                 "first step")
        practised: dict[str, Any] | None = None
        if practises and report.stop_reason == "time_limit":
            practised = {"left_out": "the time limit ran out in the feedback methods"}
        elif practises and practice is not None:
            practised = _practise(
                practice, model, tokenizer, run=run, adapters_dir=adapters_dir, config=config,
                seed=seed, cancelled=cancelled,
                deadline=None if max_seconds is None else started + max_seconds,
                history=history, rounds=rounds)
        return _publish(
            run, model=model, adapters_dir=adapters_dir, parent=parent, base_model=base_model,
            training_set=training_set, recipe=recipe, config=config, seed=seed, report=report,
            history=history, practised=practised, rounds=rounds,
        )


def _practise(
    practice: PracticeSpec, model: PeftModel, tokenizer: Any, *, run: Run, adapters_dir: Path,
    config: LoraTrainingConfig, seed: int, cancelled: Callable[[], bool] | None,
    deadline: float | None, history: _StepHistory, rounds: list[dict[str, Any]],
) -> dict[str, Any]:
    """GRPO rounds after the feedback methods (appended to `rounds`); what the run's data summary
    says of them."""
    tasks = load_practice_tasks(run.sessions, tag=practice.task_tag)
    if not tasks:
        reason = no_tasks_reason(practice.task_tag)
        logger.info("training run %s: grpo left out: %s", run.id, reason)
        return {"left_out": reason}
    practise(model, tokenizer, tasks=tasks, spec=practice, run=run, adapters_dir=adapters_dir,
             config=config, seed=seed, cancelled=cancelled, deadline=deadline, history=rounds,
             report=lambda done: run.update(metrics={
                 "outcome": "running", "history": history.snapshot(), "rounds": done}))
    return {"practice_tasks": len(tasks), "grpo": practice.grpo.to_dict()}


def _publish(
    run: Run,
    *,
    model: PeftModel,
    adapters_dir: Path,
    parent: Adapter | None,
    base_model: dict[str, str],
    training_set: TrainingSet,
    recipe: tuple[str, ...],
    config: LoraTrainingConfig,
    seed: int,
    report: TrainingReport,
    history: _StepHistory,
    practised: dict[str, Any] | None = None,
    rounds: list[dict[str, Any]] | None = None,
) -> RunOutcome:
    """The candidate: what the feedback methods (and practice, if any) taught, with its data."""
    summary = {**report.to_dict(), "tokens_per_second": report.tokens / report.seconds}
    data = _data_summary(training_set, recipe)
    methods, hyperparameters = list(recipe), config.to_dict()
    if practised is not None and "left_out" in practised:
        data["grpo_left_out"] = practised["left_out"]
    elif practised is not None and rounds:
        extra = practice_data(rounds, tasks=practised["practice_tasks"])
        data = {**data, **extra, "examples": {**data["examples"], **extra["examples"]}}
        summary = {**summary, "rounds": rounds,
                   "practice_seconds": sum(r["seconds"] for r in rounds)}
        methods.append(PRACTICE_METHOD)
        hyperparameters = {**hyperparameters, "grpo": practised["grpo"]}
    trained = tuple(METHOD_EXAMPLES[stage.method] for stage in report.stages)
    return run.publish(
        model, adapters_dir=adapters_dir, parent=parent, base_model=base_model,
        data_watermark=training_set.watermark, data=data,
        feedback_ids=training_set.feedback_ids(trained), methods=methods,
        hyperparameters=hyperparameters, seed=seed, summary=summary, seconds=report.seconds,
        progress={"history": history.snapshot()},
    )


def _with_anchors(
    training_set: TrainingSet, model: PeftModel, tokenizer: Any, *, file: Path, base_sha256: str,
    fraction: float, seed: int,
) -> TrainingSet:
    count = anchor_count(len(training_set.sft), fraction)
    if count == 0:
        return training_set
    answers = base_answers(model, tokenizer, cache_file=file, base_sha256=base_sha256)
    anchors = anchor_examples(answers, count=count, seed=seed)
    logger.info("sft stage: %d feedback examples and %d anchors", len(training_set.sft),
                len(anchors))
    return replace(training_set, sft=training_set.sft + tuple(anchors))


def _data_summary(training_set: TrainingSet, recipe: tuple[str, ...]) -> dict[str, Any]:
    return {
        "since": training_set.since,
        "watermark": training_set.watermark,
        "anchors": training_set.anchors,
        "examples": {
            method: vars(training_set.portions[METHOD_EXAMPLES[method]]) for method in recipe
        },
    }


class _StepHistory:
    """Per-step metrics, kept in memory and written to the run row every `every` steps."""

    def __init__(self, run: Run, *, every: int) -> None:
        self.run, self.every = run, max(1, every)
        self.columns: dict[str, list[float]] = {"step": [], "loss": [], "lr": [], "tokens": []}

    def record(self, step: int, loss: float, lr: float, tokens: int) -> None:
        for name, value in (("step", step), ("loss", loss), ("lr", lr), ("tokens", tokens)):
            self.columns[name].append(value)
        if step % self.every == 0:
            self.run.update(metrics={"outcome": "running", "history": self.snapshot()})

    def snapshot(self) -> dict[str, list[float]]:
        return {name: list(values) for name, values in self.columns.items()}
