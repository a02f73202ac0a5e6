"""LoRA training on a base model folder: SFT, DPO and KTO stages run in order, one plain loop.

`load_model` puts a fresh LoRA on the base model, or the parent adapter's weights (continual
learning); `train_lora` runs the recipe (e.g. SFT then DPO) over a `TrainingSet` and reports what
happened. Each preference stage's reference model is the weights the stage starts from (the
parent, or the SFT stage's result): its log-probabilities are computed once before the stage,
so no second copy of the model is kept.

The same seed, data and machine (thread count included) give bit-identical adapters: the LoRA
initialisation, the batch order and dropout all draw from the seed.

Why not TRL's trainers: on the embedded model on a CPU, `SFTTrainer` ran at about 0.55x the
tokens/s of this loop (per-step metrics and Trainer machinery dominate a small model's step),
and the loop is short enough to read in one screen. The losses are tested against reference
computations (tests/adapters/test_losses.py).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from lifelong.adapters.batches import Encoded, collate, encode
from lifelong.adapters.lora_config import LoraTrainingConfig
from lifelong.adapters.losses import dpo_loss, kto_loss, sequence_logps
from lifelong.adapters.recipe import (
    METHODS,
    PRACTICE_METHOD,
    UnknownMethod,
    check_recipe,
)
from lifelong.adapters.training_set import TrainingSet
from lifelong.base_model.generation import transformers_bars_off

logger = logging.getLogger(__name__)

# Each method and the examples of a TrainingSet it learns from.
StopReason = Literal["completed", "time_limit", "cancelled"]
OnStep = Callable[[int, float, float, int], None]  # step, loss, learning rate, tokens


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite; the weights are no longer worth keeping."""


class LoraShapeMismatch(ValueError):
    """The parent adapter's rank, alpha or target modules differ from the configured ones."""


@dataclass(frozen=True)
class StageReport:
    method: str
    examples: int
    steps: int
    tokens: int
    first_loss: float
    final_loss: float  # mean of the last ten steps: one step's loss is too noisy to compare
    truncated: int = 0  # examples longer than max_length, trained on their last tokens only


