"""A real store for the adapter tests (a migrated SQLite file per test, see `Store` in the top
conftest) and a small LoRA configuration that trains the tiny model in a second or two."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from lifelong.adapters import LoraTrainingConfig


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


@pytest.fixture
def store(tmp_path: Path, migrated_store) -> Iterator[object]:
    with migrated_store(f"sqlite:///{tmp_path / 'lifelong.db'}") as opened:
        yield opened
