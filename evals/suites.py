"""Eval suites: the items a candidate and its champion both answer, from three sources.

- target: the held-out split of the store's verifiable tasks, one suite per task family. A task's
  family is its first tag `family:<name>` (`FAMILY_TAG`); tasks with none form `untagged`.
- regression: JSONL files in a folder, one suite per `*.jsonl` file (named after the file), one
  item per line: `{"prompt" or "messages", "reference", "verifier", "options", "tags", "id"}`
  (`options`, `tags` and `id` optional). Every line is validated at load, verifier names and
  options included, and every problem is reported at once as `file:line: what is wrong`.
- retention: the items the base model itself passes, frozen into a JSONL file the first time
  (`freeze_retention_suite`) and read back from it ever after, so forgetting is measured against
  where the model began rather than against a moving champion.

An item without an `id` gets one from a hash of its content: stable across reloads and edits of
other lines, which is what pairs a candidate's answer with the champion's.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sqlalchemy.orm import Session

from lifelong.evals.verifiers import InvalidVerifierOptions, UnknownVerifier, check_verifier
from lifelong.feedback_store.models import Task
from lifelong.feedback_store.tasks import list_tasks
from lifelong.feedback_store.training_data import sft_examples

SuiteKind = Literal["target", "regression", "retention"]
FAMILY_TAG = "family:"
ROLES = ("system", "user", "assistant")
LINE_KEYS = {"id", "prompt", "messages", "reference", "verifier", "options", "tags"}


@dataclass(frozen=True, slots=True)
class EvalItem:
    """One thing to answer and how to judge it: exactly one of `prompt` and `messages`."""

    id: str
    reference: str
    verifier: str
    prompt: str | None = None
    messages: list[dict[str, str]] | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError(f"item {self.id}: give exactly one of prompt or messages")

    def to_json(self) -> dict[str, Any]:
        line: dict[str, Any] = {"id": self.id}
        line.update({"prompt": self.prompt} if self.prompt is not None else {"messages": self.messages})
        line.update(reference=self.reference, verifier=self.verifier, options=dict(self.options),
                    tags=list(self.tags))
        return line


@dataclass(frozen=True, slots=True)
class Suite:
    name: str
    kind: SuiteKind
    items: tuple[EvalItem, ...]


class SuiteError(ValueError):
    """A suite that cannot be loaded; `problems` holds every `file:line: what is wrong`."""

    def __init__(self, problems: list[str]) -> None:
        shown = problems[:50] + ([f"... and {len(problems) - 50} more"] if len(problems) > 50 else [])
        super().__init__(f"{len(problems)} problem(s) in eval suites:\n" + "\n".join(shown))
        self.problems = problems


def content_id(line: Mapping[str, Any]) -> str:
    """A stable id from what an item asks and expects (not where it sits in its file)."""
    key = {k: line.get(k) for k in ("prompt", "messages", "reference", "verifier", "options")}
    return "item-" + hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _line_problems(line: Any) -> list[str]:
    """What is wrong with one parsed JSONL line, in words; empty when it is a valid item."""
    if not isinstance(line, dict):
        return [f"expected a JSON object, got {type(line).__name__}"]
    problems = []
    if unknown := sorted(set(line) - LINE_KEYS):
        problems.append(f"unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(LINE_KEYS))})")
    has_prompt, has_messages = "prompt" in line, "messages" in line
    if has_prompt == has_messages:
        problems.append("give exactly one of 'prompt' and 'messages'")
    if has_prompt and (not isinstance(line["prompt"], str) or not line["prompt"].strip()):
        problems.append("'prompt' must be a non-empty string")
    if has_messages:
        messages = line["messages"]
        ok = isinstance(messages, list) and messages and all(
            isinstance(m, dict) and set(m) == {"role", "content"} and m["role"] in ROLES
            and isinstance(m["content"], str) for m in messages)
        if not ok:
            problems.append("'messages' must be a non-empty list of {\"role\": system|user|assistant, "
                            "\"content\": string}")
    if not isinstance(line.get("reference"), str):
        problems.append("'reference' must be a string (quote numbers: \"46\")")
    if not isinstance(line.get("verifier"), str):
        problems.append("'verifier' must be a string naming a verifier")
    if not isinstance(line.get("options", {}), dict):
        problems.append("'options' must be a JSON object")
    tags = line.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        problems.append("'tags' must be a list of strings")
    if "id" in line and (not isinstance(line["id"], str) or not line["id"]):
        problems.append("'id' must be a non-empty string")
    if not problems:
        try:
            check_verifier(line["verifier"], line.get("options", {}), reference=line["reference"])
        except (UnknownVerifier, InvalidVerifierOptions) as error:
            problems.append(str(error))
    return problems


def _read_items(path: Path) -> tuple[list[EvalItem], list[str]]:
    items: list[EvalItem] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        return [], [f"{path}: cannot be read: {error}"]
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except json.JSONDecodeError as error:
            problems.append(f"{path}:{number}: not JSON: {error.msg} (column {error.colno})")
            continue
        if found := _line_problems(line):
            problems += [f"{path}:{number}: {problem}" for problem in found]
            continue
        item_id = line.get("id") or content_id(line)
        if item_id in seen:
            first = seen[item_id]
            problems.append(f"{path}:{number}: duplicate item (id {item_id!r}, first on line {first})")
            continue
        seen[item_id] = number
        items.append(EvalItem(
            id=item_id, prompt=line.get("prompt"), messages=line.get("messages"),
            reference=line["reference"], verifier=line["verifier"],
            options=line.get("options", {}), tags=tuple(line.get("tags", [])),
        ))
    return items, problems


def load_suite_file(path: Path, *, kind: SuiteKind = "regression") -> Suite:
    """One JSONL file as a suite named after the file. Raises SuiteError listing every problem."""
    items, problems = _read_items(path)
    if problems:
        raise SuiteError(problems)
    return Suite(name=path.stem, kind=kind, items=tuple(items))


def load_regression_suites(folder: Path) -> list[Suite]:
    """Every `*.jsonl` in `folder`, sorted by name; an empty list for an empty folder.

    Raises SuiteError with every problem of every file (so one start-up shows them all), or when
    `folder` is not a folder, or a file has no items.
    """
    if not folder.is_dir():
        raise SuiteError([f"{folder}: the regression suite folder does not exist"])
    suites, problems = [], []
    for path in sorted(folder.glob("*.jsonl")):
        items, found = _read_items(path)
        problems += found
        if not items and not found:
            problems.append(f"{path}: no items")
        suites.append(Suite(name=path.stem, kind="regression", items=tuple(items)))
    if problems:
        raise SuiteError(problems)
    return suites


def family(tags: Sequence[str]) -> str:
    """A task's family: the first `family:<name>` tag, else "untagged"."""
    return next((t[len(FAMILY_TAG):] for t in tags if t.startswith(FAMILY_TAG)), "untagged")


