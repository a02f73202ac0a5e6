"""`lifelong train`: one training run in this process (the daemon runs it as a child:
`python -m lifelong.daemon.cli train --run-id N`), SFT/DPO stages, GRPO practice, or both."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from lifelong.daemon.cli.base import ensure_base_model
from lifelong.daemon.cli.options import (
    ConfigOption,
    DataDirOption,
    fail,
    quiet_openmp,
    settings_from,
    vllm_url,
)
from lifelong.daemon.settings import Settings

if TYPE_CHECKING:
    from lifelong.adapters.grpo_run import PracticeSpec
    from lifelong.adapters.run_lifecycle import RunOutcome


def train(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    now: Annotated[bool, typer.Option(
        "--now", help="Train even below training.min_new_examples (one new example will do).",
    )] = False,
    method: Annotated[list[str] | None, typer.Option(
        "--method", "-m", help="A method of the recipe, in order (repeat it); default: "
        "training.recipe.",
    )] = None,
    fresh: Annotated[bool, typer.Option(
        "--fresh", help="Start from zero rather than the champion's weights.",
    )] = False,
    parent: Annotated[str | None, typer.Option(
        help="Continue from this adapter version instead of the champion.",
    )] = None,
    run_id: Annotated[int | None, typer.Option(
        "--run-id", hidden=True, help="A running run made by the daemon, to carry out.",
    )] = None,
    pause_file: Annotated[Path | None, typer.Option(
        "--pause-file", hidden=True, help="GRPO waits while this file exists (the daemon's "
        "users are being served).",
    )] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train one adapter from the feedback since the champion's data, in this process.

    It becomes a `candidate` in the registry; the gate decides whether it is served. Ctrl-C or
    SIGTERM cancels it (the run is marked failed and nothing is registered).
    """
    quiet_openmp()
    import signal
    import threading

    from lifelong.adapters import AdapterError, InvalidRecipe, UnknownMethod, run_training
    from lifelong.adapters.recipe import check_recipe
    from lifelong.feedback_store.errors import DatabaseNotMigrated, StoreError

    settings = settings_from(config, data_dir=data_dir)
    t = settings.training
    if fresh and parent is not None:
        fail("give --fresh or --parent, not both")
    try:
        methods = check_recipe(method or t.recipe)
    except (UnknownMethod, InvalidRecipe) as exc:
        fail(str(exc))
    ensure_base_model(settings)
    lora = t.lora_config()  # valid: the settings carry the config's own bounds
    cancel = threading.Event()

    def cancelled(signum: int, frame: object) -> None:
        logging.getLogger(__name__).warning("%s: cancelling training", signal.strsignal(signum))
        cancel.set()

    signal.signal(signal.SIGTERM, cancelled)
    signal.signal(signal.SIGINT, cancelled)
    if list(methods) == ["grpo"]:
        _train_grpo(settings, lora, fresh=fresh or t.fresh, parent=parent, run_id=run_id,
                    cancelled=cancel.is_set, pause_file=pause_file)
        return
    practice = _practice_spec(settings, pause_file) if "grpo" in methods else None
    try:
        outcome = run_training(
            db_url=settings.database_url, base_model_dir=settings.base_model_path,
            adapters_dir=settings.adapters_dir, parent_version=parent, fresh=fresh or t.fresh,
            methods=methods, config=lora, seed=t.seed,
            replay_fraction=t.replay_fraction, min_new_examples=1 if now else t.min_new_examples,
            min_rating=t.min_rating, max_seconds=t.max_seconds, device=t.device, run_id=run_id,
            cancelled=cancel.is_set, progress=progress, practice=practice,
            anchor_fraction=t.anchor_fraction, anchors_file=settings.anchors_file,
        )
    except (UnknownMethod, InvalidRecipe, DatabaseNotMigrated) as exc:
        fail(str(exc))
    except (StoreError, AdapterError) as exc:  # a bad --parent, a corrupted champion
        fail(f"training run failed: {exc}")
    except Exception as exc:
        typer.echo(f"lifelong: training run failed: {type(exc).__name__}: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(_describe(outcome))


def _describe(outcome: RunOutcome) -> str:
    """One line for a run: skipped and why, or its candidate, its stages' losses and practice
    pass rates."""
    if outcome.status == "skipped":
        return f"training run {outcome.run_id} skipped: {outcome.reason}"
    stages = ", ".join(
        f"{stage['method']} {stage['examples']} examples, loss {stage['first_loss']:.3f} -> "
        f"{stage['final_loss']:.3f}" for stage in outcome.metrics["stages"]
    )
    rounds = outcome.metrics.get("rounds")
    if rounds:
        stages += (f", grpo {len(rounds)} rounds, practice pass rate "
                   f"{rounds[0]['pass_rate']:.1%} -> {rounds[-1]['pass_rate']:.1%}")
    elif "grpo_left_out" in outcome.metrics["data"]:
        stages += f", grpo left out: {outcome.metrics['data']['grpo_left_out']}"
    seconds = outcome.metrics["seconds"] + outcome.metrics.get("practice_seconds", 0.0)
    return (f"training run {outcome.run_id} made candidate {outcome.adapter_version} "
            f"in {seconds:.0f} s ({stages}); at {outcome.adapter_path}")


def _practice_spec(settings: Settings, pause_file: Path | None) -> PracticeSpec:
    """How a run practises, from training.grpo and the daemon's vLLM."""
    from lifelong.adapters.grpo_run import PracticeSpec

    g = settings.training.grpo
    return PracticeSpec(vllm_url=vllm_url(settings), grpo=g.grpo_config(), task_tag=g.task_tag,
                        pause_file=pause_file)


def _train_grpo(settings: Settings, lora: Any, *, fresh: bool, parent: str | None,
                run_id: int | None, cancelled: Callable[[], bool],
                pause_file: Path | None) -> None:
    """`lifelong train -m grpo`: practice rounds through the daemon's vLLM, a candidate."""
    from lifelong.adapters import AdapterError
    from lifelong.adapters.grpo_run import run_grpo
    from lifelong.feedback_store.errors import DatabaseNotMigrated, StoreError

    t = settings.training
    spec = _practice_spec(settings, pause_file)
    url = spec.vllm_url
    try:
        outcome = run_grpo(
            db_url=settings.database_url, base_model_dir=settings.base_model_path,
            adapters_dir=settings.adapters_dir, vllm_url=url, parent_version=parent, fresh=fresh,
            config=lora, grpo=spec.grpo, task_tag=spec.task_tag, seed=t.seed,
            max_seconds=t.max_seconds, device=t.device, run_id=run_id, cancelled=cancelled,
            pause_file=pause_file,
        )
    except DatabaseNotMigrated as exc:
        fail(str(exc))
    except (StoreError, AdapterError) as exc:
        fail(f"training run failed: {exc}")
    except Exception as exc:
        typer.echo(f"lifelong: GRPO run failed (vLLM at {url}): {type(exc).__name__}: {exc}",
                   err=True)
        raise typer.Exit(1) from None
    if outcome.status == "skipped":
        typer.echo(f"training run {outcome.run_id} skipped: {outcome.reason}")
        return
    rounds = outcome.metrics["rounds"]
    typer.echo(f"training run {outcome.run_id} made candidate {outcome.adapter_version} in "
               f"{outcome.metrics['seconds']:.0f} s (grpo, {len(rounds)} rounds, practice pass "
               f"rate {rounds[0]['pass_rate']:.1%} -> {rounds[-1]['pass_rate']:.1%}); at "
               f"{outcome.adapter_path}")