@dataclass(frozen=True)
class TrainingReport:
    stages: list[StageReport]
    steps: int
    tokens: int
    seconds: float
    stop_reason: StopReason

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_device(device: str) -> torch.device:
    """"auto": the GPU when there is one, else the CPU; anything else as torch reads it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_model(
    base_model_dir: Path,
    *,
    parent_dir: Path | None,
    config: LoraTrainingConfig,
    seed: int,
    device: torch.device,
) -> tuple[PeftModel, PreTrainedTokenizerBase]:
    """The base model with a trainable LoRA: fresh (seeded init) or the parent adapter's weights.

    Raises LoraShapeMismatch when the parent's rank, alpha or target modules are not the
    configured ones (continue with the parent's, or train fresh).
    """
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    with transformers_bars_off():
        # Float32 weights even from a bfloat16 folder: upcasting is exact, and the LoRA update
        # of a small model drowns in bfloat16 rounding. On a GPU, autocast computes in bf16
        # unless config.precision says fp32.
        base = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32)
    model: PeftModel
    if parent_dir is None:
        torch.manual_seed(seed)  # LoRA's A matrices start random, B at zero
        lora = LoraConfig(
            r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
            target_modules=list(config.target_modules), task_type="CAUSAL_LM",
        )
        model = get_peft_model(base, lora)
    else:
        lora = LoraConfig.from_pretrained(str(parent_dir))
        if (lora.r, lora.lora_alpha, set(lora.target_modules)) != (
            config.rank, config.alpha, set(config.target_modules)
        ):
            raise LoraShapeMismatch(
                f"parent adapter at {parent_dir} has rank {lora.r}, alpha {lora.lora_alpha}, "
                f"targets {sorted(lora.target_modules)}; configured rank {config.rank}, alpha "
                f"{config.alpha}, targets {sorted(config.target_modules)}: use the parent's "
                "values or train fresh"
            )
        lora.lora_dropout = config.dropout
        model = PeftModel.from_pretrained(base, str(parent_dir), config=lora, is_trainable=True)
    return model.to(device), tokenizer


def train_lora(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    training_set: TrainingSet,
    *,
    methods: Sequence[str],
    config: LoraTrainingConfig,
    seed: int,
    on_step: OnStep | None = None,
    cancelled: Callable[[], bool] | None = None,
    max_seconds: float | None = None,
    progress: bool = True,
) -> TrainingReport:
    """Train `model`'s LoRA weights in place, one stage per method that has examples.

    `on_step(step, loss, lr, tokens)` follows every optimizer step; `cancelled()` is asked before
    each, as is the clock against `max_seconds`: either ends training where it stands, which the
    report's `stop_reason` says. Raises UnknownMethod, InvalidRecipe, TrainingDiverged.
    """
    methods = check_recipe(methods)
    if PRACTICE_METHOD in methods:  # it needs vLLM and tasks: grpo_run.practise
        raise UnknownMethod(f"train_lora runs {list(METHODS)}; grpo practises through vLLM "
                            "(grpo_run)")
    started = time.monotonic()
    device = next(model.parameters()).device
    bf16 = config.bf16(device)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout
    stages = []
    for method in methods:
        if rows := _encode(method, training_set, tokenizer, config.max_length):
            stages.append((method, rows))
    planned = [_stage_steps(len(rows), config) for _, rows in stages]
    # Padding is masked out everywhere; any id will do where a tokenizer names none.
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    bar = tqdm(total=sum(planned), desc="training", file=sys.stderr, disable=not progress)

    def stop_reason() -> StopReason | None:
        if cancelled is not None and cancelled():
            return "cancelled"
        if max_seconds is not None and time.monotonic() - started > max_seconds:
            return "time_limit"
        return None

    reports: list[StageReport] = []
    step, tokens, stopped = 0, 0, None
    for (method, rows), steps in zip(stages, planned, strict=True):
        truncated = sum(any(e.truncated for e in encoded) for encoded, _ in rows)
        logger.info("%s stage: %d examples, %d steps", method, len(rows), steps)
        if truncated:
            logger.warning("%s stage: %d of %d examples are longer than max_length (%d tokens) "
                           "and lose their first tokens; raise training.max_seq_len to keep "
                           "them whole", method, truncated, len(rows), config.max_length)
        refs = _reference_logps(model, rows, pad_id, config.batch_size, bf16) if method != "sft" else None
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=0.0)
        # Dropout belongs to imitation; a preference loss compares the policy with a reference
        # measured without dropout, and noise would swamp the margin (TRL's disable_dropout).
        model.train(method == "sft")
        losses: list[float] = []
        stage_tokens = 0
        for stage_step, indices in enumerate(_index_batches(len(rows), steps, config, generator)):
            if (stopped := stop_reason()) is not None:
                break
            lr = _learning_rate(stage_step, steps, config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss, batch_tokens = _loss(method, model, rows, refs, indices, pad_id, config.beta)
            losses.append(loss.item())
            if not math.isfinite(losses[-1]):
                raise TrainingDiverged(f"{method} loss is {losses[-1]} at step {step + 1}")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)  # free the gradients before the next forward
            step += 1
            stage_tokens += batch_tokens
            if on_step is not None:
                on_step(step, losses[-1], lr, batch_tokens)
            bar.update()
            bar.set_postfix(method=method, loss=f"{losses[-1]:.4f}", refresh=False)
        tokens += stage_tokens
        if losses:
            reports.append(StageReport(
                method=method, examples=len(rows), steps=len(losses), tokens=stage_tokens,
                first_loss=losses[0], final_loss=sum(losses[-10:]) / len(losses[-10:]),
                truncated=truncated,
            ))
        if stopped is not None:
            break
    bar.close()
    model.eval()
    return TrainingReport(
        stages=reports, steps=step, tokens=tokens, seconds=time.monotonic() - started,
        stop_reason=stopped or "completed",
    )


# --- the pieces of the loop ---------------------------------------------------------------

# One row per example: its sequences and, for KTO, whether it is desirable.
#   sft: (answer,)   dpo: (chosen, rejected)   kto: (answer, mismatched answer)
Row = tuple[tuple[Encoded, ...], bool]


def _encode(
    method: str, training_set: TrainingSet, tokenizer: PreTrainedTokenizerBase, n: int
) -> list[Row]:
    if method == "sft":
        return [((encode(tokenizer, e.prompt, e.completion, max_length=n),), True)
                for e in training_set.sft]
    if method == "dpo":
        return [((encode(tokenizer, p.prompt, p.chosen, max_length=n),
                  encode(tokenizer, p.prompt, p.rejected, max_length=n)), True)
                for p in training_set.pairs]
    examples = training_set.binary
    # KTO's KL term asks what the policy makes of answers to other prompts: pair each prompt
    # with the next example's completion (a fixed pairing, so runs stay deterministic).
    return [((encode(tokenizer, e.prompt, e.completion, max_length=n),
              encode(tokenizer, e.prompt, examples[(i + 1) % len(examples)].completion,
                     max_length=n)), e.desirable)
            for i, e in enumerate(examples)]


def _stage_steps(examples: int, config: LoraTrainingConfig) -> int:
    steps = config.epochs * math.ceil(examples / config.batch_size)
    return steps if config.max_steps is None else min(steps, config.max_steps)


def _index_batches(
    examples: int, steps: int, config: LoraTrainingConfig, generator: torch.Generator
) -> Iterator[list[int]]:
    """`steps` batches of example indices, reshuffled every epoch."""
    made = 0
    while made < steps:
        order = torch.randperm(examples, generator=generator).tolist()
        for start in range(0, examples, config.batch_size):
            if made == steps:
                return
            yield order[start : start + config.batch_size]
            made += 1


def _learning_rate(step: int, steps: int, config: LoraTrainingConfig) -> float:
    warmup = min(config.warmup_steps, steps - 1)
    if step < warmup:
        return config.learning_rate * (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, steps - 1 - warmup)
    # Down to a tenth of the peak rather than zero: the last steps still teach something.
    return config.learning_rate * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


def _logps(model: PeftModel, sequences: list[Encoded], pad_id: int) -> torch.Tensor:
    batch = collate(sequences, pad_id=pad_id).to(next(model.parameters()).device)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    return sequence_logps(logits, batch.labels)


@torch.no_grad()
def _reference_logps(
    model: PeftModel, rows: list[Row], pad_id: int, batch_size: int, bf16: bool
) -> torch.Tensor:
    """Log-probabilities of every sequence of every row under the current weights: (rows, 2)."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logps = _logps(model, [seq for seqs, _ in chunk for seq in seqs], pad_id)
        out.append(logps.view(len(chunk), 2).float())
    return torch.cat(out)


def _loss(
    method: str, model: PeftModel, rows: list[Row], refs: torch.Tensor | None,
    indices: list[int], pad_id: int, beta: float,
) -> tuple[torch.Tensor, int]:
    """The method's loss on the examples `indices`, and the tokens it read."""
    chosen = [rows[i] for i in indices]
    if method == "sft":
        batch = collate([seqs[0] for seqs, _ in chosen], pad_id=pad_id)
        batch = batch.to(next(model.parameters()).device)
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                    labels=batch.labels)
        return out.loss, batch.tokens()
    assert refs is not None
    ref = refs[indices].to(next(model.parameters()).device)
    first = [seqs[0] for seqs, _ in chosen]
    second = [seqs[1] for seqs, _ in chosen]
    tokens = sum(len(seq.input_ids) for seq in first + second)
    if method == "dpo":
        # Chosen and rejected in one forward: one pass over the weights instead of two.
        policy = _logps(model, first + second, pad_id)
        policy_chosen, policy_rejected = policy.split(len(chosen))
        return dpo_loss(policy_chosen, policy_rejected, ref[:, 0], ref[:, 1],
                        beta=beta), tokens
    desirable = torch.tensor([flag for _, flag in chosen], device=ref.device)
    policy = _logps(model, first, pad_id)
    with torch.no_grad():  # the KL estimate is a baseline, not something to optimise
        mismatched = _logps(model, second, pad_id)
    return kto_loss(policy, ref[:, 0], desirable, mismatched, ref[:, 1], beta=beta), tokens
