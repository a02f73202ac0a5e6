"""Upstream vLLM servers, reached only through their HTTP API (OpenAI routes and LoRA loading),
whose routes and answers `evals/vllm_client.py` holds for every caller.

vLLM's Python API changes between patch releases; its HTTP API is what stays stable, and it is
the same for the CPU build, the CUDA build, or a fleet of servers behind the gateway. `Upstream` is
the seam; `HttpUpstream` is the one implementation; `UpstreamPool` spreads requests over the
servers that are ready.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol, TypeVar

import aiohttp

from lifelong.evals.vllm_client import (
    HEALTH,
    LOAD_ADAPTER,
    MODELS,
    UNLOAD_ADAPTER,
    adapter_body,
    served_models,
    sse_data,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")

BASE_MODEL_NAME = "base"  # vLLM's --served-model-name for the base model; adapters use versions


class UpstreamUnavailable(Exception):
    """No upstream can take the request now (down, restarting, refusing connections)."""

    def __init__(self, message: str, *, retry_after_s: int = 5) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class UpstreamRefused(UpstreamUnavailable):
    """The connection failed before any answer came back (refused, reset, or a kept-alive
    connection found closed): the server died or restarts and its health watch has not noticed
    yet. Another server may take the request: an inference request has no side effect on a
    server, so at worst it is computed twice."""


class UpstreamTimeout(Exception):
    """The upstream accepted the request but did not answer within the configured timeout."""


class UpstreamRejected(Exception):
    """The upstream answered with an error status; its body is passed to the client as is."""

    def __init__(self, status_code: int, body: bytes) -> None:
        super().__init__(f"upstream answered {status_code}")
        self.status_code = status_code
        self.body = body


class AdapterLoadFailed(Exception):
    """vLLM refused to load an adapter (bad folder, rank too large, ...)."""


class Upstream(Protocol):
    base_url: str
    ready: bool
    adapters_registered: int

    async def health(self) -> bool: ...

    async def loaded_adapters(self) -> set[str]: ...

    async def load_adapter(self, *, name: str, path: str) -> None: ...

    async def unload_adapter(self, *, name: str) -> None: ...

    async def complete(self, route: str, body: dict[str, Any]) -> dict[str, Any]: ...

    def stream(
        self, route: str, body: dict[str, Any]
    ) -> AbstractAsyncContextManager[AsyncIterator[str]]: ...

    async def aclose(self) -> None: ...


def _translate(exc: Exception, base_url: str) -> Exception:
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ServerDisconnectedError
                  | aiohttp.ClientOSError):
        return UpstreamRefused(f"{base_url} dropped the connection: {type(exc).__name__}")
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError) and not isinstance(
        exc, aiohttp.ConnectionTimeoutError
    ):
        return UpstreamTimeout(f"{base_url} did not answer in time")
    return UpstreamUnavailable(f"{base_url} unreachable: {type(exc).__name__}")


_FAILURES = (aiohttp.ClientError, TimeoutError)


class HttpUpstream:
    """One vLLM OpenAI server at `base_url`.

    aiohttp rather than httpx on the hot path: measured here, httpx cost the gateway several
    times more CPU per proxied request, and on a CPU host that CPU is taken from vLLM.
    """

    def __init__(self, base_url: str, *, timeout_s: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.ready = False
        self.adapters_registered = 0  # on the server now behind base_url, since it started
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=5.0, sock_read=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._in_flight: Counter[aiohttp.ClientSession] = Counter()

    @property
    def session(self) -> aiohttp.ClientSession:
        # Created on first use, inside the running event loop (aiohttp requires it).
        if self._session is None:
            self._session = aiohttp.ClientSession(
                base_url=self.base_url,
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
                json_serialize=_dumps,
            )
        return self._session

    def retarget(self, base_url: str) -> Callable[[], Awaitable[None]]:
        """Send new requests to the server at `base_url` (a replacement for the current one);
        requests in flight finish on the connections they started on. Returns a coroutine
        function that waits for those requests and closes their connections."""
        old = self._session
        self.base_url = base_url.rstrip("/")
        self._session = None
        self.adapters_registered = 0

        async def drained() -> None:
            if old is None:
                return
            while self._in_flight[old] > 0:
                await asyncio.sleep(0.05)
            del self._in_flight[old]
            await old.close()

        return drained

    async def health(self) -> bool:
        try:
            async with self.session.get(
                HEALTH, timeout=aiohttp.ClientTimeout(total=5)
            ) as response:
                return response.status == 200
        except _FAILURES:
            return False

    async def loaded_adapters(self) -> set[str]:
        try:
            async with self.session.get(MODELS) as response:
                body = await response.read()
                if response.status != 200:
                    raise UpstreamRejected(response.status, body)
        except _FAILURES as exc:
            raise _translate(exc, self.base_url) from exc
        return served_models(body) - {BASE_MODEL_NAME}

    async def _post(self, route: str, body: dict[str, Any]) -> tuple[int, bytes]:
        session = self.session
        self._in_flight[session] += 1
        try:
            async with session.post(route, json=body) as response:
                return response.status, await response.read()
        except _FAILURES as exc:
            raise _translate(exc, self.base_url) from exc
        finally:
            self._in_flight[session] -= 1

    async def load_adapter(self, *, name: str, path: str) -> None:
        """Register adapter `name` from folder `path`; loading a name twice is refused by vLLM.

        Raises AdapterLoadFailed when vLLM refuses, UpstreamUnavailable when it is unreachable.
        """
        status, text = await self._post(LOAD_ADAPTER, adapter_body(name, path))
        if status != 200:
            raise AdapterLoadFailed(f"{self.base_url} refused adapter {name}: {text.decode()}")
        self.adapters_registered += 1
        logger.info("adapter loaded", extra={"upstream": self.base_url, "adapter": name})

    async def unload_adapter(self, *, name: str) -> None:
        status, text = await self._post(UNLOAD_ADAPTER, adapter_body(name))
        if status not in (200, 404):
            raise AdapterLoadFailed(f"{self.base_url} refused to unload {name}: {text.decode()}")

    async def complete(self, route: str, body: dict[str, Any]) -> dict[str, Any]:
        status, raw = await self._post(route, body)
        if status != 200:
            raise UpstreamRejected(status, raw)
        return json.loads(raw)

    @asynccontextmanager
    async def stream(self, route: str, body: dict[str, Any]) -> AsyncIterator[AsyncIterator[str]]:
        """Open a server-sent-event stream; yields an iterator over its `data:` payloads."""
        session = self.session
        self._in_flight[session] += 1
        try:
            async with session.post(route, json=body) as response:
                if response.status != 200:
                    raise UpstreamRejected(response.status, await response.read())
                yield sse_data(response)
        except _FAILURES as exc:
            raise _translate(exc, self.base_url) from exc
        finally:
            self._in_flight[session] -= 1

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class UpstreamPool:
    """The upstream servers; requests go round-robin to those marked ready."""

    def __init__(self, upstreams: list[Upstream]) -> None:
        if not upstreams:
            raise ValueError("an upstream pool needs at least one server")
        self.upstreams = upstreams
        self._turn = itertools.cycle(range(len(upstreams)))
        self.retry_after_s = 5

    def pick(self) -> Upstream:
        """A ready upstream. Raises UpstreamUnavailable when none is."""
        for _ in range(len(self.upstreams)):
            upstream = self.upstreams[next(self._turn)]
            if upstream.ready:
                return upstream
        raise UpstreamUnavailable(
            "the model server is starting or restarting", retry_after_s=self.retry_after_s
        )

    async def call(self, send: Callable[[Upstream], Awaitable[T]]) -> T:
        """`send(upstream)` on a ready upstream; if that one refuses the connection (the
        request never reached it), it leaves routing until its watch sees it healthy again,
        and the next ready one is tried. Raises UpstreamUnavailable when none takes it."""
        while True:
            upstream = self.pick()
            try:
                return await send(upstream)
            except UpstreamRefused:
                if not upstream.ready:  # another request already took it out
                    continue
                upstream.ready = False
                logger.warning("upstream dropped a connection; out of routing until healthy",
                               extra={"upstream": upstream.base_url})
                if not self.any_ready:
                    raise

    @property
    def any_ready(self) -> bool:
        return any(upstream.ready for upstream in self.upstreams)

    async def aclose(self) -> None:
        for upstream in self.upstreams:
            await upstream.aclose()
