"""Fixtures every test folder shares: a tiny base model, built once per session."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from lifelong.base_model import build, messages
from lifelong.feedback_store.database import make_engine, upgrade
from lifelong.feedback_store.feedback import add_feedback
from lifelong.feedback_store.interactions import add_interactions
from lifelong.feedback_store.records import FeedbackItem, NewInteraction

# The real build() on a shape small enough for seconds: 2 layers, 2 heads of 64. Enough steps
# that it answers in the chat format (digits, then <|im_end|>); accuracy is not the point.
TINY_BUILD = {"seed": 0, "steps": 300, "layers": 2, "hidden": 128, "batch_size": 32,
              "eval_items": 20}


@pytest.fixture(scope="session")
def tiny_base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of a tiny embedded base model (transformers, peft and vLLM load it)."""
    return build(tmp_path_factory.mktemp("base_model") / "tiny", **TINY_BUILD, progress=False).path


@dataclass
class Store:
    """A migrated SQLite database and helpers that write through the store's functions."""

    url: str
    sessions: sessionmaker[Session]

    @classmethod
    @contextlib.contextmanager
    def migrated(cls, url: str) -> Iterator[Store]:
        """The store at `url`, migrated to head, its engine closed on exit."""
        engine = make_engine(url)
        upgrade(engine)
        try:
            yield cls(url=url, sessions=sessionmaker(engine, expire_on_commit=False))
        finally:
            engine.dispose()

    def ask(self, question: str, answer: str, *, heldout: bool = False,
            endpoint: str = "chat.completions") -> str:
        """Log one interaction (the model's `answer`), on the chosen side of the split."""
        request = ({"messages": messages(question)} if endpoint == "chat.completions"
                   else {"prompt": question})
        record = NewInteraction(
            id=f"chatcmpl-{uuid.uuid4().hex}", created_at=datetime.now(UTC),
            endpoint=endpoint,  # type: ignore[arg-type]
            request=request, model="lifelong", response_text=answer,
        )
        with self.sessions.begin() as session:
            add_interactions(session, records=[record], heldout_fraction=float(heldout))
        return record.id

    def ask_many(self, pairs: list[tuple[str, str]]) -> list[str]:
        """Log many train-split interactions in one statement."""
        records = [
            NewInteraction(
                id=f"chatcmpl-{uuid.uuid4().hex}", created_at=datetime.now(UTC),
                endpoint="chat.completions", request={"messages": messages(question)},
                model="lifelong", response_text=answer,
            )
            for question, answer in pairs
        ]
        with self.sessions.begin() as session:
            add_interactions(session, records=records, heldout_fraction=0.0)
        return [record.id for record in records]

    def give(self, *items: FeedbackItem) -> list[int]:
        """Store feedback items; their ids, in order."""
        with self.sessions.begin() as session:
            rows = add_feedback(session, items=list(items), principal=None, admin=True)
            return [row.id for row in rows]


@pytest.fixture(scope="session")
def migrated_store() -> type[Store]:
    """`with migrated_store(url) as store:` a migrated store and its writing helpers."""
    return Store.migrated  # type: ignore[return-value]
