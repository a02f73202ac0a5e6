"""The data API's logic: the store's erasure and export, off the event loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from lifelong.feedback_store.deletion import Receipt, Subject, erase
from lifelong.feedback_store.export import export

logger = logging.getLogger(__name__)


class DataService:
    def __init__(self, *, sessions: sessionmaker[Session], batch_size: int, pause_s: float):
        self.sessions = sessions
        self.batch_size = batch_size
        self.pause_s = pause_s

    async def erase(self, subject: Subject, *, by: str) -> Receipt:
        """Delete the subject's data in batches, in a worker thread; log the receipt."""
        receipt = await asyncio.to_thread(erase, self.sessions, subject=subject,
                                          batch_size=self.batch_size, pause_s=self.pause_s)
        # The audit line names who asked and what went; never the data itself.
        logger.info("erasure", extra={"by": by, **receipt.to_dict()})
        return receipt

    def export(self, subject: Subject) -> Iterator[dict[str, Any]]:
        """The subject's rows, read batch by batch as the caller iterates (a sync iterator:
        Starlette runs it in its thread pool)."""
        return export(self.sessions, subject=subject, batch_size=self.batch_size)
