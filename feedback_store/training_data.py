"""What the training side reads: new feedback, and examples for SFT, preference and binary methods.

Every function reads one split: `train` (the default) leaves held-out interactions out, `heldout`
returns only them, so an eval never scores what training saw. A pair belongs to a split only
when both of its interactions do. Every example carries the ids of the interactions and feedback
it came from, so a trained adapter can be traced to its data.

`until` bounds the feedback read (ids <= until): read `latest_feedback_id` first, build the
examples up to it and record it as the run's and adapter's `data_watermark`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import islice, product
from statistics import fmean
from typing import Any, Literal

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session, contains_eager

from lifelong.feedback_store.feedback import settled_max_id
from lifelong.feedback_store.models import Feedback, Interaction
from lifelong.feedback_store.records import Split


@dataclass(frozen=True)
class Prompt:
    """What the model was asked: chat `messages` or a text `prompt`."""

    endpoint: str
    messages: list[dict[str, Any]] | None
    prompt: str | None

    @classmethod
    def of(cls, interaction: Interaction) -> Prompt:
        request = interaction.request
        return cls(interaction.endpoint, request.get("messages"), request.get("prompt"))


@dataclass(frozen=True)
class SftExample:
    prompt: Prompt
    completion: str
    # "anchor": not feedback but the base model's own answer, replayed (adapters/anchors.py)
    source: Literal["correction", "outcome", "rating", "anchor"]
    interaction_ids: tuple[str, ...]
    feedback_ids: tuple[int, ...]


@dataclass(frozen=True)
class PreferencePair:
    prompt: Prompt
    chosen: str
    rejected: str
    source: Literal["preference", "correction", "outcome", "rating"]
    interaction_ids: tuple[str, ...]  # the chosen one first, then the rejected one if any
    feedback_ids: tuple[int, ...]


@dataclass(frozen=True)
class BinaryExample:
    prompt: Prompt
    completion: str
    desirable: bool
    interaction_ids: tuple[str, ...]
    feedback_ids: tuple[int, ...]


def latest_feedback_id(session: Session) -> int:
    """The highest feedback id below which no feedback can still appear (0 when there is none):
    the watermark to build examples `until`, and to record as a run's `data_watermark`."""
    return settled_max_id(session)


def count_feedback_since(session: Session, *, watermark: int, split: Split = "train") -> int:
    """How many feedback items of `split` have an id above `watermark` (a data trigger's count)."""
    query = (
        select(func.count()).select_from(Feedback).join(Feedback.interaction)
        .where(Interaction.heldout == (split == "heldout"), Feedback.id > watermark)
    )
    return session.scalar(query) or 0


def feedback_since(
    session: Session, *, watermark: int, split: Split = "train", limit: int | None = None
) -> list[Feedback]:
    """Feedback with id > `watermark`, oldest first, each with its interaction loaded.

    Take the next watermark from the last row returned. An id watermark is only safe if no lower
    id can appear after a higher one was read, and a PostgreSQL sequence does not promise that:
    two transactions take ids 10 and 11, 11 commits first, a reader advances to 11 and never sees
    10. So this reads only up to `latest_feedback_id`, an id settled under a lock that every
    feedback insert holds in shared mode (`feedback.settled_max_id`): ids at or below it are
    committed or gone for good. (The lock protects only writes made through this package. Do
    not call this in a transaction that has inserted feedback: it would wait for itself.)
    """
    query = (
        _feedback_query(split=split, until=settled_max_id(session))
        .where(Feedback.id > watermark)
        .order_by(Feedback.id)
        .limit(limit)
    )
    return list(session.scalars(query))


def sft_examples(
    session: Session, *, split: Split = "train", min_rating: float = 1.0, until: int | None = None
) -> list[SftExample]:
    """Prompt/completion pairs worth imitating, one per interaction at most:
    its latest correction; else its own response, if every outcome that states `passed` says it
    passed; else its own response, if its mean rating is at least `min_rating` (the default is a
    thumbs-up on the default -1..1 scale)."""
    by_interaction = _group(_load(session, split=split, until=until))
    examples = []
    for interaction, rows in by_interaction.values():
        corrections = [row for row in rows if row.kind == "correction"]
        verdict, outcome_ids = _verdict(rows)
        ratings = [row for row in rows if row.kind == "rating"]
        if corrections:
            last = corrections[-1]
            assert last.text is not None  # a check constraint guarantees it
            examples.append(SftExample(
                Prompt.of(interaction), last.text, "correction", (interaction.id,), (last.id,)
            ))
        elif verdict is True:
            examples.append(SftExample(
                Prompt.of(interaction), interaction.response_text, "outcome", (interaction.id,),
                outcome_ids,
            ))
        elif ratings and _mean_score(ratings) >= min_rating:
            examples.append(SftExample(
                Prompt.of(interaction), interaction.response_text, "rating", (interaction.id,),
                tuple(row.id for row in ratings),
            ))
    return examples