def _task_item(task: Task) -> EvalItem:
    return EvalItem(id=task.id, prompt=task.prompt, messages=task.messages, reference=task.reference,
                    verifier=task.verifier, options=dict(task.options), tags=tuple(task.tags))


def target_suites(session: Session) -> list[Suite]:
    """One `target` suite per family of held-out tasks in the store, named `target:<family>`."""
    by_family: dict[str, list[EvalItem]] = {}
    for task in list_tasks(session, split="heldout"):
        by_family.setdefault(family(task.tags), []).append(_task_item(task))
    return [Suite(name=f"target:{name}", kind="target", items=tuple(items))
            for name, items in sorted(by_family.items())]


FEEDBACK_SUITE = "target:feedback"


def feedback_suite(session: Session) -> Suite | None:
    """A `target` suite from the held-out split of the users' own feedback: each held-out
    prompt whose answer was corrected (the correction is the reference) or passed its verifiable
    outcome (the passing answer is the reference), judged by exact match; one item per prompt.
    None when there is no such feedback."""
    items: dict[str, EvalItem] = {}
    for example in sft_examples(session, split="heldout", min_rating=math.inf):
        prompt = example.prompt
        item = EvalItem(
            id=example.interaction_ids[0], reference=example.completion, verifier="exact_match",
            prompt=prompt.prompt if prompt.messages is None else None, messages=prompt.messages,
            tags=(f"source:{example.source}",),
        )
        key = json.dumps(item.messages if item.messages is not None else item.prompt, sort_keys=True)
        if key not in items or example.source == "correction":  # a person's answer wins
            items[key] = item
    if not items:
        return None
    return Suite(name=FEEDBACK_SUITE, kind="target", items=tuple(items.values()))


def freeze_retention_suite(
    path: Path, *, items: Sequence[EvalItem], base_passed: Mapping[str, bool]
) -> Suite:
    """The retention suite: read from `path` if it was frozen before; otherwise the `items` the base
    model passed (`base_passed[item.id]`), written to `path` once, atomically, and returned.

    Raises SuiteError if an existing file is invalid, or ValueError if nothing passed (a suite
    of nothing would measure nothing) or `base_passed` lacks an item's result.
    """
    if path.exists():
        return load_suite_file(path, kind="retention")
    if missing := [item.id for item in items if item.id not in base_passed]:
        raise ValueError(f"no base-model result for {len(missing)} item(s), e.g. {missing[0]}")
    kept = [item for item in items if base_passed[item.id]]
    if not kept:
        raise ValueError("the base model passed none of the items: no retention suite to freeze")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(path.suffix + ".partial")
    with partial.open("w", encoding="utf-8") as file:
        for item in kept:
            file.write(json.dumps(item.to_json(), sort_keys=True) + "\n")
        file.flush()
        os.fsync(file.fileno())
    os.replace(partial, path)  # a crash mid-write leaves no half-frozen suite behind
    return Suite(name=path.stem, kind="retention", items=tuple(kept))
