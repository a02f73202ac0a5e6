"""Tasks: verifiable prompts with a reference answer, for training on outcomes and for evals.

Functions flush, never commit: the caller frames the transaction.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from lifelong.feedback_store.errors import InvalidTask, TextTooLong, UnknownTask
from lifelong.feedback_store.interactions import prompt_key
from lifelong.feedback_store.models import Task
from lifelong.feedback_store.records import NewTask, Split
from lifelong.feedback_store.split import is_heldout


def _check(task: NewTask, *, max_text_chars: int) -> None:
    if (task.prompt is None) == (task.messages is None):
        raise InvalidTask("give exactly one of prompt or messages", field="prompt")
    if task.prompt == "":
        raise InvalidTask("prompt is empty", field="prompt")
    if task.messages is not None and not task.messages:
        raise InvalidTask("messages is empty", field="messages")
    if not task.verifier:
        raise InvalidTask("verifier is empty", field="verifier")
    texts = {
        "prompt": task.prompt or "",
        "messages": json.dumps(task.messages) if task.messages is not None else "",
        "reference": task.reference,
        "verifier": task.verifier,
        "options": json.dumps(task.options),
        "tags": json.dumps(list(task.tags)),
    }
    for field, value in texts.items():
        if len(value) > max_text_chars:
            raise TextTooLong(
                f"{field} has {len(value)} characters, more than the limit of {max_text_chars}",
                field=field,
            )


def add_task(
    session: Session,
    *,
    task: NewTask,
    principal: str | None,
    heldout_fraction: float,
    max_text_chars: int = 200_000,
) -> Task:
    """Store `task` under a new id (`task-<hex>`), its held-out side fixed now: as the task says,
    else by a hash of its id at `heldout_fraction`.
    Raises InvalidTask or TextTooLong, having added nothing."""
    _check(task, max_text_chars=max_text_chars)
    task_id = f"task-{uuid.uuid4().hex}"
    row = Task(
        id=task_id,
        created_at=datetime.now(UTC),
        prompt=task.prompt,
        messages=task.messages,
        prompt_key=prompt_key(messages=task.messages, prompt=task.prompt),
        reference=task.reference,
        verifier=task.verifier,
        options=dict(task.options),
        tags=list(task.tags),
        heldout=task.heldout if task.heldout is not None else is_heldout(task_id, heldout_fraction),
        principal=principal,
    )
    session.add(row)
    session.flush()
    return row


def get_task(session: Session, *, task_id: str) -> Task:
    """The task `task_id`. Raises UnknownTask."""
    row = session.get(Task, task_id)
    if row is None:
        raise UnknownTask(f"no task {task_id!r}", field="task_id")
    return row


def list_tasks(
    session: Session, *, split: Split | None = None, tag: str | None = None
) -> list[Task]:
    """Tasks, oldest first; only one split's when `split` is given, only those tagged `tag`."""
    query = select(Task).order_by(Task.created_at, Task.id)
    if split is not None:
        query = query.where(Task.heldout == (split == "heldout"))
    rows = list(session.scalars(query))
    # Tags are a JSON list; filtering here keeps the query the same on both dialects.
    return [row for row in rows if tag is None or tag in row.tags]