def preference_pairs(
    session: Session,
    *,
    split: Split = "train",
    max_pairs_per_prompt: int = 16,
    until: int | None = None,
) -> list[PreferencePair]:
    """Chosen/rejected answers to one prompt, from (in this order, duplicates dropped):
    explicit preferences (over another interaction to the same prompt, or over a given text);
    corrections (the correction over the original answer); and, among answers to the same
    prompt (`prompt_key`), each that passed over each that failed, then each rated higher over
    each rated lower. The implicit kinds are capped at `max_pairs_per_prompt` per prompt, so a
    popular prompt cannot crowd out the rest (n answers would give up to n**2/4 pairs)."""
    rows = _load(session, split=split, until=until)
    by_interaction = _group(rows)
    others = _interactions(
        session, ids={row.preferred_over for row in rows if row.preferred_over is not None}
    )
    heldout = split == "heldout"
    pairs: list[PreferencePair] = []
    seen: set[tuple[str, str, str]] = set()

    def keep(pair: PreferencePair) -> None:
        # The same two texts for the same prompt teach the same thing once.
        key = (json.dumps([pair.prompt.messages, pair.prompt.prompt]), pair.chosen, pair.rejected)
        if key not in seen and pair.chosen != pair.rejected:
            seen.add(key)
            pairs.append(pair)

    for interaction, feedback in by_interaction.values():
        for row in feedback:
            if row.kind == "preference" and row.preferred_over is not None:
                other = others.get(row.preferred_over)
                # Across prompts a pair teaches nothing; across splits it would leak.
                if other is None or other.heldout != heldout:
                    continue
                if other.prompt_key != interaction.prompt_key:
                    continue
                keep(PreferencePair(
                    Prompt.of(interaction), interaction.response_text, other.response_text,
                    "preference", (interaction.id, other.id), (row.id,),
                ))
            elif row.kind == "preference" and row.rejected_text is not None:
                keep(PreferencePair(
                    Prompt.of(interaction), interaction.response_text, row.rejected_text,
                    "preference", (interaction.id,), (row.id,),
                ))
    for interaction, feedback in by_interaction.values():
        corrections = [row for row in feedback if row.kind == "correction"]
        if corrections:
            last = corrections[-1]
            assert last.text is not None
            keep(PreferencePair(
                Prompt.of(interaction), last.text, interaction.response_text, "correction",
                (interaction.id,), (last.id,),
            ))

    by_prompt: dict[str, list[tuple[Interaction, list[Feedback]]]] = defaultdict(list)
    for entry in by_interaction.values():
        by_prompt[entry[0].prompt_key].append(entry)
    for answers in by_prompt.values():
        if len(answers) < 2:
            continue
        verdicts = [(entry, *_verdict(entry[1])) for entry in answers]
        passed = [(e, ids) for e, verdict, ids in verdicts if verdict is True]
        failed = [(e, ids) for e, verdict, ids in verdicts if verdict is False]
        for ((good, _), good_ids), ((bad, _), bad_ids) in _capped(
            product(passed, failed), max_pairs_per_prompt
        ):
            keep(PreferencePair(
                Prompt.of(good), good.response_text, bad.response_text, "outcome",
                (good.id, bad.id), good_ids + bad_ids,
            ))
        rated = [
            (interaction, _mean_score(ratings), tuple(row.id for row in ratings))
            for interaction, feedback in answers
            if (ratings := [row for row in feedback if row.kind == "rating"])
        ]
        better = (
            (high, low) for high, low in product(rated, rated) if high[1] > low[1]
        )
        for (good, _, good_ids), (bad, _, bad_ids) in _capped(better, max_pairs_per_prompt):
            keep(PreferencePair(
                Prompt.of(good), good.response_text, bad.response_text, "rating",
                (good.id, bad.id), good_ids + bad_ids,
            ))
    return pairs


def binary_examples(
    session: Session, *, split: Split = "train", threshold: float = 0.0, until: int | None = None
) -> list[BinaryExample]:
    """Rated answers labelled desirable or not (thumbs, for KTO-like methods): one per
    interaction, by its mean rating above or below `threshold`; exactly at it, none."""
    examples = []
    for interaction, feedback in _group(_load(session, split=split, until=until)).values():
        ratings = [row for row in feedback if row.kind == "rating"]
        if not ratings or (mean := _mean_score(ratings)) == threshold:
            continue
        examples.append(BinaryExample(
            Prompt.of(interaction), interaction.response_text, mean > threshold,
            (interaction.id,), tuple(row.id for row in ratings),
        ))
    return examples


def _feedback_query(*, split: Split, until: int | None) -> Select[tuple[Feedback]]:
    query = (
        select(Feedback)
        .join(Feedback.interaction)
        .where(Interaction.heldout == (split == "heldout"))
        .options(contains_eager(Feedback.interaction))
    )
    return query if until is None else query.where(Feedback.id <= until)


def _load(session: Session, *, split: Split, until: int | None) -> list[Feedback]:
    return list(session.scalars(_feedback_query(split=split, until=until).order_by(Feedback.id)))


def _group(rows: Iterable[Feedback]) -> dict[str, tuple[Interaction, list[Feedback]]]:
    """interaction id -> (interaction, its feedback in id order), interactions in first-feedback
    order."""
    groups: dict[str, tuple[Interaction, list[Feedback]]] = {}
    for row in rows:
        groups.setdefault(row.interaction_id, (row.interaction, []))[1].append(row)
    return groups


def _interactions(session: Session, *, ids: set[str]) -> dict[str, Interaction]:
    if not ids:
        return {}
    return {row.id: row for row in session.scalars(select(Interaction).where(Interaction.id.in_(ids)))}


def _verdict(rows: list[Feedback]) -> tuple[bool | None, tuple[int, ...]]:
    """True if every outcome stating `passed` says passed, False if every one says failed,
    None if there is none or they disagree; with the ids of those outcomes."""
    stated = [row for row in rows if row.kind == "outcome" and row.passed is not None]
    verdicts = {row.passed for row in stated}
    verdict = verdicts.pop() if len(verdicts) == 1 else None
    return verdict, tuple(row.id for row in stated)


def _mean_score(ratings: list[Feedback]) -> float:
    return fmean(row.score for row in ratings if row.score is not None)


def _capped(pairs: Iterable[Any], cap: int) -> list[Any]:
    return list(islice(pairs, cap))
