"""What the trainer costs: training tokens/s of `train_lora` against a minimal torch + peft loop.

Both train the same fresh LoRA (same rank, targets, seed) on the same tokenized SFT examples
with the same batch size, learning rate, gradient clipping and number of steps. Rounds
alternate the two (interleaved, so machine noise hits both alike); each round loads the model
afresh and times only the training call. The trainer runs as the daemon runs it: progress bar
on, an `on_step` callback recording every step. Prints tokens/s per round, the medians and
their ratio (target: >= 0.9).

`--against bf16` compares the trainer with itself under bf16 autocast instead (the CPU's
AVX512-BF16 or AMX, if any), and prints the last step's loss of each: is the faster one still
learning the same?

    .venv/bin/python bench/train_throughput.py --model lifelong-data/base_model
    .venv/bin/python bench/train_throughput.py            # builds a tiny model first (minutes)
    .venv/bin/python bench/train_throughput.py --model lifelong-data/base_model --against bf16
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from lifelong.adapters import LoraTrainingConfig, load_model, train_lora
from lifelong.adapters.batches import collate, encode
from lifelong.adapters.training_set import Portion, TrainingSet
from lifelong.base_model import SKILLS, build, messages, training_items
from lifelong.feedback_store.training_data import Prompt, SftExample


def examples(n: int, seed: int) -> TrainingSet:
    """`n` corrected subtraction answers, as the store would hand them over."""
    items = training_items(SKILLS["sub2"], random.Random(seed))
    sft = tuple(
        SftExample(Prompt("chat.completions", messages(question), None), answer, "correction",
                   (f"chatcmpl-{i}",), (i,))
        for i, (question, answer) in enumerate((next(items) for _ in range(n)), start=1)
    )
    return TrainingSet(sft=sft, pairs=(), binary=(), since=0, watermark=n,
                       portions={"sft": Portion(n, 0), "pairs": Portion(0, 0),
                                 "binary": Portion(0, 0)})


def trainer_round(model_dir: Path, data: TrainingSet, config: LoraTrainingConfig,
                  seed: int) -> tuple[float, float]:
    """(tokens/s, the last step's loss)."""
    model, tokenizer = load_model(model_dir, parent_dir=None, config=config, seed=seed,
                                  device=torch.device("cpu"))
    steps: list[tuple] = []
    started = time.perf_counter()
    report = train_lora(model, tokenizer, data, methods=("sft",), config=config, seed=seed,
                        on_step=lambda *values: steps.append(values), progress=True)
    return report.tokens / (time.perf_counter() - started), float(steps[-1][1])


def plain_round(model_dir: Path, data: TrainingSet, config: LoraTrainingConfig, seed: int) -> float:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    torch.manual_seed(seed)
    model = get_peft_model(base, LoraConfig(
        r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
        target_modules=list(config.target_modules), task_type="CAUSAL_LM"))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    assert config.max_steps is not None
    started = time.perf_counter()
    rows = [encode(tokenizer, e.prompt, e.completion, max_length=config.max_length) for e in data.sft]
    order = torch.randperm(len(rows), generator=generator).tolist()
    tokens = 0
    for step in range(config.max_steps):
        start = step * config.batch_size % len(rows)
        batch = collate([rows[i] for i in order[start : start + config.batch_size]],
                        pad_id=tokenizer.pad_token_id)
        loss = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                     labels=batch.labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
        tokens += batch.tokens()
    return tokens / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="base model folder (default: build a tiny one)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--against", choices=["plain", "bf16"], default="plain",
                        help="plain: a minimal torch+peft loop; bf16: the trainer under autocast")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as scratch:
        model_dir = args.model or build(Path(scratch) / "tiny", seed=0, steps=300, layers=2,
                                        hidden=128, batch_size=32, eval_items=20).path
        config = LoraTrainingConfig(rank=8, alpha=16, learning_rate=1e-3, warmup_steps=0,
                                    batch_size=args.batch_size, max_steps=args.steps,
                                    max_length=512)
        # Steps never run out of examples, so the trainer's epoch boundary costs nothing extra.
        data = examples(args.steps * args.batch_size, seed=0)
        trainer, other, losses = [], [], {"trainer": [], args.against: []}
        for round_ in range(args.rounds):
            speed, loss = trainer_round(model_dir, data, config, seed=round_)
            trainer.append(speed)
            losses["trainer"].append(loss)
            if args.against == "bf16":
                speed, loss = trainer_round(model_dir, data, replace(config, precision="bf16"),
                                            seed=round_)
                losses["bf16"].append(loss)
            else:
                speed = plain_round(model_dir, data, config, seed=round_)
            other.append(speed)
            print(f"round {round_ + 1}: trainer {trainer[-1]:8.0f} tokens/s   "
                  f"{args.against} {other[-1]:8.0f} tokens/s", flush=True)
    ratio = statistics.median(trainer) / statistics.median(other)
    print(f"model {model_dir}, {args.steps} steps x {args.batch_size} examples, "
          f"{args.threads} threads, {args.rounds} rounds")
    print(f"median tokens/s: trainer {statistics.median(trainer):.0f}, "
          f"{args.against} {statistics.median(other):.0f}; ratio {ratio:.3f}"
          + (" (target >= 0.9)" if args.against == "plain" else ""))
    if args.against == "bf16":
        print("last-step loss per round: " + "; ".join(
            f"{name} {', '.join(f'{value:.3f}' for value in values)}"
            for name, values in losses.items()))


if __name__ == "__main__":
    main()
