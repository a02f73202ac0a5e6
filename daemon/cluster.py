"""This gateway replica among its peers: it follows the registry's champion, checks that every vLLM
server it talks to serves it, and tells the database what it serves.

The registry is the one truth about the champion. Every `sync_s` a replica reads it; when it moved
(a promotion or rollback by any replica), the replica loads and warms the new champion into every
ready server it talks to *before* it routes the alias there, so no request reaches a server that
lacks it. Every `heartbeat_s` (and at once after a flip) it writes its row in `replicas`: whether
it leads, the champion it routes to, and each server's adapters as the server itself lists them.
A server that does not list the champion the replica routes to (restarted behind its back, or
its adapter dropped) is taken out of routing until the champion is loaded into it again.

A promotion waits (`wait_for`) until every live replica routes the alias to the new champion, so
once it answers, no replica answers from the old one.

The open canary is followed the same way: its candidate loaded and warmed into every ready server
before the replica sends the canary's share of users to it; the heartbeat carries the canary it
routes to with what it counted (requests and server failures per version), which the leader
adds up (`wait_for_canary` waits until every live replica routes to it, or to none).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from lifelong.adapters.artifact import served_name
from lifelong.daemon.catalog import CanaryRoute, ModelCatalog, Served
from lifelong.daemon.upstream import BASE_MODEL_NAME, Upstream
from lifelong.feedback_store import canaries, registry, replicas
from lifelong.feedback_store.replicas import ReplicaView

logger = logging.getLogger(__name__)

STALE_BEATS = 3  # a replica silent for this many heartbeats is taken as gone


def registry_champion(session: Session) -> tuple[str, Served] | None:
    """The registry's champion and how vLLM serves it (None: the base model)."""
    row = registry.champion(session)
    if row is None:
        return None
    return row.version, Served(path=row.path, name=served_name(row.version, row.checksum))


def open_canary(session: Session) -> CanaryRoute | None:
    """The open canary (not a watch) as a route, its candidate as vLLM serves it."""
    row = canaries.open_trial(session)
    if row is None or row.kind != "canary":
        return None
    adapter = registry.get(session, version=row.version)
    return CanaryRoute(id=row.id, version=row.version, share=row.share,
                       served=Served(path=adapter.path,
                                     name=served_name(adapter.version, adapter.checksum)))


