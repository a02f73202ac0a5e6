"""One training run from start to finish: the entry point the daemon's CLI calls in a process of
its own.

`run_training` records a `running` training run (or takes the one the daemon made), resolves the
parent adapter (the champion unless told otherwise, none when `fresh`) and verifies it, builds
the training set from the store since the parent's data watermark plus replay, trains, writes
the adapter folder and then, in one transaction, registers it as a `candidate` and finishes the
run as `succeeded` with its metrics and data watermark.

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
import os
import shutil
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from peft import PeftModel
from sqlalchemy.orm import Session, sessionmaker

from lifelong.adapters.anchors import anchor_count, anchor_examples, base_answers
from lifelong.adapters.artifact import (
    base_model_identity,
    manifest_checksum,
    next_version,
    verify,
    write_adapter,
)
from lifelong.adapters.lora_config import LoraTrainingConfig
from lifelong.adapters.lora_trainer import (
    DEFAULT_RECIPE,
    METHOD_EXAMPLES,
    METHODS,
    InvalidRecipe,
    TrainingReport,
    UnknownMethod,
    check_recipe,
    load_model,
    resolve_device,
    train_lora,
)
from lifelong.adapters.training_set import TrainingSet, build_training_set
from lifelong.feedback_store import registry
from lifelong.feedback_store.database import ensure_migrated, make_engine
from lifelong.feedback_store.errors import UnknownRun
from lifelong.feedback_store.models import Adapter, TrainingRun
from lifelong.feedback_store.runs import (
    finish_training_run,
    start_training_run,
    update_training_run,
)

if TYPE_CHECKING:  # grpo_run builds on this module
    from lifelong.adapters.grpo_run import PracticeSpec

logger = logging.getLogger(__name__)

PRACTICE_METHOD = "grpo"


class TrainingCancelled(Exception):
    """Training was cancelled; the run is marked failed and nothing is registered."""


class NothingTrained(Exception):
    """Training stopped (time limit) before its first step; there is nothing to keep."""


@dataclass(frozen=True)
class RunOutcome:
    run_id: int
    status: Literal["succeeded", "skipped"]
    adapter_version: str | None
    adapter_path: Path | None
    reason: str | None  # why it was skipped
    metrics: dict[str, Any]


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
    engine = make_engine(db_url)
    try:
        ensure_migrated(engine)
        sessions = sessionmaker(engine, expire_on_commit=False)
        run_id = open_run(sessions, run_id=run_id, recipe=all_methods,
                          parent_version=parent_version, config=run_config)
        history = _StepHistory(sessions, run_id, every=metrics_every)
        rounds: list[dict[str, Any]] = []
        try:
            with sessions() as session:
                parent = parent_adapter(session, parent_version=parent_version, fresh=fresh)
            base_model = base_model_identity(base_model_dir)
            if parent is not None:
                verify(Path(parent.path), base_model_dir, checksum=parent.checksum)
            with sessions() as session:
                training_set = build_training_set(
                    session, since=(parent.data_watermark or 0) if parent else 0,
                    replay_fraction=replay_fraction, seed=seed, min_rating=min_rating,
                )
            update_run(sessions, run_id, data_watermark=training_set.watermark,
                        parent_version=parent.version if parent else None)

            new = sum(training_set.portions[METHOD_EXAMPLES[method]].new for method in recipe)
            if new < min_new_examples:
                reason = (f"{new} new examples for {'+'.join(recipe)} since feedback id "
                          f"{training_set.since}; at least {min_new_examples} needed")
                return _skip(sessions, run_id, reason, _data_summary(training_set, recipe))

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
                    practice, model, tokenizer, sessions=sessions, run_id=run_id,
                    adapters_dir=adapters_dir, config=config, seed=seed, cancelled=cancelled,
                    deadline=None if max_seconds is None else started + max_seconds,
                    history=history, rounds=rounds)
            return _publish(
                sessions, run_id=run_id, model=model, adapters_dir=adapters_dir, parent=parent,
                base_model=base_model, training_set=training_set, recipe=recipe, config=config,
                seed=seed, report=report, history=history, practised=practised, rounds=rounds,
            )
        except BaseException as exc:  # anything at all, Ctrl-C included
            _mark_failed(sessions, run_id, exc, history, rounds)
            raise
    finally:
        engine.dispose()


def split_recipe(methods: Sequence[str]) -> tuple[tuple[str, ...], bool]:
    """The feedback methods of a recipe, in order, and whether it ends by practising (grpo).
    Raises UnknownMethod, InvalidRecipe."""
    methods = list(methods)
    unknown = [m for m in methods if m not in METHODS and m != PRACTICE_METHOD]
    if unknown:
        raise UnknownMethod(f"unknown training methods {unknown}; choose from "
                            f"{[*METHODS, PRACTICE_METHOD]}")
    practises = PRACTICE_METHOD in methods
    if practises and (methods.count(PRACTICE_METHOD) > 1 or methods[-1] != PRACTICE_METHOD):
        raise InvalidRecipe(f"grpo comes last, once: it practises on what the feedback methods "
                            f"taught; got {methods}")
    feedback = [m for m in methods if m != PRACTICE_METHOD]
    if practises and not feedback:
        raise InvalidRecipe("a recipe of grpo alone is run_grpo's (grpo_run.run_grpo)")
    return check_recipe(feedback), practises


def _practise(
    practice: PracticeSpec, model: PeftModel, tokenizer: Any, *,
    sessions: sessionmaker[Session], run_id: int, adapters_dir: Path, config: LoraTrainingConfig,
    seed: int, cancelled: Callable[[], bool] | None, deadline: float | None,
    history: _StepHistory, rounds: list[dict[str, Any]],
) -> dict[str, Any]:
    """GRPO rounds after the feedback methods (appended to `rounds`); what the run's data summary
    says of them."""
    from lifelong.adapters.grpo_run import load_practice_tasks, no_tasks_reason, practise

    tasks = load_practice_tasks(sessions, tag=practice.task_tag)
    if not tasks:
        reason = no_tasks_reason(practice.task_tag)
        logger.info("training run %s: grpo left out: %s", run_id, reason)
        return {"left_out": reason}
    practise(model, tokenizer, tasks=tasks, spec=practice, sessions=sessions, run_id=run_id,
             adapters_dir=adapters_dir, config=config, seed=seed, cancelled=cancelled,
             deadline=deadline, history=rounds,
             report=lambda done: update_run(sessions, run_id, metrics={
                 "outcome": "running", "history": history.snapshot(), "rounds": done}))
    return {"practice_tasks": len(tasks), "grpo": practice.grpo.to_dict()}


def open_run(
    sessions: sessionmaker[Session],
    *,
    run_id: int | None,
    recipe: tuple[str, ...],
    parent_version: str | None,
    config: dict[str, Any],
) -> int:
    """The id of a `running` run for this process: `run_id` (made by the daemon), or a new one.
    Raises UnknownRun, or ValueError for a run that is not running."""
    # This process owns the run from here: a restarted daemon can tell whether it still lives.
    owner = {"host": socket.gethostname(), "pid": os.getpid()}
    with sessions.begin() as session:
        if run_id is None:
            return start_training_run(session, method="+".join(recipe),
                                      parent_version=parent_version, config=config, **owner).id
        row = session.get(TrainingRun, run_id)
        if row is None:
            raise UnknownRun(f"no training run {run_id}", field="run_id")
        if row.status != "running":
            raise ValueError(f"training run {run_id} is {row.status}, not running")
        # The daemon may have recorded "recipe"; the run knows its methods.
        update_training_run(session, run_id=run_id, method="+".join(recipe), **owner)
        return run_id


def _skip(
    sessions: sessionmaker[Session], run_id: int, reason: str, data: dict[str, Any]
) -> RunOutcome:
    logger.info("training run %s skipped: %s", run_id, reason)
    metrics = {"outcome": "skipped", "reason": reason, "data": data}
    with sessions.begin() as session:
        finish_training_run(session, run_id=run_id, status="skipped", metrics=metrics)
    return RunOutcome(run_id, "skipped", None, None, reason, metrics)


def _publish(
    sessions: sessionmaker[Session],
    *,
    run_id: int,
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
    """Write the adapter folder, then register it and finish the run in one transaction."""
    summary = {**report.to_dict(), "tokens_per_second": report.tokens / report.seconds}
    data = _data_summary(training_set, recipe)
    methods, hyperparameters = list(recipe), config.to_dict()
    if practised is not None and "left_out" in practised:
        data["grpo_left_out"] = practised["left_out"]
    elif practised is not None and rounds:
        from lifelong.adapters.grpo_run import practice_data

        extra = practice_data(rounds, tasks=practised["practice_tasks"])
        data = {**data, **extra, "examples": {**data["examples"], **extra["examples"]}}
        summary = {**summary, "rounds": rounds,
                   "practice_seconds": sum(r["seconds"] for r in rounds)}
        methods.append(PRACTICE_METHOD)
        hyperparameters = {**hyperparameters, "grpo": practised["grpo"]}
    with sessions() as session:
        taken = [adapter.version for adapter in registry.list_adapters(session)]
    version = next_version(adapters_dir, taken=taken)
    parent_version = parent.version if parent else None
    trained = tuple(METHOD_EXAMPLES[stage.method] for stage in report.stages)
    path, _ = write_adapter(
        model, adapters_dir=adapters_dir, version=version, parent_version=parent_version,
        base_model=base_model, data_watermark=training_set.watermark, data=data,
        feedback_ids=training_set.feedback_ids(trained), methods=methods,
        hyperparameters=hyperparameters, seed=seed, metrics=summary,
    )
    metrics = {"outcome": "trained", **summary, "data": data, "history": history.snapshot()}
    try:
        with sessions.begin() as session:
            registry.register(
                session, version=version, path=str(path), checksum=manifest_checksum(path),
                parent_version=parent_version, training_run_id=run_id,
                data_watermark=training_set.watermark,
            )
            finish_training_run(session, run_id=run_id, status="succeeded",
                                adapter_version=version, metrics=metrics)
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)  # written but never registered: not an adapter
        raise
    logger.info("training run %s made adapter %s in %.0f s", run_id, version, report.seconds)
    return RunOutcome(run_id, "succeeded", version, path, None, metrics)


def parent_adapter(session: Session, *, parent_version: str | None, fresh: bool) -> Adapter | None:
    """The adapter to continue from: none when fresh, else `parent_version` or the champion.
    Raises UnknownAdapter."""
    if fresh:
        return None
    if parent_version is not None:
        return registry.get(session, version=parent_version)
    return registry.champion(session)


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

    def __init__(self, sessions: sessionmaker[Session], run_id: int, *, every: int) -> None:
        self.sessions, self.run_id, self.every = sessions, run_id, max(1, every)
        self.columns: dict[str, list[float]] = {"step": [], "loss": [], "lr": [], "tokens": []}

    def record(self, step: int, loss: float, lr: float, tokens: int) -> None:
        for name, value in (("step", step), ("loss", loss), ("lr", lr), ("tokens", tokens)):
            self.columns[name].append(value)
        if step % self.every == 0:
            update_run(self.sessions, self.run_id,
                        metrics={"outcome": "running", "history": self.snapshot()})

    def snapshot(self) -> dict[str, list[float]]:
        return {name: list(values) for name, values in self.columns.items()}


def update_run(sessions: sessionmaker[Session], run_id: int, **values: Any) -> None:
    """Set columns of a running run, in a transaction of its own."""
    with sessions.begin() as session:
        update_training_run(session, run_id=run_id, **values)


def _mark_failed(
    sessions: sessionmaker[Session], run_id: int, exc: BaseException, history: _StepHistory,
    rounds: list[dict[str, Any]],
) -> None:
    error = f"{type(exc).__name__}: {exc}"
    logger.error("training run %s failed: %s", run_id, error)
    metrics = {"outcome": "failed", "history": history.snapshot(), **({"rounds": rounds}
                                                                       if rounds else {})}
    try:
        with sessions.begin() as session:
            finish_training_run(session, run_id=run_id, status="failed", error=error,
                                metrics=metrics)
    except Exception:  # the original error matters more; this one is logged
        logger.exception("could not mark training run %s failed", run_id)
