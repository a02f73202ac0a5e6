"""The synthetic skills: question/answer tasks the base model is trained on, or deliberately not.

A skill draws one `(question, answer)` pair from a `random.Random`. The corpus holds
`CORPUS_SKILLS` only; `NEIGHBOUR_SKILLS` are close cousins the base model never sees, so it is
poor at them and continual learning has something real to learn.

Every skill's questions are split once and for all by a hash of the question text: the held-out
share never enters the training corpus, so accuracy on it measures generalisation rather than
recall, and the split is the same for every seed, every process and every consumer.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

HELDOUT_SHARE = 0.1
# Draws in a row that bring no new held-out question before a skill counts as exhausted: far
# more than collecting the last of add2's 810 takes, and an impossible request still ends.
_PATIENCE = 100_000

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Skill:
    """A task: `draw(rng)` returns one `(question, answer)` pair."""

    name: str
    description: str
    draw: Callable[[random.Random], tuple[str, str]]


class NotEnoughHeldOutItems(ValueError):
    """A skill has fewer distinct held-out questions than were asked for."""


def _add2(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    return f"What is {a} + {b}?", str(a + b)


def _sub2(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    a, b = max(a, b), min(a, b)  # keep answers non-negative, as in the first school years
    return f"What is {a} - {b}?", str(a - b)


def _add3(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(100, 999), rng.randint(100, 999)
    return f"What is {a} + {b}?", str(a + b)


def _last_digit(rng: random.Random) -> tuple[str, str]:
    number = rng.randint(1000, 9999)
    return f"Say the last digit of {number}.", str(number % 10)


def _echo(rng: random.Random) -> tuple[str, str]:
    number = rng.randint(1000, 9999)
    return f"Repeat {number}.", str(number)


SKILLS: dict[str, Skill] = {
    skill.name: skill
    for skill in (
        Skill("add2", "two-digit addition: 'What is 47 + 38?' -> '85'", _add2),
        Skill("sub2", "two-digit subtraction: 'What is 47 - 38?' -> '9'", _sub2),
        Skill("add3", "three-digit addition: 'What is 347 + 538?' -> '885'", _add3),
        # Unlike the arithmetic cousins, one the tiny model learns in a few hundred LoRA steps:
        # the demo's new skill.
        Skill("echo", "repeat a four-digit number: 'Repeat 4817.' -> '4817'", _echo),
        # Copying one digit from a fixed place: learned steadily (the tiny model went 0 -> 99%
        # in 200 LoRA steps), where echo is learned suddenly, at a step that moves with the
        # CPU's arithmetic. The tests that need a new skill learned for sure use this one.
        Skill("last_digit", "say a number's last digit: 'Say the last digit of 4817.' -> '7'",
              _last_digit),
    )
}
CORPUS_SKILLS = ("add2",)
NEIGHBOUR_SKILLS = ("sub2", "add3", "echo", "last_digit")


def is_heldout(question: str) -> bool:
    """Whether `question` belongs to the held-out share (fixed by its text alone)."""
    digest = hashlib.sha256(question.encode()).digest()
    return int.from_bytes(digest[:8], "big") < HELDOUT_SHARE * 2**64


def training_items(skill: Skill, rng: random.Random) -> Iterator[tuple[str, str]]:
    """An endless stream of `skill`'s pairs from outside the held-out share."""
    while True:
        question, answer = skill.draw(rng)
        if not is_heldout(question):
            yield question, answer


def heldout_items(skill: Skill, *, n: int, seed: int) -> list[tuple[str, str]]:
    """`n` distinct held-out pairs of `skill`, the same for the same seed.

    Raises NotEnoughHeldOutItems if the skill cannot supply `n` distinct held-out questions.
    """
    rng = random.Random(f"heldout:{skill.name}:{seed}")
    items: dict[str, str] = {}
    misses = 0
    while len(items) < n and misses < _PATIENCE:
        question, answer = skill.draw(rng)
        if is_heldout(question) and question not in items:
            items[question] = answer
            misses = 0
        else:
            misses += 1
    if len(items) < n:
        raise NotEnoughHeldOutItems(
            f"{skill.name} gave {len(items)} distinct held-out questions, {n} asked for"
        )
    return list(items.items())


def messages(question: str, answer: str | None = None, *, system: str | None = None) -> Messages:
    """The chat turns for one pair: optional system prompt, the user's question, the answer."""
    turns = [{"role": "system", "content": system}] if system is not None else []
    turns.append({"role": "user", "content": question})
    if answer is not None:
        turns.append({"role": "assistant", "content": answer})
    return turns
