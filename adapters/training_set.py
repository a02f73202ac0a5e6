"""The training set of one run: what the store's feedback teaches, new since the parent plus replay.

Continual learning trains each adapter on top of its parent, which has already learned
everything up to its `data_watermark`. So a run takes every example with feedback newer than
that watermark, plus a seeded replay sample of the older ones, so that what the parent learned
is rehearsed rather than forgotten, while the cost of a run grows with the new data, not with
the age of the store.

Three kinds of examples, read through `feedback_store.training_data` (train split only: the
held-out split is never trained on):

- `sft`: corrections (the ideal response), answers whose verifiable outcome passed (rejection
  sampling on the model's own successes), answers rated at or above `min_rating`;
- `pairs`: explicit preferences, corrections over the original answer, and implicit pairs among
  answers to one prompt (passed over failed, higher over lower rated), for DPO;
- `binary`: answers rated up or down whose interaction is in no pair, for KTO.

Every example keeps the interaction and feedback ids it came from (`feedback_ids()`), so a run
can say exactly which feedback it learned from.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TypeAlias, TypeVar

from sqlalchemy.orm import Session

from lifelong.feedback_store.training_data import (
    BinaryExample,
    PreferencePair,
    SftExample,
    binary_examples,
    latest_feedback_id,
    preference_pairs,
    sft_examples,
)

Example: TypeAlias = SftExample | PreferencePair | BinaryExample
E = TypeVar("E", SftExample, PreferencePair, BinaryExample)
KINDS = ("sft", "pairs", "binary")


@dataclass(frozen=True)
class Portion:
    """How many examples of one kind are new since the watermark, and how many are replayed."""

    new: int
    replayed: int


@dataclass(frozen=True)
class TrainingSet:
    """The examples of one run, new ones first, with the feedback window they were read from."""

    sft: tuple[SftExample, ...]
    pairs: tuple[PreferencePair, ...]
    binary: tuple[BinaryExample, ...]
    since: int  # feedback ids above this are new (the parent's data watermark; 0 when fresh)
    watermark: int  # the highest feedback id read: the new adapter's data watermark
    portions: dict[str, Portion]  # "sft", "pairs", "binary" -> new/replayed counts

    @property
    def anchors(self) -> int:
        """Of `sft`, the base model's own answers to everyday prompts (anchors.py)."""
        return sum(example.source == "anchor" for example in self.sft)

    def examples(self, kind: str) -> tuple[Example, ...]:
        """The examples of one kind: "sft", "pairs" or "binary". Raises KeyError."""
        return {"sft": self.sft, "pairs": self.pairs, "binary": self.binary}[kind]

    def feedback_ids(self, kinds: tuple[str, ...] = KINDS) -> list[int]:
        """The sorted ids of the feedback behind the examples of `kinds`."""
        return sorted({i for kind in kinds for e in self.examples(kind) for i in e.feedback_ids})

    def interaction_ids(self, kinds: tuple[str, ...] = KINDS) -> list[str]:
        """The sorted ids of the interactions behind the examples of `kinds`."""
        return sorted({i for kind in kinds for e in self.examples(kind) for i in e.interaction_ids})


def build_training_set(
    session: Session,
    *,
    since: int,
    replay_fraction: float,
    seed: int,
    min_rating: float = 1.0,
    binary_threshold: float = 0.0,
) -> TrainingSet:
    """The train-split examples up to the latest settled feedback id, new ones since `since`.

    `replay_fraction` is the share of each kind's examples drawn from the older ones (0.25: one
    replayed example for every three new ones; fewer if fewer exist), sampled with `seed`.
    `min_rating`: the mean rating at which an answer is worth imitating; `binary_threshold`: the
    rating above which an answer is desirable, below which undesirable. Raises ValueError for a
    `replay_fraction` outside [0, 1).
    """
    if not 0.0 <= replay_fraction < 1.0:
        raise ValueError(f"replay_fraction must be within [0, 1), got {replay_fraction}")
    watermark = latest_feedback_id(session)
    sft = sft_examples(session, split="train", min_rating=min_rating, until=watermark)
    pairs = preference_pairs(session, split="train", until=watermark)
    # A pair says more than a thumb (which of two answers is better), so a rated answer that is
    # already in a pair is not also a binary example.
    paired = {i for pair in pairs for i in pair.interaction_ids}
    binary = [
        example
        for example in binary_examples(session, split="train", threshold=binary_threshold,
                                       until=watermark)
        if example.interaction_ids[0] not in paired
    ]
    rng = random.Random(seed)
    portions = {}
    chosen_sft, portions["sft"] = _with_replay(sft, since=since, fraction=replay_fraction, rng=rng)
    chosen_pairs, portions["pairs"] = _with_replay(
        pairs, since=since, fraction=replay_fraction, rng=rng
    )
    chosen_binary, portions["binary"] = _with_replay(
        binary, since=since, fraction=replay_fraction, rng=rng
    )
    return TrainingSet(
        sft=tuple(chosen_sft), pairs=tuple(chosen_pairs), binary=tuple(chosen_binary),
        since=since, watermark=watermark, portions=portions,
    )


def _with_replay(
    examples: list[E], *, since: int, fraction: float, rng: random.Random
) -> tuple[list[E], Portion]:
    # An example is new when any of its feedback is: a correction given today to an answer
    # rated last month teaches something the parent has not seen.
    new = [example for example in examples if max(example.feedback_ids) > since]
    old = [example for example in examples if max(example.feedback_ids) <= since]
    wanted = round(len(new) * fraction / (1.0 - fraction))
    replayed = rng.sample(old, min(wanted, len(old)))
    return new + replayed, Portion(new=len(new), replayed=len(replayed))
