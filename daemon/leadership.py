"""Leadership of the learning loop: one gateway replica at a time holds the database lease.

Every replica serves; only the lease holder runs the schedule, the data trigger, practice, the
trainer, the judge and the gate's promotions. A replica tries to take the lease at start and then
every `lease_s / 3`; the holder renews it as often. The holder leads only while its last renewal is
younger than the lease minus a margin (measured on its own monotonic clock from *before* the
renewal was sent, so it always steps down before the database could hand the lease to another).
Losing the database, or finding the lease renewed by someone else, ends its leadership at once:
`on_deposed` stops the loop (the running cycle is cancelled and its training run marked
interrupted). Another replica takes the lease once it expired: within `lease_s` plus one try
interval after the leader died (at once after a clean shutdown, which releases it).

Why two leaders cannot both act: the steps that must be the leader's alone (recording a training
run, a promotion by the gate) check the lease's epoch inside their own transaction
(`leases.check`), so a replica that still believes it leads after the lease moved on has its
write refused by the database. The local deadline only makes that refusal rare.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from sqlalchemy.orm import Session, sessionmaker

from lifelong.feedback_store import leases
from lifelong.feedback_store.leases import LEARNING, LeaseView, NotLeader

logger = logging.getLogger(__name__)

SAFETY = 0.2  # step down this share of the lease before it could expire in the database


class Leadership:
    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        holder: str,
        holder_url: str | None,
        lease_s: float,
        on_elected: Callable[[int], Awaitable[None]],
        on_deposed: Callable[[str], Awaitable[None]],
        name: str = LEARNING,
    ) -> None:
        self.sessions = sessions
        self.holder = holder
        self.holder_url = holder_url
        self.lease_s = lease_s
        self.on_elected = on_elected
        self.on_deposed = on_deposed
        self.name = name
        self.epoch: int | None = None
        self.elections = 0
        self.last_error: str | None = None
        self._valid_until = 0.0
        self._task: asyncio.Task[None] | None = None
        self._changing = asyncio.Lock()  # elected/deposed callbacks never overlap

    @property
    def leading(self) -> bool:
        return self.epoch is not None and time.monotonic() < self._valid_until

    @property
    def try_every_s(self) -> float:
        return self.lease_s / 3

    def fence(self) -> int:
        """The epoch to check in a leader-only transaction. Raises NotLeader."""
        if self.epoch is None or not self.leading:
            raise NotLeader(f"replica {self.holder} does not lead the learning loop")
        return self.epoch

    def check(self, session: Session) -> None:
        """In a leader-only transaction: this replica still holds the lease, checked by the
        database (`leases.check`). Raises NotLeader."""
        leases.check(session, name=self.name, epoch=self.fence())

    def current(self) -> LeaseView | None:
        """The lease as the database has it (who leads, where it answers)."""
        with self.sessions() as session:
            return leases.view(session, name=self.name)

    async def start(self) -> None:
        """Try once now (a lone replica leads from its first second), then keep trying. A
        failure to start the loop on this first election fails the start (and is raised)."""
        await self._tick(strict=True)
        self._task = asyncio.create_task(self._run(), name="leadership")

    async def stop(self) -> None:
        """Stop trying; a leader stops its loop and releases the lease for the next one."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.epoch is not None:
            epoch = self.epoch
            await self._step_down("this replica is stopping")

            def release() -> None:
                with self.sessions.begin() as session:
                    leases.release(session, name=self.name, holder=self.holder, epoch=epoch)

            try:
                await asyncio.to_thread(release)
            except Exception as exc:  # it will expire by itself
                logger.warning("could not release the learning lease: %s", exc)

    async def _run(self) -> None:
        while True:
            deadline = self._valid_until if self.epoch is not None else None
            delay = self.try_every_s
            if deadline is not None:  # wake in time to step down if renewals keep failing
                delay = max(0.05, min(delay, deadline - time.monotonic()))
            await asyncio.sleep(delay)
            await self._tick()

    async def _tick(self, strict: bool = False) -> None:
        sent = time.monotonic()
        try:
            if self.epoch is None:
                epoch = await asyncio.to_thread(self._acquire)
                if epoch is not None:
                    self._valid_until = sent + self.lease_s * (1 - SAFETY)
                    await self._elected(epoch, strict=strict)
            elif await asyncio.to_thread(self._renew, self.epoch):
                self._valid_until = sent + self.lease_s * (1 - SAFETY)
            else:
                await self._step_down("another replica holds the lease now")
            self.last_error = None
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the database is unreachable: keep serving, stop leading
            if strict:
                raise
            self.last_error = f"{type(exc).__name__}: {exc}"
            if self.epoch is not None and time.monotonic() >= self._valid_until:
                await self._step_down(f"could not renew the lease in time ({self.last_error})")
            else:
                logger.warning("leadership check failed", extra={"error": self.last_error})

    def _acquire(self) -> int | None:
        with self.sessions.begin() as session:
            return leases.acquire(session, name=self.name, holder=self.holder,
                                  ttl_s=self.lease_s, holder_url=self.holder_url)

    def _renew(self, epoch: int) -> bool:
        with self.sessions.begin() as session:
            return leases.renew(session, name=self.name, holder=self.holder, epoch=epoch,
                                ttl_s=self.lease_s)

    async def _elected(self, epoch: int, *, strict: bool) -> None:
        async with self._changing:
            self.epoch = epoch
            self.elections += 1
            logger.info("this replica leads the learning loop",
                        extra={"replica": self.holder, "epoch": epoch})
            try:
                await self.on_elected(epoch)
            except Exception:  # the loop's own parts record their failures; serving goes on
                if strict:
                    raise
                logger.exception("starting the learning loop failed")

    async def _step_down(self, reason: str) -> None:
        async with self._changing:
            if self.epoch is None:
                return
            logger.warning("this replica no longer leads the learning loop",
                           extra={"replica": self.holder, "epoch": self.epoch, "reason": reason})
            self.epoch = None
            self._valid_until = 0.0
            try:
                await self.on_deposed(reason)
            except Exception:
                logger.exception("stopping the learning loop failed")