class Replica:
    def __init__(
        self,
        *,
        replica_id: str,
        url: str | None,
        sessions: sessionmaker[Session],
        catalog: ModelCatalog,
        upstreams: list[Upstream],
        promoter_lock: asyncio.Lock,
        load_and_warm: Callable[[Upstream, Served], Awaitable[None]],
        leading: Callable[[], bool],
        sync_s: float,
        heartbeat_s: float,
    ) -> None:
        self.replica_id = replica_id
        self.url = url
        self.sessions = sessions
        self.catalog = catalog
        self.upstreams = upstreams
        self.promoter_lock = promoter_lock
        self.load_and_warm = load_and_warm
        self.leading = leading
        self.sync_s = sync_s
        self.heartbeat_s = heartbeat_s
        self.started_at = datetime.now(UTC)
        self.others_alive = False  # other live replicas, at the last heartbeat
        self.servers: list[dict[str, Any]] = []
        self.last_error: str | None = None
        self._next_beat = 0.0
        self._task: asyncio.Task[None] | None = None

    @property
    def stale_s(self) -> float:
        return STALE_BEATS * self.heartbeat_s

    async def start(self) -> None:
        await self._verify()
        await self._beat()
        self._task = asyncio.create_task(self._run(), name="replica")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

        def forget() -> None:
            with self.sessions.begin() as session:
                replicas.forget(session, replica_id=self.replica_id)

        with contextlib.suppress(Exception):  # a stale row ages out by itself
            await asyncio.to_thread(forget)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.sync_s)
            try:
                flipped = await self.follow()
                flipped = await self.follow_canary() or flipped
                if flipped or time.monotonic() >= self._next_beat:
                    await self._verify()
                    await self._beat()
                self.last_error = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database or a server is away: serve on, try again
                if str(exc) != self.last_error:
                    logger.warning("replica sync failed", extra={"error": str(exc)[:500]})
                self.last_error = str(exc)

    def _read_champion(self) -> tuple[str, Served] | None:
        with self.sessions() as session:
            return registry_champion(session)

    async def follow(self) -> bool:
        """Route the alias to the registry's champion if it moved; whether it did."""
        champion = await asyncio.to_thread(self._read_champion)
        version = champion[0] if champion else None
        if version == self.catalog.champion:
            return False
        async with self.promoter_lock:  # never beside this replica's own promotion
            champion = await asyncio.to_thread(self._read_champion)
            version = champion[0] if champion else None
            if version == self.catalog.champion:
                return False
            if champion is not None:
                name, served = champion
                await asyncio.gather(*(self.load_and_warm(u, served)
                                       for u in self.upstreams if u.ready))
                self.catalog.live[name] = served
            previous = self.catalog.champion
            self.catalog.champion = version
        logger.info("champion followed", extra={"from": previous or BASE_MODEL_NAME,
                                                "to": version or BASE_MODEL_NAME})
        return True

    def _read_canary(self) -> CanaryRoute | None:
        with self.sessions() as session:
            return open_canary(session)

    async def follow_canary(self) -> bool:
        """Route the open canary's share to its candidate, or stop when it ended; whether that
        changed. The candidate is loaded and warmed into every ready server first."""
        wanted = await asyncio.to_thread(self._read_canary)
        current = self.catalog.canary
        if (wanted.id if wanted else None) == (current.id if current else None):
            return False
        async with self.promoter_lock:
            wanted = await asyncio.to_thread(self._read_canary)
            current = self.catalog.canary
            if (wanted.id if wanted else None) == (current.id if current else None):
                return False
            if wanted is not None:
                await asyncio.gather(*(self.load_and_warm(u, wanted.served)
                                       for u in self.upstreams if u.ready))
                self.catalog.live[wanted.version] = wanted.served
            self.catalog.canary = wanted
        logger.info("canary followed", extra={"canary": wanted.version if wanted else None,
                                              "share": wanted.share if wanted else 0})
        return True

    async def wait_for_canary(self, trial_id: int | None, timeout_s: float) -> list[str]:
        """Until every live replica routes to canary `trial_id` (None: to no canary), up to
        `timeout_s`; the replicas that still do not."""
        await self._beat()
        deadline = time.monotonic() + timeout_s
        while True:
            lagging = [p.replica_id for p in await asyncio.to_thread(self.peers)
                       if p.alive(self.stale_s) and (p.canary or {}).get("id") != trial_id]
            if not lagging or time.monotonic() >= deadline:
                return lagging
            await asyncio.sleep(min(self.sync_s, 0.5))

    async def _verify(self) -> None:
        """Each server's own list of adapters; one that lacks the champion leaves routing until
        it has it again."""
        champion = self.catalog.champion
        name = self.catalog.served_champion()  # what each server must list
        servers = []
        for upstream in self.upstreams:
            entry: dict[str, Any] = {"url": upstream.base_url, "ready": upstream.ready}
            try:
                served = await upstream.loaded_adapters()
            except Exception as exc:
                entry.update(error=f"{type(exc).__name__}: {exc}"[:300], adapters=[])
                servers.append(entry)
                continue
            if upstream.ready and champion is not None and name not in served:
                upstream.ready = False
                logger.error("a vLLM server does not serve the champion; out of routing until "
                             "it does", extra={"upstream": upstream.base_url,
                                               "champion": name})
                try:
                    await self.load_and_warm(upstream, self.catalog.live[champion])
                    served = await upstream.loaded_adapters()
                    upstream.ready = True
                except Exception as exc:
                    entry["error"] = f"cannot load the champion: {exc}"[:300]
            entry.update(ready=upstream.ready, adapters=sorted(served),
                         serves_champion=name is None or name in served)
            servers.append(entry)
        self.servers = servers

    async def _beat(self) -> None:
        self._next_beat = time.monotonic() + self.heartbeat_s

        def beat() -> bool:
            with self.sessions.begin() as session:
                replicas.beat(session, replica_id=self.replica_id, url=self.url,
                              started_at=self.started_at, leader=self.leading(),
                              champion=self.catalog.champion, servers=self.servers,
                              canary=canary.tallies() if (canary := self.catalog.canary)
                              else None)
                return any(p.replica_id != self.replica_id and p.alive(self.stale_s)
                           for p in replicas.listed(session))

        self.others_alive = await asyncio.to_thread(beat)

    def peers(self) -> list[ReplicaView]:
        with self.sessions() as session:
            return replicas.listed(session)

    async def wait_for(self, version: str | None, timeout_s: float) -> list[str]:
        """Until every live replica routes the alias to `version` (None: the base model), up to
        `timeout_s`; the replicas that still do not."""
        await self._beat()
        deadline = time.monotonic() + timeout_s
        while True:
            lagging = [p.replica_id for p in await asyncio.to_thread(self.peers)
                       if p.alive(self.stale_s) and p.champion != version]
            if not lagging or time.monotonic() >= deadline:
                return lagging
            await asyncio.sleep(min(self.sync_s, 0.5))
