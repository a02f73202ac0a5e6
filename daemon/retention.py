"""The retention job: deletes what is older than `retention` allows, on the leader only, at
an interval (APScheduler, like the learning schedule).

Leader only: two replicas would delete the same rows twice (harmless, deletes are idempotent,
but twice the lock time on the write path for nothing), and the leader is already the one
writer of everything else the daemon decides. The deletion runs in a worker thread, batch by
batch (`feedback_store.deletion.expire`), so neither the event loop that serves requests nor the
writers wait for more than one batch.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy.orm import Session, sessionmaker

from lifelong.daemon.settings import RetentionSettings
from lifelong.feedback_store.deletion import Deleted, expire

logger = logging.getLogger(__name__)


class Retention:
    """Expires old rows every `settings.every_minutes` while started; does nothing when no
    period is set."""

    def __init__(self, *, settings: RetentionSettings, sessions: sessionmaker[Session]) -> None:
        self.settings = settings
        self.sessions = sessions
        self.scheduler = AsyncIOScheduler(timezone=UTC)
        self.last: dict[str, object] | None = None  # when the last pass ran and what it deleted

    @property
    def enabled(self) -> bool:
        s = self.settings
        return any(days is not None
                   for days in (s.interactions_days, s.feedback_days, s.rollouts_days))

    async def start(self) -> None:
        if not self.enabled:
            return
        # A new scheduler at each start: leadership may be lost and won again.
        self.scheduler = AsyncIOScheduler(timezone=UTC)
        self.scheduler.add_job(self.run_once, IntervalTrigger(minutes=self.settings.every_minutes),
                               id="retention", max_instances=1, coalesce=True,
                               next_run_time=datetime.now(UTC))
        self.scheduler.start()
        logger.info("retention started", extra={"every_minutes": self.settings.every_minutes})

    async def stop(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)

    async def run_once(self) -> Deleted:
        """One pass: every expired row, in batches, in a worker thread."""
        s = self.settings
        now = datetime.now(UTC)

        def before(days: float | None) -> datetime | None:
            return None if days is None else now - timedelta(days=days)

        try:
            deleted = await asyncio.to_thread(
                expire, self.sessions, interactions_before=before(s.interactions_days),
                feedback_before=before(s.feedback_days), rollouts_before=before(s.rollouts_days),
                batch_size=s.batch_size, pause_s=s.pause_ms / 1000)
        except Exception:
            # The next pass tries again: a database blip must not stop retention for good.
            logger.exception("retention pass failed")
            raise
        self.last = {"at": now.isoformat(), "deleted": deleted.to_dict()}
        if deleted.total:
            logger.info("retention deleted expired rows", extra=deleted.to_dict())
        return deleted
