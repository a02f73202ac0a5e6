"""One GRPO run: practise on verifiable tasks through vLLM, learn from the graded attempts.

`run_grpo` records a `running` training run (method "grpo"), resolves the parent adapter (the
champion unless told otherwise, none when `fresh`), and then, round after round:

1. rollout: K samples of each of the round's practice tasks from the current policy, through
   the real vLLM server over HTTP (`rollout.sample_groups`), graded by each task's verifier and
   stored as `rollouts` rows (run, round, task, policy name, text, reward);
2. update: group-relative advantages (flat groups counted and left out), then
   `updates_per_round` passes of the clipped GRPO loss (`grpo.grpo_loss`) over the informative
   answers, on the LoRA parameters only;
3. load: the updated adapter is saved to a fresh folder and loaded into vLLM under a fresh name
   (never in place, never unloaded), and the next round samples from it: on-policy.

The last round's weights become a `candidate` in a version folder with a manifest, registered
in the same transaction that finishes the run, like any other training run (`run_lifecycle`);
the gate decides. `practise` is the rounds loop alone: `training_run.run_training` calls it
after the feedback methods of a recipe ending in grpo.

Practice tasks are train-split tasks with a verifier installed here (`rollouts.practice_tasks`):
held-out tasks are the judge's. The KL reference is the weights the run started from (the
parent, or the base model when fresh): a copy of the LoRA tensors, swapped in for one no-grad
forward per batch, so no second model is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from sqlalchemy.orm import Session, sessionmaker

from lifelong.adapters.artifact import base_model_identity
from lifelong.adapters.batches import Encoded, collate, encode
from lifelong.adapters.grpo import group_advantages, grpo_loss, token_logps
from lifelong.adapters.grpo_config import GrpoConfig
from lifelong.adapters.lora_config import LoraTrainingConfig
from lifelong.adapters.lora_trainer import TrainingDiverged, load_model, resolve_device
from lifelong.adapters.pause_file import PauseFile
from lifelong.adapters.rollout import Group, PracticeTask, load_adapter, sample_groups
from lifelong.adapters.run_lifecycle import Run, RunOutcome, TrainingCancelled, opened_run
from lifelong.evals.verifiers import usable_verifier, verifier_names
from lifelong.feedback_store.rollouts import (
    NewRollout,
    add_rollouts,
    practice_tasks,
    tasks_from_outcomes,
)
from lifelong.feedback_store.training_data import Prompt

logger = logging.getLogger(__name__)

ROUNDS_FOLDER = "rounds"  # <adapters_dir>/rounds/grpo-run0007-<hex>-r03: what vLLM loads between rounds


@dataclass(frozen=True)
class UpdateStats:
    answers: int  # the informative answers the update saw
    steps: int
    loss: float  # mean over the round's optimizer steps
    clipped_fraction: float
    kl: float


def grpo_update(
    model: PeftModel,
    rows: list[Encoded],
    advantages: torch.Tensor,
    *,
    optimizer: torch.optim.Optimizer,
    grpo: GrpoConfig,
    max_grad_norm: float,
    pad_id: int,
    reference: dict[str, torch.Tensor] | None,
    generator: torch.Generator,
    pause: PauseFile | None = None,
) -> UpdateStats:
    """`grpo.updates_per_round` passes of the GRPO loss over `rows` (answers with their
    advantages), `grpo.batch_size` answers a step. The sampling policy's log-probabilities
    (`old`) and the reference's are computed once, before the first step.
    Before each forward pass the run waits while `pause` says users come first.
    Raises TrainingDiverged on a NaN or infinite loss."""
    wait = pause.wait if pause is not None else (lambda: None)
    device = next(model.parameters()).device
    model.eval()  # no dropout: the ratio compares two forwards of the same weights
    order = torch.randperm(len(rows), generator=generator).tolist()
    batches = []
    for start in range(0, len(rows), grpo.batch_size):
        chosen = order[start:start + grpo.batch_size]
        batch = collate([rows[i] for i in chosen], pad_id=pad_id).to(device)
        wait()
        with torch.no_grad():
            old, mask = token_logps(_logits(model, batch), batch.labels)
            ref = None
            if reference is not None:
                with _lora_weights(model, reference):
                    ref, _ = token_logps(_logits(model, batch), batch.labels)
        batches.append((batch, old, ref, mask, advantages[chosen].to(device)))
    trainable = [p for p in model.parameters() if p.requires_grad]
    losses, clipped, kls = [], [], []
    for _ in range(grpo.updates_per_round):
        for k in torch.randperm(len(batches), generator=generator).tolist():
            batch, old, ref, mask, advantage = batches[k]
            wait()
            logps, _ = token_logps(_logits(model, batch), batch.labels)
            out = grpo_loss(logps, old, advantage, mask, clip_eps=grpo.clip_eps,
                            beta=grpo.kl_beta, ref_logps=ref)
            if not torch.isfinite(out.loss):
                raise TrainingDiverged(f"GRPO loss is {out.loss.item()}")
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(out.loss.item())
            clipped.append(out.clipped_fraction)
            kls.append(out.kl)
    return UpdateStats(answers=len(rows), steps=len(losses), loss=_mean(losses),
                       clipped_fraction=_mean(clipped), kl=_mean(kls))


def run_grpo(
    *,
    db_url: str,
    base_model_dir: Path,
    adapters_dir: Path,
    vllm_url: str,
    parent_version: str | None = None,
    fresh: bool = False,
    config: LoraTrainingConfig | None = None,
    grpo: GrpoConfig | None = None,
    task_tag: str | None = None,
    seed: int = 0,
    max_seconds: float | None = None,
    device: str = "auto",
    run_id: int | None = None,
    cancelled: Callable[[], bool] | None = None,
    pause_file: Path | None = None,
) -> RunOutcome:
    """Practise on the store's train-split tasks (tagged `task_tag`, if given) through the vLLM
    server at `vllm_url`, learn by GRPO, and register the result as a candidate. While
    `pause_file` exists (the daemon's users are being served) no rollout request is sent and no
    optimizer step taken (`pause_file.PauseFile`).

    The run is skipped when there is no practice task. A time limit ends the run after the
    round it falls in; what was learned is kept. Raises ValueError (parent_version with fresh),
    DatabaseNotMigrated or UnknownRun before a run is recorded; afterwards whatever went wrong
    (EvalRequestFailed, AdapterLoadRefused, TrainingCancelled, ...), with the run marked failed.
    """
    if fresh and parent_version is not None:
        raise ValueError("give parent_version or fresh, not both")
    config, grpo = config or LoraTrainingConfig(), grpo or GrpoConfig()
    base_model_dir, adapters_dir = Path(base_model_dir), Path(adapters_dir).resolve()
    spec = PracticeSpec(vllm_url=vllm_url, grpo=grpo, task_tag=task_tag, pause_file=pause_file)
    run_config = {
        "methods": ["grpo"], "hyperparameters": config.to_dict(), **spec.to_dict(),
        "seed": seed, "max_seconds": max_seconds, "fresh": fresh, "device": device,
        "base_model_dir": str(base_model_dir),
    }
    started = time.monotonic()
    with opened_run(db_url, run_id=run_id, recipe=("grpo",), parent_version=parent_version,
                    config=run_config) as run:
        history: list[dict[str, Any]] = []
        run.failure_metrics = lambda: {"rounds": history}
        parent = run.parent(parent_version=parent_version, fresh=fresh,
                            base_model_dir=base_model_dir)
        tasks = load_practice_tasks(run.sessions, tag=task_tag)
        run.update(parent_version=parent.version if parent else None,
                   data_watermark=parent.data_watermark if parent else None)
        if not tasks:
            return run.skip(no_tasks_reason(task_tag))

        model, tokenizer = load_model(
            base_model_dir, parent_dir=Path(parent.path) if parent else None, config=config,
            seed=seed, device=resolve_device(device))
        practise(model, tokenizer, tasks=tasks, spec=spec, run=run, adapters_dir=adapters_dir,
                 config=config, seed=seed, cancelled=cancelled,
                 deadline=None if max_seconds is None else started + max_seconds,
                 history=history,
                 report=lambda rounds: run.update(metrics={"outcome": "running",
                                                           "rounds": rounds}))
        seconds = time.monotonic() - started
        watermark = (parent.data_watermark or 0) if parent else 0  # GRPO reads no feedback
        summary = {"rounds": history, "seconds": seconds, "stop_reason": "completed"
                   if len(history) == grpo.rounds else "time_limit"}
        # In the shape the other methods' manifests have (what `adapters list/show` print),
        # plus the practice figures: no feedback is read, so the watermark stays the parent's.
        data = {"since": watermark, "watermark": watermark,
                **practice_data(history, tasks=len(tasks))}
        return run.publish(
            model, adapters_dir=adapters_dir, parent=parent,
            base_model=base_model_identity(base_model_dir), data_watermark=watermark, data=data,
            feedback_ids=[], methods=["grpo"],
            hyperparameters={**config.to_dict(), "grpo": grpo.to_dict()}, seed=seed,
            summary=summary, seconds=seconds)


@dataclass(frozen=True)
class PracticeSpec:
    """How a run practises: through which vLLM server, with which GRPO settings, on which tasks
    (`task_tag`), and which pause file makes it wait for users."""

    vllm_url: str
    grpo: GrpoConfig = field(default_factory=GrpoConfig)
    task_tag: str | None = None
    pause_file: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"grpo": self.grpo.to_dict(), "vllm_url": self.vllm_url, "task_tag": self.task_tag,
                "pause_file": str(self.pause_file) if self.pause_file else None}


def load_practice_tasks(sessions: sessionmaker[Session], *, tag: str | None) -> list[PracticeTask]:
    """Train-split tasks (tagged `tag`, if given) whose verifier is installed here, after making
    tasks of the logged outcomes that say how to check an answer."""
    with sessions.begin() as session:
        made = tasks_from_outcomes(session, verifiers=verifier_names(), usable=usable_verifier)
    if made:
        logger.info("made %d practice tasks from logged outcomes", made)
    with sessions() as session:
        return [_practice(row)
                for row in practice_tasks(session, verifiers=verifier_names(), tag=tag)]


def no_tasks_reason(tag: str | None) -> str:
    return (f"no train-split task{f' tagged {tag}' if tag else ''} with an installed verifier "
            "to practise on")


def practise(
    model: PeftModel,
    tokenizer: Any,
    *,
    tasks: list[PracticeTask],
    spec: PracticeSpec,
    run: Run,
    adapters_dir: Path,
    config: LoraTrainingConfig,
    seed: int,
    cancelled: Callable[[], bool] | None,
    deadline: float | None,
    history: list[dict[str, Any]],
    report: Callable[[list[dict[str, Any]]], None],
) -> None:
    """GRPO rounds on `model`'s LoRA, in place: rollout through vLLM -> stored, graded samples
    -> update -> the new weights loaded under a fresh name. Each round's figures are appended
    to `history` and handed to `report`. The KL reference is the weights practice starts from.
    A `deadline` (time.monotonic()) ends practice after the round it falls in."""
    grpo, vllm_url = spec.grpo, spec.vllm_url
    pause = PauseFile(spec.pause_file)
    model.eval()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None \
        else tokenizer.eos_token_id
    reference = ({name: p.detach().clone() for name, p in model.named_parameters()
                  if p.requires_grad} if grpo.kl_beta > 0 else None)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=grpo.learning_rate, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    draw = _task_cycle(tasks, random.Random(seed))
    rounds_dir = adapters_dir / ROUNDS_FOLDER
    # Unique on the server even across stores (tests share one vLLM between databases).
    run_name = f"grpo-run{run.id:04d}-{uuid.uuid4().hex[:6]}"
    # Round 0 samples from the starting weights, loaded like every later round.
    policy = _publish_round(model, rounds_dir, vllm_url, run_name, 0)
    for round_ in range(grpo.rounds):
        if cancelled is not None and cancelled():
            raise TrainingCancelled(f"cancelled after {round_} rounds")
        began, paused_before = time.monotonic(), pause.paused_s
        chosen = [next(draw) for _ in range(min(grpo.prompts_per_round, len(tasks)))]
        groups = asyncio.run(sample_groups(
            vllm_url, policy, chosen, k=grpo.group_size, temperature=grpo.temperature,
            max_tokens=grpo.max_new_tokens, concurrency=grpo.concurrency, pause=pause))
        sampled = time.monotonic()
        with run.sessions.begin() as session:
            add_rollouts(session, training_run_id=run.id, round=round_, rollouts=_rows(groups))
        rewards = torch.tensor([s.reward for g in groups for s in g.samples])
        grouped = group_advantages(rewards, grpo.group_size)
        keep = grouped.informative.nonzero().flatten().tolist()
        answers = [(g.task, s.text) for g in groups for s in g.samples]
        rows = [encode(tokenizer, _prompt(answers[i][0]), answers[i][1],
                       max_length=config.max_length) for i in keep]
        stats = None
        if rows:  # a round of flat groups only teaches nothing; the policy stays
            stats = grpo_update(
                model, rows, grouped.advantages[keep], optimizer=optimizer, grpo=grpo,
                max_grad_norm=config.max_grad_norm, pad_id=pad_id, reference=reference,
                generator=generator, pause=pause)
            if round_ + 1 < grpo.rounds:
                policy = _publish_round(model, rounds_dir, vllm_url, run_name, round_ + 1)
        history.append({
            "round": round_, "policy": groups[0].policy, "tasks": len(groups),
            "samples": len(rewards), "mean_reward": float(rewards.mean()),
            "pass_rate": _mean([float(s.passed) for g in groups for s in g.samples]),
            "flat_groups": grouped.flat_groups, "answers_trained": len(rows),
            "steps": stats.steps if stats else 0, "loss": stats.loss if stats else None,
            "clipped_fraction": stats.clipped_fraction if stats else None,
            "kl": stats.kl if stats else None, "seconds": time.monotonic() - began,
            "sampling_seconds": sampled - began,
            "paused_seconds": pause.paused_s - paused_before,
        })
        logger.info("GRPO round %d: %s", round_, history[-1])
        report(history)
        if deadline is not None and time.monotonic() > deadline:
            break


def practice_data(history: list[dict[str, Any]], *, tasks: int) -> dict[str, Any]:
    """What a run's practice adds to its manifest's data summary."""
    return {"examples": {"grpo": {"new": sum(r["answers_trained"] for r in history),
                                  "replayed": 0}},
            "practice_tasks": tasks, "rollouts": sum(r["samples"] for r in history)}


# --- the pieces of the run ----------------------------------------------------------------

def _logits(model: PeftModel, batch: Any) -> torch.Tensor:
    return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits


@contextlib.contextmanager
def _lora_weights(model: PeftModel, weights: dict[str, torch.Tensor]) -> Iterator[None]:
    """The model with `weights` in place of its LoRA tensors, then its own again."""
    params = dict(model.named_parameters())
    own = {name: params[name].detach().clone() for name in weights}
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    try:
        yield
    finally:
        with torch.no_grad():
            for name, value in own.items():
                params[name].copy_(value)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _task_cycle(tasks: list[PracticeTask], rng: random.Random) -> Iterator[PracticeTask]:
    while True:
        order = list(tasks)
        rng.shuffle(order)
        yield from order


def _practice(row: Any) -> PracticeTask:
    return PracticeTask(id=row.id, messages=row.messages, prompt=row.prompt,
                        reference=row.reference, verifier=row.verifier, options=dict(row.options))


def _prompt(task: PracticeTask) -> Prompt:
    endpoint = "chat.completions" if task.messages is not None else "completions"
    return Prompt(endpoint, task.messages, task.prompt)


def _rows(groups: list[Group]) -> list[NewRollout]:
    return [NewRollout(task_id=g.task.id, policy=g.policy, sample=k, text=s.text,
                       finish_reason=s.finish_reason, reward=s.reward, passed=s.passed)
            for g in groups for k, s in enumerate(g.samples)]


def _publish_round(model: PeftModel, rounds_dir: Path, vllm_url: str, run_name: str,
                   round_: int) -> str:
    """Save the current LoRA weights to a fresh folder and have vLLM serve them under a fresh
    name; the name. The folder stays: vLLM may read it again after evicting the adapter."""
    name = f"{run_name}-r{round_:02d}"
    folder = rounds_dir / name
    model.save_pretrained(str(folder))
    load_adapter(vllm_url, name, str(folder))
    return name
