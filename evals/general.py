"""The general-capability guard: what any chat model already does, so that learning cannot erase it.

A user's own model comes with no retention suite of its own, and the feedback a team gives
teaches one narrow thing: an adapter that learns "answer sums with the bare number" can start
answering "What is the capital of France?" with "14766666" (measured on SmolLM2-135M). So every
model gets a suite that needs no reference answers: a shipped, diverse set of everyday prompts
(`general_prompts.txt`, frozen with a checksum), answered once by the base model itself; a
candidate is scored on how alike its answers are to those (`agreement` verifier: difflib's
similarity ratio, 0..1), and the gate holds the suite to a tolerance like any retention suite.

The prompts split in two fixed halves by a hash of their text: `eval` prompts make the suite,
`anchor` prompts are what training may replay with the base model's own answers (so the guard
never judges what was trained on).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from lifelong.evals.suites import EvalItem

PROMPTS_FILE = Path(__file__).with_name("general_prompts.txt")
PROMPTS_SHA256 = "5e8a8700e613d81e3b21300674db1b5f2a8bcba9237325f276aa1d4e90c89e8a"
SUITE_NAME = "general"
VERIFIER = "agreement"
Part = Literal["eval", "anchor"]


class GeneralPromptsChanged(RuntimeError):
    """The shipped prompt file differs from the one the checksum names (an edited install)."""


def general_prompts(part: Part) -> list[str]:
    """The shipped prompts of one half, in file order. Raises GeneralPromptsChanged."""
    data = PROMPTS_FILE.read_bytes()
    if hashlib.sha256(data).hexdigest() != PROMPTS_SHA256:
        raise GeneralPromptsChanged(
            f"{PROMPTS_FILE} does not match its checksum: reinstall lifelong (a changed prompt "
            "set would silently change what the general suite measures)")
    prompts = [line for line in data.decode().splitlines() if line.strip()]
    return [prompt for prompt in prompts if _part(prompt) == part]


def _part(prompt: str) -> Part:
    return "eval" if hashlib.sha256(prompt.encode()).digest()[0] % 2 == 0 else "anchor"


def chat(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def general_items(answers: Mapping[str, str], *, min_ratio: float = 0.6) -> list[EvalItem]:
    """Suite items from the base model's `answers` (prompt -> answer): each prompt, judged by
    its agreement with what the base model said. Empty answers are left out (nothing to keep)."""
    return [
        EvalItem(id="general-" + hashlib.sha256(prompt.encode()).hexdigest()[:12],
                 messages=chat(prompt), reference=answer, verifier=VERIFIER,
                 options={"min_ratio": min_ratio}, tags=("family:general",))
        for prompt, answer in answers.items() if answer.strip()
    ]
