"""Upstream vLLM servers, reached only through their HTTP API (OpenAI routes and LoRA loading).

vLLM's Python API changes between patch releases; its HTTP API is what stays stable, and it is
the same for the CPU build, the CUDA build, or a fleet of servers behind the gateway. `Upstream` is
the seam; `HttpUpstream` is the one implementation; `UpstreamPool` spreads requests over the
servers that are ready.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol

import httpx

logger = logging.getLogger(__name__)

BASE_MODEL_NAME = "base"  # vLLM's --served-model-name for the base model; adapters use versions


class UpstreamUnavailable(Exception):
    """No upstream can take the request now (down, restarting, refusing connections)."""

    def __init__(self, message: str, *, retry_after_s: int = 5) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


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

    async def health(self) -> bool: ...

    async def loaded_adapters(self) -> set[str]: ...

    async def load_adapter(self, *, name: str, path: str) -> None: ...

    async def unload_adapter(self, *, name: str) -> None: ...

    async def complete(self, route: str, body: dict[str, Any]) -> dict[str, Any]: ...

    def stream(self, route: str, body: dict[str, Any]) -> Any: ...

    async def aclose(self) -> None: ...


def _translate(exc: httpx.HTTPError, base_url: str) -> Exception:
    if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
        return UpstreamTimeout(f"{base_url} did not answer in time")
    return UpstreamUnavailable(f"{base_url} unreachable: {type(exc).__name__}")


class HttpUpstream:
    """One vLLM OpenAI server at `base_url`."""

    def __init__(self, base_url: str, *, timeout_s: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.ready = False
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout_s, connect=5.0),
            # vLLM holds many concurrent streams; the default pool of 100 would queue them.
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=200),
        )

    async def health(self) -> bool:
        try:
            response = await self._client.get("/health", timeout=5.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def loaded_adapters(self) -> set[str]:
        try:
            response = await self._client.get("/v1/models", timeout=10.0)
            response.raise_for_status()
        except httpx.HTTPStatusError as exc:
            raise UpstreamRejected(exc.response.status_code, exc.response.content) from exc
        except httpx.HTTPError as exc:
            raise _translate(exc, self.base_url) from exc
        return {card["id"] for card in response.json()["data"]} - {BASE_MODEL_NAME}

    async def load_adapter(self, *, name: str, path: str) -> None:
        """Register adapter `name` from folder `path`; loading a name twice is refused by vLLM.

        Raises AdapterLoadFailed when vLLM refuses, UpstreamUnavailable when it is unreachable.
        """
        try:
            response = await self._client.post(
                "/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path}
            )
        except httpx.HTTPError as exc:
            raise _translate(exc, self.base_url) from exc
        if response.status_code != 200:
            raise AdapterLoadFailed(f"{self.base_url} refused adapter {name}: {response.text}")
        logger.info("adapter loaded", extra={"upstream": self.base_url, "adapter": name})

    async def unload_adapter(self, *, name: str) -> None:
        try:
            response = await self._client.post("/v1/unload_lora_adapter", json={"lora_name": name})
        except httpx.HTTPError as exc:
            raise _translate(exc, self.base_url) from exc
        if response.status_code not in (200, 404):
            raise AdapterLoadFailed(f"{self.base_url} refused to unload {name}: {response.text}")

    async def complete(self, route: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = await self._client.post(route, json=body)
        except httpx.HTTPError as exc:
            raise _translate(exc, self.base_url) from exc
        if response.status_code != 200:
            raise UpstreamRejected(response.status_code, response.content)
        return response.json()

    @asynccontextmanager
    async def stream(self, route: str, body: dict[str, Any]) -> AsyncIterator[AsyncIterator[str]]:
        """Open a server-sent-event stream; yields an iterator over its `data:` payloads."""
        try:
            async with self._client.stream("POST", route, json=body) as response:
                if response.status_code != 200:
                    raise UpstreamRejected(response.status_code, await response.aread())
                yield _sse_data(response)
        except httpx.HTTPError as exc:
            raise _translate(exc, self.base_url) from exc

    async def aclose(self) -> None:
        await self._client.aclose()


async def _sse_data(response: httpx.Response) -> AsyncIterator[str]:
    async for line in response.aiter_lines():
        if line.startswith("data: "):
            yield line[6:]


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

    @property
    def any_ready(self) -> bool:
        return any(upstream.ready for upstream in self.upstreams)

    async def aclose(self) -> None:
        for upstream in self.upstreams:
            await upstream.aclose()
