"""A real store for the adapter tests: a migrated SQLite file per test, filled through the store's
own functions, and a small LoRA configuration that trains the tiny model in a second or two."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import torch
from sqlalchemy.orm import Session, sessionmaker

from lifelong.adapters import LoraTrainingConfig
from lifelong.base_model import messages
from lifelong.feedback_store.database import make_engine, upgrade
from lifelong.feedback_store.feedback import add_feedback
from lifelong.feedback_store.interactions import add_interactions
from lifelong.feedback_store.records import FeedbackItem, NewInteraction


@pytest.fixture(scope="session", autouse=True)
def one_thread() -> Iterator[None]:
    # The tiny model's ops are microseconds long: two OpenMP threads only add synchronisation,
    # and on a shared 2-core machine their spinning made one step take 2.3 s instead of 27 ms.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def small() -> LoraTrainingConfig:
    """Rank 4 on attention only, three steps: enough to move every LoRA tensor, in a second."""
    return LoraTrainingConfig(
        rank=4, alpha=8, target_modules=("q_proj", "v_proj"), learning_rate=1e-2, batch_size=4,
        max_steps=3, warmup_steps=0,
    )


@dataclass
class Store:
    """A migrated SQLite database and helpers that write through the store's functions."""

    url: str
    sessions: sessionmaker[Session]

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


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    url = f"sqlite:///{tmp_path / 'lifelong.db'}"
    engine = make_engine(url)
    upgrade(engine)
    yield Store(url=url, sessions=sessionmaker(engine, expire_on_commit=False))
    engine.dispose()
