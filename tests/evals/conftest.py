"""A session on a real store for the eval tests (the root conftest's `engine`: SQLite and
PostgreSQL); the vLLM server they answer through is the root conftest's `vllm_url`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    """A session on a migrated, empty store: SQLite or PostgreSQL."""
    with sessionmaker(engine)() as session:
        yield session
