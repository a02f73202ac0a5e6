"""A real store for the adapter tests (a migrated SQLite file per test, see `Store` in the top
conftest) and a small LoRA configuration that trains the tiny model in a second or two."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from lifelong.adapters import LoraTrainingConfig, TrainingSet, build_training_set
from lifelong.feedback_store.records import Correction, Outcome, Rating


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
    """Rank 4 on attention only, three steps: enough to move every LoRA tensor, in a second.
    One epoch and 512 tokens, as these tests were written against (not the daemon's defaults)."""
    return LoraTrainingConfig(
        rank=4, alpha=8, target_modules=("q_proj", "v_proj"), learning_rate=1e-2, batch_size=4,
        max_steps=3, warmup_steps=0, epochs=1, max_length=512,
    )


@pytest.fixture
def store(tmp_path: Path, migrated_store) -> Iterator[object]:
    with migrated_store(f"sqlite:///{tmp_path / 'lifelong.db'}") as opened:
        yield opened


@pytest.fixture
def training_set(store) -> TrainingSet:
    """Corrections, passes and failures, thumbs: every method has examples."""
    wrong = store.ask_many([(f"What is {a} - {a - 3}?", str(2 * a)) for a in range(20, 30)])
    right = store.ask_many([(f"What is {a} - {a - 3}?", "3") for a in range(20, 30)])
    thumbs = store.ask_many([(f"What is {a} + 1?", str(a + 1)) for a in range(40, 48)])
    store.give(*[Correction(i, text="3") for i in wrong[:5]],
               *[Outcome(i, passed=False) for i in wrong[5:]],
               *[Outcome(i, passed=True) for i in right],
               *[Rating(i, score=1 if n % 2 else -1) for n, i in enumerate(thumbs)])
    with store.sessions() as session:
        return build_training_set(session, since=0, replay_fraction=0.0, seed=0)
