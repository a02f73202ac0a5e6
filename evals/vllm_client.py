"""The one small client of vLLM's HTTP API: its routes, request bodies and answers, in one place.

vLLM's Python API changes between patch releases; its HTTP API (the OpenAI routes, LoRA loading)
is what stays stable, for the CPU build, the CUDA build, or a fleet of servers. Three callers
speak it: the eval runner (suites, with retries), rollouts (GRPO samples, and loading the policy
being trained) and the daemon's upstream (the gateway's proxy), which wraps these routes and
parsers in a session of its own (in-flight counts, retargeting, the gateway's errors). It lives
in the library layer because the daemon imports the libraries, never the reverse.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

logger = logging.getLogger(__name__)

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MODELS = "/v1/models"
LOAD_ADAPTER = "/v1/load_lora_adapter"
UNLOAD_ADAPTER = "/v1/unload_lora_adapter"
HEALTH = "/health"

RETRIES = 2  # per request, on connection errors and 5xx (a restarting server), with backoff


class EvalRequestFailed(RuntimeError):
    """vLLM could not answer an item (unknown model, server down after retries, bad response)."""


class AdapterLoadRefused(RuntimeError):
    """vLLM did not load an adapter (bad folder, rank above --max-lora-rank, LoRA off)."""


def client_session(concurrency: int = 64, timeout_s: float = 600.0) -> aiohttp.ClientSession:
    """An HTTP session sized for `concurrency` requests; close it (async with) when done."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency),
        timeout=aiohttp.ClientTimeout(total=timeout_s),
    )


async def post_json(
    http: aiohttp.ClientSession, url: str, body: dict[str, Any], *, retries: int = RETRIES
) -> dict[str, Any]:
    """POST `body` to `url`; vLLM's JSON answer. Connection errors and 5xx are retried `retries`
    times with backoff; a 4xx is not (it would answer the same). Raises EvalRequestFailed."""
    for attempt in range(retries + 1):
        try:
            async with http.post(url, json=body) as response:
                if response.status < 500:
                    payload = await response.json(content_type=None)
                    if response.status != 200:
                        message = (payload.get("error") or {}).get("message", payload) \
                            if isinstance(payload, dict) else payload
                        raise EvalRequestFailed(f"{url} answered {response.status}: {message}")
                    return payload  # type: ignore[no-any-return]
                problem = f"{url} answered {response.status}: {(await response.text())[:300]}"
        except (TimeoutError, aiohttp.ClientConnectionError) as error:
            problem = f"{url}: {type(error).__name__}: {error}"
        if attempt < retries:
            logger.warning("eval request failed (%s); retrying", problem)
            await asyncio.sleep(0.5 * 2**attempt)
    raise EvalRequestFailed(problem)


def adapter_body(name: str, path: str | None = None) -> dict[str, str]:
    """The body of LOAD_ADAPTER (with `path`) or UNLOAD_ADAPTER (without)."""
    return {"lora_name": name} if path is None else {"lora_name": name, "lora_path": path}


def load_adapter(base_url: str, name: str, path: str, *, timeout_s: float = 120.0) -> None:
    """Have vLLM serve the adapter folder `path` as `name` (a fresh name: vLLM keeps a name's
    first weights). Blocking: for a training process between its rounds. Raises
    AdapterLoadRefused."""
    import httpx  # here: the gateway imports this module for its routes and needs no httpx

    response = httpx.post(f"{base_url}{LOAD_ADAPTER}", json=adapter_body(name, path),
                          timeout=timeout_s)
    if response.status_code != 200:
        raise AdapterLoadRefused(f"vLLM at {base_url} did not load {name} from {path}: "
                                 f"{response.status_code} {response.text[:300]}")


def served_models(models: bytes) -> set[str]:
    """The names in a MODELS answer: the base model's served name and the loaded adapters."""
    return {card["id"] for card in json.loads(models)["data"]}


async def sse_data(response: aiohttp.ClientResponse) -> AsyncIterator[str]:
    """The `data:` payloads of a streamed (server-sent events) answer, as they arrive."""
    async for line in response.content:
        if line.startswith(b"data: "):
            yield line[6:].decode().rstrip("\r\n")
