"""Promotion and rollback: the public alias moves to another adapter with no failed request.

A promotion (or rollback) of version V:
1. V's folder is verified (checksums, base model); unless forced, the gate must have approved it;
2. V is loaded into every vLLM server under its own name (never in place), warmed with one short
   request each, and checked to answer; if any server refuses, nothing changes;
3. the registry records V as champion (and the promotion, with who and whether forced) in one
   transaction: from here a crash restarts the daemon serving V;
4. the gateway's catalog flips the alias to V. Requests resolve their route when they arrive,
   so those in flight finish on the version they started with, and every response names the
   version that answered (`x-lifelong-adapter`);
5. with several gateway replicas, it waits until every live one routes the alias to V (each
   follows the registry and loads V into its servers first: `daemon/cluster.py`), so once it
   answers no replica serves the alias from the old version; one that lags past
   `cluster.propagation_timeout_s` is named in the answer.

A promotion by the gate (`leader_only`) checks in its own transaction that this replica still
holds the learning lease: a deposed leader's late promotion is refused by the database.

Every move ends the open canary or watch in its own transaction (as the trial decided, or
"aborted": superseded by the move), and a promotion opens the watch of the new champion
(`promotion.watch`): no trial outlives the champion it was about, and none is half-applied.

Versions are never unloaded (see the README's known limits): a rollback to a recent version is a
catalog flip with its weights already in vLLM.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from lifelong.adapters import verify
from lifelong.adapters.artifact import served_name
from lifelong.daemon.catalog import ModelCatalog, Served
from lifelong.daemon.upstream import (
    BASE_MODEL_NAME,
    AdapterLoadFailed,
    Upstream,
    UpstreamRejected,
    UpstreamUnavailable,
)
from lifelong.feedback_store import canaries, registry

logger = logging.getLogger(__name__)

LOAD_ATTEMPTS = 3  # on connection errors only: a refused load is not retried blindly


class PromotionRefused(Exception):
    """The version may not be promoted (not approved, or it is the champion); nothing changed."""


@dataclass(frozen=True)
class Promoted:
    version: str  # the new champion, or `base`
    previous: str  # the old one, or `base`
    forced: bool
    lagging: tuple[str, ...] = ()  # replicas that did not follow within the timeout


@dataclass(frozen=True)
class TrialEnd:
    """How a move ends the open canary or watch (its own decision, when it made the move)."""

    decision: str
    reason: str
    stats: dict[str, Any] | None = None


class Promoter:
    """Moves the public alias between versions, one move at a time."""

    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        catalog: ModelCatalog,
        upstreams: list[Upstream],
        base_model_dir: Path,
        fence: Callable[[Session], None] = lambda session: None,
        propagate: Callable[[str | None], Awaitable[list[str]]] | None = None,
        watch: bool = False,
    ) -> None:
        self.sessions = sessions
        self.catalog = catalog
        self.upstreams = upstreams
        self.base_model_dir = base_model_dir
        self.fence = fence  # raises NotLeader unless this replica holds the learning lease
        self.propagate = propagate  # until the other replicas follow; those that did not
        self.watch = watch  # open a watch of each new champion (promotion.watch)
        self.lock = asyncio.Lock()

    async def promote(self, version: str, *, by: str, forced: bool = False,
                      reason: str | None = None, leader_only: bool = False,
                      trial_end: TrialEnd | None = None) -> Promoted:
        """Make `version` the champion. Unless `forced`, the gate must have approved it (or it is
        a former champion that was not forced in). `leader_only`: only while this replica
        leads the learning loop (the gate's and the canary's promotions).
        Raises UnknownAdapter, PromotionRefused, AdapterError, AdapterLoadFailed,
        UpstreamUnavailable, NotLeader; on any of them the champion is unchanged."""
        async with self.lock:
            served = await asyncio.to_thread(self._check, version, forced=forced)
            moved = await self._move(version, served, by=by, forced=forced, kind="promote",
                                     reason=reason, leader_only=leader_only,
                                     trial_end=trial_end)
        return await self._propagated(moved)

    async def rollback(self, *, by: str, to: str | None = None, reason: str | None = None,
                       leader_only: bool = False, trial_end: TrialEnd | None = None,
                       reject: bool = False) -> Promoted:
        """Return to the champion before the current one, or to `to` (a version or `base`).
        `reject`: the champion left is marked rejected (never promoted again by itself).
        Raises NothingToRollBack, UnknownAdapter, AdapterError, AdapterLoadFailed."""
        async with self.lock:
            target: str = to if to else await asyncio.to_thread(self._previous)
            served = None if target == BASE_MODEL_NAME else await asyncio.to_thread(
                self._check, target, forced=True)
            moved = await self._move(target, served, by=by, forced=False, kind="rollback",
                                     reason=reason, leader_only=leader_only,
                                     trial_end=trial_end, reject=reject)
        return await self._propagated(moved)

    async def _propagated(self, moved: Promoted) -> Promoted:
        if self.propagate is None:
            return moved
        version = None if moved.version == BASE_MODEL_NAME else moved.version
        lagging = await self.propagate(version)
        if lagging:
            logger.warning("replicas still serve the old champion",
                           extra={"champion": moved.version, "lagging": lagging})
        return Promoted(version=moved.version, previous=moved.previous, forced=moved.forced,
                        lagging=tuple(lagging))

    def _previous(self) -> str:
        with self.sessions() as session:
            return registry.previous_champion(session) or BASE_MODEL_NAME

    def _check(self, version: str, *, forced: bool) -> Served:
        with self.sessions() as session:
            row = registry.get(session, version=version)
            if row.status == "champion":
                raise PromotionRefused(f"{version} is already the champion")
            # A former champion that had not been forced in was approved once: it may come back.
            returning = row.status == "retired" and not row.forced
            if not forced and row.status != "approved" and not returning:
                raise PromotionRefused(
                    f"{version} is {row.status}, not approved by the gate; judge it "
                    "(`lifelong eval`) or promote with --force"
                )
            path, checksum = row.path, row.checksum
        return self.verified(version, path=path, checksum=checksum)

    def verified(self, version: str, *, path: str, checksum: str) -> Served:
        """How vLLM serves `version` once its folder checks out. Raises AdapterError."""
        verify(Path(path), self.base_model_dir, checksum=checksum)
        return Served(path=path, name=served_name(version, checksum))

    async def _move(self, version: str, served: Served | None, *, by: str, forced: bool,
                    kind: str, reason: str | None, leader_only: bool = False,
                    trial_end: TrialEnd | None = None, reject: bool = False) -> Promoted:
        if served is not None:
            # The servers that serve now; one that is (re)starting loads the registry's
            # champion before it is routed to (`apply_adapters`).
            ready = [u for u in self.upstreams if u.ready]
            if not ready:
                raise UpstreamUnavailable("no model server is ready to load the adapter into; "
                                          "retry once one is")
            await asyncio.gather(*(self.load_and_warm(u, served) for u in ready))
        previous = self.catalog.champion or BASE_MODEL_NAME
        adapter = None if version == BASE_MODEL_NAME else version

        def record() -> None:
            with self.sessions.begin() as session:
                if leader_only:
                    self.fence(session)
                if (trial := canaries.open_trial(session)) is not None:
                    end = trial_end or TrialEnd(
                        "aborted", f"superseded: {kind} to {version} by {by}")
                    canaries.end(session, trial, decision=end.decision, reason=end.reason,
                                 stats=end.stats)
                left = registry.champion(session)
                registry.set_champion(session, version=adapter, promoted_by=by, forced=forced,
                                      kind=kind, reason=reason)
                if reject and left is not None and left.version != adapter:
                    registry.reject(session, version=left.version)
                if self.watch and kind == "promote" and adapter is not None:
                    canaries.start(session, kind="watch", version=adapter,
                                   baseline_version=left.version if left else None,
                                   share=1.0, by=by)

        await asyncio.to_thread(record)
        # The flip: assignments with no await between them, so no request sees half of it.
        if served is not None:
            self.catalog.live[version] = served
        self.catalog.champion = adapter
        self.catalog.canary = None  # ended with the move
        logger.info("champion changed", extra={"kind": kind, "from": previous, "to": version,
                                               "by": by, "forced": forced})
        return Promoted(version=version, previous=previous, forced=forced)

    async def load_and_warm(self, upstream: Upstream, served: Served) -> None:
        """Load `served` into `upstream` under its served name (unless it is there already,
        put by this or another gateway, or by vLLM's resolver) and answer one request with it."""
        version, path = served.name, served.path
        if version not in await upstream.loaded_adapters():
            for attempt in range(1, LOAD_ATTEMPTS + 1):
                try:
                    await upstream.load_adapter(name=version, path=path)
                    break
                except UpstreamUnavailable:
                    if attempt == LOAD_ATTEMPTS:
                        raise
                    await asyncio.sleep(attempt)
                except AdapterLoadFailed:
                    # Another gateway (or vLLM's resolver) loaded it meanwhile: vLLM refuses a
                    # name twice. Anything else is a real refusal.
                    if version in await upstream.loaded_adapters():
                        break
                    raise
        # The first request on a new adapter is slow (its weights move into the LoRA slots):
        # pay it here, not in a user's request, and check that it answers at all.
        try:
            answer = await upstream.complete("/v1/completions", {
                "model": version, "prompt": "ping", "max_tokens": 1, "temperature": 0})
        except UpstreamRejected as exc:
            raise AdapterLoadFailed(f"{version} loaded but does not answer: {exc}") from exc
        if not answer.get("choices"):
            raise AdapterLoadFailed(f"{version} loaded but answered with no choices: {answer}")
