"""Rollouts: a GRPO run's graded samples, stored as data, and its practice set.

`practice_tasks` is what a run may practise on: train-split tasks (never held-out ones, which
the judge keeps for itself) whose verifier the caller can run. `tasks_from_outcomes` adds the
logged prompts whose outcome says how to check an answer (verifier and `details.reference`) to
them. Functions flush, never commit: the caller frames the transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from lifelong.feedback_store.errors import UnknownRun
from lifelong.feedback_store.models import Feedback, Interaction, Rollout, Task, TrainingRun
from lifelong.feedback_store.records import NewTask
from lifelong.feedback_store.tasks import add_task

OUTCOME_TAG = "source:outcome"  # tasks made from logged outcomes


@dataclass(frozen=True, slots=True)
class NewRollout:
    """One graded sample, as a GRPO round submits it."""

    task_id: str
    policy: str  # the name vLLM served the sampling policy under
    sample: int  # index in the task's group
    text: str
    finish_reason: str | None
    reward: float
    passed: bool


@dataclass(frozen=True, slots=True)
class RoundSummary:
    round: int
    samples: int
    passed: int
    mean_reward: float


def practice_tasks(
    session: Session, *, verifiers: Collection[str], tag: str | None = None
) -> list[Task]:
    """Train-split tasks judged by one of `verifiers` (and tagged `tag`, if given), oldest
    first. Held-out tasks never come back: they are what the judge measures with."""
    query = (select(Task).where(Task.heldout.is_(False), Task.verifier.in_(list(verifiers)))
             .order_by(Task.created_at, Task.id))
    rows = list(session.scalars(query))
    return [row for row in rows if tag is None or tag in row.tags]


def tasks_from_outcomes(
    session: Session,
    *,
    verifiers: Collection[str],
    usable: Callable[[str, dict, str], bool],
) -> int:
    """Make a train-split task (tagged `source:outcome`) of each logged prompt whose outcome was
    judged by one of `verifiers` and says what it compared with: `details.reference`, and the
    verifier's `details.options` if any. Held-out interactions never become tasks, nor prompts
    of held-out tasks (the judge measures with those). A prompt, verifier and reference already
    a task are not made again; `usable(verifier, options, reference)` false skips an outcome
    the verifier could not grade with. Returns how many tasks were made."""
    # One pass over the outcomes: their references live in the details JSON, which SQLite and
    # PostgreSQL query differently.
    rows = session.execute(
        select(Feedback, Interaction).join(Interaction, Feedback.interaction_id == Interaction.id)
        .where(Feedback.kind == "outcome", Feedback.verifier.in_(list(verifiers)),
               Interaction.heldout.is_(False))
        .order_by(Feedback.id))
    found = []
    for feedback, interaction in rows:
        details = feedback.details or {}
        reference, options = details.get("reference"), details.get("options", {})
        if isinstance(reference, str) and isinstance(options, dict) \
                and usable(feedback.verifier, options, reference):
            found.append((feedback, interaction, reference, options))
    if not found:
        return 0
    keys = list({interaction.prompt_key for _, interaction, _, _ in found})
    known = session.execute(select(Task.prompt_key, Task.verifier, Task.reference, Task.heldout)
                            .where(Task.prompt_key.in_(keys))).all()
    heldout = {key for key, _, _, held in known if held}
    made = {(key, verifier, reference) for key, verifier, reference, _ in known}
    count = 0
    for feedback, interaction, reference, options in found:
        key = (interaction.prompt_key, feedback.verifier, reference)
        if interaction.prompt_key in heldout or key in made:
            continue
        chat = interaction.endpoint == "chat.completions"
        messages, prompt = interaction.request.get("messages"), interaction.request.get("prompt")
        if not (isinstance(messages, list) and messages if chat else isinstance(prompt, str)
                and prompt):
            continue  # e.g. a batch of text prompts: not one question to practise on
        add_task(session, task=NewTask(
            reference=reference, verifier=feedback.verifier, options=options,
            messages=messages if chat else None, prompt=None if chat else prompt,
            tags=(OUTCOME_TAG,), heldout=False),
            principal=feedback.principal, heldout_fraction=0.0)
        made.add(key)
        count += 1
    return count


def add_rollouts(
    session: Session, *, training_run_id: int, round: int, rollouts: Sequence[NewRollout]
) -> None:
    """Store one round's samples of training run `training_run_id`. Raises UnknownRun."""
    if session.get(TrainingRun, training_run_id) is None:
        raise UnknownRun(f"no training run {training_run_id}", field="training_run_id")
    now = datetime.now(UTC)
    session.add_all(
        Rollout(training_run_id=training_run_id, round=round, task_id=r.task_id,
                policy=r.policy, sample=r.sample, created_at=now, text=r.text,
                finish_reason=r.finish_reason, reward=r.reward, passed=r.passed)
        for r in rollouts
    )
    session.flush()


def list_rollouts(
    session: Session, *, training_run_id: int, round: int | None = None
) -> list[Rollout]:
    """A run's samples (one round's, if given), in the order they were stored."""
    query = select(Rollout).where(Rollout.training_run_id == training_run_id)
    if round is not None:
        query = query.where(Rollout.round == round)
    return list(session.scalars(query.order_by(Rollout.id)))


def round_summaries(session: Session, *, training_run_id: int) -> list[RoundSummary]:
    """Per round of a run: samples, how many passed, the mean reward."""
    query = (
        select(Rollout.round, func.count(), func.sum(case((Rollout.passed, 1), else_=0)),
               func.avg(Rollout.reward))
        .where(Rollout.training_run_id == training_run_id)
        .group_by(Rollout.round).order_by(Rollout.round)
    )
    return [RoundSummary(round=r, samples=n, passed=int(p or 0), mean_reward=float(m))
            for r, n, p, m in session.execute(query)]
