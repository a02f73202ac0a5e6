"""The gateway end to end: the official `openai` client -> lifelong serve -> real vLLM -> SQLite."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest
import yaml

pytestmark = pytest.mark.integration

QUESTION = [{"role": "user", "content": "What is 12 + 34?"}]


@pytest.fixture
def client(daemon) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{daemon.url}/v1", api_key=daemon.key("alice"), max_retries=0)


def interaction(daemon, interaction_id: str, principal: str = "alice") -> dict:
    response = httpx.get(
        f"{daemon.url}/v1/interactions/{interaction_id}", headers=daemon.headers(principal)
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_chat_completion_answers_under_the_alias_with_interaction_headers(daemon, client):
    raw = client.chat.completions.with_raw_response.create(
        model="lifelong", messages=QUESTION, max_tokens=8, temperature=0
    )
    completion = raw.parse()
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == "lifelong"
    assert raw.headers["x-lifelong-interaction-id"] == completion.id
    assert raw.headers["x-lifelong-adapter"] == "base"
    assert completion.choices[0].finish_reason in ("stop", "length")
    stored = interaction(daemon, completion.id)
    assert stored["response_text"] == completion.choices[0].message.content
    assert stored["principal"] == "alice"
    assert stored["endpoint"] == "chat.completions"
    assert stored["completion_tokens"] == completion.usage.completion_tokens
    assert stored["adapter_version"] is None


def test_streamed_chat_is_reassembled_in_the_log(daemon, client):
    stream = client.chat.completions.create(
        model="lifelong", messages=QUESTION, max_tokens=8, temperature=0, stream=True
    )
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    ids = {chunk.id for chunk in chunks}
    assert len(ids) == 1 and {chunk.model for chunk in chunks} == {"lifelong"}
    assert all(chunk.usage is None for chunk in chunks)  # the client did not ask for usage
    stored = interaction(daemon, ids.pop())
    assert stored["response_text"] == text
    assert stored["finish_reason"] in ("stop", "length")
    assert stored["completion_tokens"] and stored["prompt_tokens"]


def test_streamed_usage_is_passed_when_asked(client):
    chunks = list(client.chat.completions.create(
        model="lifelong", messages=QUESTION, max_tokens=4, stream=True,
        stream_options={"include_usage": True},
    ))
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1


def test_text_completion_plain_and_streamed(daemon, client):
    completion = client.completions.create(model="lifelong", prompt="12 + 34 =", max_tokens=4)
    assert completion.id.startswith("cmpl-") and completion.model == "lifelong"
    assert interaction(daemon, completion.id)["response_text"] == completion.choices[0].text
    chunks = list(client.completions.create(
        model="lifelong", prompt="12 + 34 =", max_tokens=4, stream=True
    ))
    text = "".join(chunk.choices[0].text for chunk in chunks if chunk.choices)
    assert interaction(daemon, chunks[0].id)["response_text"] == text


def test_pinned_base_version_answers_as_base(client):
    raw = client.chat.completions.with_raw_response.create(
        model="base", messages=QUESTION, max_tokens=4
    )
    assert raw.parse().model == "base" and raw.headers["x-lifelong-adapter"] == "base"


def test_unknown_model_is_an_openai_404(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=QUESTION)
    assert caught.value.body["code"] == "model_not_found"


def test_models_lists_the_alias_and_base(client):
    assert {"lifelong", "base"} <= {model.id for model in client.models.list()}


def test_upstream_validation_errors_pass_through_as_400(client):
    # Within the gateway's cap (limits.max_tokens), past the model's length (vllm.max_model_len).
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="lifelong", messages=QUESTION, max_tokens=4000)
    assert caught.value.body.get("code") != "over_limit"


def test_health_and_readiness(daemon):
    assert httpx.get(f"{daemon.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{daemon.url}/readyz").json() == {"status": "ready"}  # nothing internal
    health = httpx.get(f"{daemon.url}/admin/health", headers=daemon.headers("ops")).json()
    assert health["upstreams"][0]["ready"] is True and health["database"]["up"] is True
    assert httpx.get(f"{daemon.url}/admin/health", headers=daemon.headers("alice")).status_code \
        == 403


def test_a_gateway_can_drive_vllm_servers_it_does_not_manage(daemon, start_daemon, tmp_path):
    # vllm.upstreams: the gateway only health-watches the listed servers (here the session
    # daemon's vLLM) and starts none of its own.
    vllm_port = yaml.safe_load(daemon.config.read_text())["vllm"]["port"]
    other = start_daemon(
        tmp_path, Path("/nonexistent"), vllm={"upstreams": [f"http://127.0.0.1:{vllm_port}"]}
    )
    try:
        client = openai.OpenAI(base_url=f"{other.url}/v1", api_key=other.key("alice"))
        answer = client.chat.completions.create(model="lifelong", messages=QUESTION, max_tokens=4)
        assert answer.model == "lifelong" and answer.id.startswith("chatcmpl-")
        health = httpx.get(f"{other.url}/admin/health", headers=other.headers("ops")).json()
        assert [u["url"] for u in health["upstreams"]] == [f"http://127.0.0.1:{vllm_port}"]
    finally:
        other.stop()


def test_limits_hold_a_chat_without_max_tokens_and_a_key_past_its_tokens_per_minute(
    daemon, start_daemon, tmp_path
):
    # A gateway of its own (limits are start-up settings) on the session daemon's vLLM.
    vllm_port = yaml.safe_load(daemon.config.read_text())["vllm"]["port"]
    other = start_daemon(tmp_path, Path("/nonexistent"),
                         vllm={"upstreams": [f"http://127.0.0.1:{vllm_port}"]},
                         limits={"max_tokens": 1, "tokens_per_minute": 10})
    try:
        client = openai.OpenAI(base_url=f"{other.url}/v1", api_key=other.key("alice"),
                               max_retries=0)
        # No max_tokens: vLLM would run to the end of the context; the cap holds it.
        answer = client.chat.completions.create(model="lifelong", messages=QUESTION)
        assert answer.usage.completion_tokens == 1 and answer.choices[0].finish_reason == "length"
        # The answer's tokens were charged once vLLM reported them (the prompt alone is > 10).
        assert answer.usage.total_tokens > 10
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model="lifelong", messages=QUESTION, max_tokens=1)
        assert int(caught.value.response.headers["Retry-After"]) >= 1
        assert "limits.tokens_per_minute" in caught.value.message
        bob = openai.OpenAI(base_url=f"{other.url}/v1", api_key=other.key("bob"), max_retries=0)
        assert bob.chat.completions.create(model="lifelong", messages=QUESTION, max_tokens=1)
    finally:
        other.stop()
