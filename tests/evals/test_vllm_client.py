"""The library layer's vLLM HTTP client: retries on 5xx, vLLM's own message on 4xx, no retry
where asked. The server here is a few aiohttp routes answering as vLLM does (status and the
OpenAI error body), since the failures under test are the ones a real vLLM is hard to make give;
tests/evals/test_runner.py runs the client against a real vLLM."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
from aiohttp import web

from lifelong.evals.vllm_client import (
    CHAT,
    EvalRequestFailed,
    adapter_body,
    client_session,
    post_json,
    served_models,
)


async def _serve(statuses: list[int]) -> tuple[web.AppRunner, str, list[int]]:
    seen: list[int] = []

    async def chat(_: web.Request) -> web.Response:
        status = statuses[min(len(seen), len(statuses) - 1)]
        seen.append(status)
        if status == 200:
            return web.json_response({"choices": [{"index": 0, "text": "ok"}]})
        return web.json_response({"error": {"message": f"nope {status}"}}, status=status)

    app = web.Application()
    app.router.add_post(CHAT, chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}{CHAT}", seen


def test_a_restarting_server_is_retried_and_a_refusal_is_not():
    async def run() -> None:
        runner, url, seen = await _serve([503, 200])
        try:
            async with client_session() as http:
                assert (await post_json(http, url, {}))["choices"][0]["text"] == "ok"
                assert seen == [503, 200]
        finally:
            await runner.cleanup()
        runner, url, seen = await _serve([404])
        try:
            async with client_session() as http:
                with pytest.raises(EvalRequestFailed, match="answered 404: nope 404"):
                    await post_json(http, url, {})
                assert seen == [404]
        finally:
            await runner.cleanup()

    asyncio.run(run())


def test_no_retries_when_asked():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        url = f"http://127.0.0.1:{sock.getsockname()[1]}{CHAT}"

        async def run() -> None:
            async with client_session() as http:
                await post_json(http, url, {}, retries=0)

        with pytest.raises(EvalRequestFailed, match="ClientConnectorError"):
            asyncio.run(run())


def test_adapter_bodies_and_served_models():
    assert adapter_body("v0001", "/a/v0001") == {"lora_name": "v0001", "lora_path": "/a/v0001"}
    assert adapter_body("v0001") == {"lora_name": "v0001"}
    models = json.dumps({"data": [{"id": "base"}, {"id": "v0001"}]}).encode()
    assert served_models(models) == {"base", "v0001"}
