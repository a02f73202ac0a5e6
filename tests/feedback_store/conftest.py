"""Real databases for the store tests: a SQLite file per test and one PostgreSQL database per run.

`engine` runs each test on both: SQLite (a fresh copy of a migrated file) and PostgreSQL (a
database created for this test session on the server at $LIFELONG_TEST_POSTGRES_URL, migrated
once, its tables emptied before each test, dropped at the end). PostgreSQL cases carry the
`postgres` marker and fail when the server cannot be reached (skipped, saying why, only with
LIFELONG_TEST_SKIP_POSTGRES=1).

The database fixtures (`engine`, `sqlite_url`, `postgres_server_url`, ...) live in the root
conftest: the eval tests use them too.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from lifelong.feedback_store.interactions import add_interactions
from lifelong.feedback_store.records import NewInteraction


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def chat(question: str = "What is 12 + 34?") -> list[dict[str, str]]:
    return [{"role": "user", "content": question}]


@pytest.fixture
def interaction_record() -> Callable[..., NewInteraction]:
    """Build a NewInteraction: a chat answer by alice unless told otherwise."""

    def build(**fields: Any) -> NewInteraction:
        question = fields.pop("question", "What is 12 + 34?")
        values: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "created_at": datetime.now(UTC),
            "endpoint": "chat.completions",
            "request": {"model": "lifelong", "messages": chat(question), "temperature": 0},
            "model": "lifelong",
            "response_text": "46",
            "finish_reason": "stop",
            "prompt_tokens": 12,
            "completion_tokens": 1,
            "latency_ms": 5.0,
            "principal": "alice",
        }
        return NewInteraction(**{**values, **fields})

    return build


@pytest.fixture
def stored_interaction(
    sessions: sessionmaker[Session], interaction_record: Callable[..., NewInteraction]
) -> Callable[..., str]:
    """Store one interaction (fields as `interaction_record`, plus `heldout`) and return its id."""

    def store(*, heldout: bool = False, **fields: Any) -> str:
        record = interaction_record(**fields)
        with sessions.begin() as session:
            add_interactions(session, records=[record], heldout_fraction=float(heldout))
        return record.id

    return store
