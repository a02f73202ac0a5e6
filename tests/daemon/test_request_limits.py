"""What an inference key may ask: the parameter allow-list and its caps, the stored request's
length, per-key rate limits, 413 for every body over the limit, and 503s without internals.

The gateway runs in-process (its real lifespan, real SQLite) in front of a vLLM URL nobody
listens on: every refusal here happens before a request would reach vLLM, and a request that
passes them gets the 503 of a model server that is down.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from lifelong.daemon.gateway.rate_limit import RateLimited, RateLimiter
from lifelong.daemon.settings import load_settings

KEYS = {"alice": "sk-alice", "bob": "sk-bob"}
HI = [{"role": "user", "content": "hi"}]
CHAT = {"model": "lifelong", "messages": HI}


def gateway(in_process_gateway, tmp_path: Path, migrated_sqlite_file: Path,
            **sections: dict) -> Iterator[TestClient]:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    shutil.copy(migrated_sqlite_file, data_dir / "lifelong.db")
    yield from in_process_gateway(data_dir, KEYS, gateway={"max_request_bytes": 64 * 1024},
                                  **sections)


@pytest.fixture
def client(in_process_gateway, tmp_path: Path, migrated_sqlite_file: Path) -> Iterator[TestClient]:
    yield from gateway(in_process_gateway, tmp_path, migrated_sqlite_file,
                       database={"max_text_chars": 2000})


def refused(response, status: int = 400) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


# --- the allow-list ----------------------------------------------------------------------------

@pytest.mark.parametrize("field, value", [
    ("priority", -100),
    ("kv_transfer_params", {"do_remote_prefill": True}),
    ("chat_template", "{{ 'x' * 1000000 }}"),
    ("prompt_logprobs", 5),  # killed vLLM 0.32's CPU engine with a LoRA adapter
    ("best_of", 64),
    ("min_tokens", 100_000),
    ("tools", [{"type": "function", "function": {"name": "f"}}]),
])
def test_a_parameter_outside_the_allow_list_is_a_400_naming_it(client, field, value):
    error = refused(client.post("/v1/chat/completions", json={**CHAT, field: value}))
    assert error["param"] == field and field in error["message"]
    assert error["type"] == "invalid_request_error"


def test_a_message_with_keys_openai_does_not_define_is_refused(client):
    messages = [{"role": "user", "content": "hi", "image_url": "http://169.254.169.254/"}]
    error = refused(client.post("/v1/chat/completions", json={**CHAT, "messages": messages}))
    assert error["param"] == "messages.0.image_url"


def test_text_completion_echo_with_logprobs_is_refused(client):
    # vLLM computes the prompt's logprobs for it: the same crash as prompt_logprobs.
    body = {"model": "lifelong", "prompt": "1 + 1 =", "echo": True, "logprobs": 1}
    assert "echo" in refused(client.post("/v1/completions", json=body))["message"]


@pytest.mark.parametrize("path, change, param, cap", [
    ("/v1/chat/completions", {"max_tokens": 10_000_000}, "max_tokens", "limits.max_tokens"),
    ("/v1/chat/completions", {"max_completion_tokens": 5000}, "max_completion_tokens",
     "limits.max_tokens"),
    ("/v1/chat/completions", {"n": 17}, "n", "limits.max_choices"),
    ("/v1/chat/completions", {"logprobs": True, "top_logprobs": 21}, "top_logprobs",
     "limits.max_logprobs"),
    ("/v1/chat/completions", {"stop": list("abcde")}, "stop", "limits.max_stop"),
    ("/v1/chat/completions", {"stop": "x" * 257}, "stop", "limits.max_stop_chars"),
    ("/v1/chat/completions", {"logit_bias": {str(i): 1 for i in range(301)}}, "logit_bias",
     "limits.max_logit_bias"),
    ("/v1/completions", {"prompt": ["1 +"] * 5, "n": 4}, "prompt", "limits.max_choices"),
    ("/v1/completions", {"logprobs": 21}, "logprobs", "limits.max_logprobs"),
])
def test_a_parameter_over_its_cap_is_a_400_naming_the_field_and_the_cap(
    client, path, change, param, cap
):
    body = {**CHAT} if path.endswith("chat/completions") else {"model": "lifelong", "prompt": "1 +"}
    error = refused(client.post(path, json={**body, **change}))
    assert error["param"] == param and error["code"] == "over_limit"
    assert cap in error["message"], error["message"]


def test_standard_parameters_within_the_caps_pass_to_the_model_server(client):
    # What the official client and lm-eval's local-(chat-)completions send: past every check,
    # so the answer is the down model server's 503.
    chat = {**CHAT, "max_tokens": 256, "temperature": 0, "top_p": 1, "n": 2, "seed": 1234,
            "stop": ["\n\n", "Q:"], "presence_penalty": 0.1, "frequency_penalty": 0.1,
            "logit_bias": {"42": -100}, "logprobs": True, "top_logprobs": 5, "user": "u-1",
            "stream": True, "stream_options": {"include_usage": True}, "top_k": 20,
            "max_completion_tokens": 256}
    assert client.post("/v1/chat/completions", json=chat).status_code == 503
    text = {"model": "lifelong", "prompt": ["1 + 1 =", "2 + 2 ="], "max_tokens": 1,
            "logprobs": 1, "temperature": 0, "seed": 1234, "stop": ["\n"], "ignore_eos": True}
    assert client.post("/v1/completions", json=text).status_code == 503


def test_the_gateways_own_routes_keep_422_for_a_bad_body(client):
    refused(client.post("/v1/feedback", json={"nonsense": 1}), 422)


# --- the stored request ------------------------------------------------------------------------

def test_a_request_longer_than_the_store_keeps_is_refused_before_the_model_server(client):
    long = [{"role": "user", "content": "x" * 3000}]  # max_text_chars is 2000 here
    error = refused(client.post("/v1/chat/completions", json={**CHAT, "messages": long}))
    assert error["code"] == "request_too_long" and "database.max_text_chars" in error["message"]
    error = refused(client.post("/v1/completions", json={"model": "lifelong", "prompt": "x" * 3000}))
    assert error["param"] == "prompt"


# --- 413 and 503 -------------------------------------------------------------------------------

def test_a_chunked_body_over_the_limit_is_a_413(client):
    def chunks() -> Iterator[bytes]:  # no Content-Length: sent chunked
        yield b'{"model": "lifelong", "messages": [{"role": "user", "content": "'
        for _ in range(100):
            yield b"x" * 1024
        yield b'"}]}'

    error = refused(client.post("/v1/chat/completions", content=chunks(),
                                headers={"Content-Type": "application/json"}), 413)
    assert error["code"] == "too_large" and "gateway.max_request_bytes" in error["message"]


def test_a_chunked_body_under_the_limit_is_read_whole(client):
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "lifelong", "messages": '
        yield b'[{"role": "user", "content": "hi"}], "max_tokens": 10000000}'

    error = refused(client.post("/v1/chat/completions", content=chunks(),
                                headers={"Content-Type": "application/json"}))
    assert error["param"] == "max_tokens"


def test_a_down_model_server_is_a_503_that_names_no_internal_url(client):
    # The health watch has not yet seen vLLM go: the request is sent and its connection refused.
    watch = client.app.state.watchers[0]
    client.portal.call(watch.stop)
    watch.upstream.ready = True
    response = client.post("/v1/chat/completions", json=CHAT)
    error = refused(response, 503)
    assert error["message"] == "the model server is unavailable; retry shortly"
    assert "127.0.0.1" not in response.text and "http" not in response.text
    assert int(response.headers["Retry-After"]) >= 1


# --- rate limits -------------------------------------------------------------------------------

def test_a_key_over_its_requests_per_minute_gets_a_429_with_retry_after(
    in_process_gateway, tmp_path, migrated_sqlite_file
):
    for client in gateway(in_process_gateway, tmp_path, migrated_sqlite_file,
                          limits={"requests_per_minute": 2}):
        for _ in range(2):
            assert client.post("/v1/chat/completions", json=CHAT).status_code == 503
        response = client.post("/v1/chat/completions", json=CHAT)
        error = refused(response, 429)
        assert error["code"] == "rate_limit_exceeded" and "limits.requests_per_minute" in error["message"]
        assert int(response.headers["Retry-After"]) >= 1
        # Another key has its own bucket.
        other = client.post("/v1/chat/completions", json=CHAT,
                            headers={"Authorization": f"Bearer {KEYS['bob']}"})
        assert other.status_code == 503


class Clock:
    """Time the test moves by hand (the buckets refill with time)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_requests_refill_at_the_rate_per_minute():
    clock = Clock()
    limiter = RateLimiter(requests_per_minute=60, tokens_per_minute=None, clock=clock)
    for _ in range(60):  # a minute's worth at once
        limiter.admit("alice")
    with pytest.raises(RateLimited) as caught:
        limiter.admit("alice")
    assert caught.value.limit == "requests" and caught.value.retry_after_s == 1
    clock.now += 1.0
    limiter.admit("alice")


def test_tokens_are_charged_after_the_answer_and_a_key_in_debt_waits():
    clock = Clock()
    limiter = RateLimiter(requests_per_minute=None, tokens_per_minute=600, clock=clock)
    limiter.admit("alice")
    limiter.charge("alice", 1200)  # one long answer: 600 tokens in debt
    with pytest.raises(RateLimited) as caught:
        limiter.admit("alice")
    assert caught.value.limit == "tokens" and caught.value.retry_after_s == 61  # (600 + 1) / 10
    limiter.admit("bob")
    clock.now += 61
    limiter.admit("alice")


def test_rate_limits_are_off_by_default():
    limits = load_settings().limits
    assert limits.requests_per_minute is None and limits.tokens_per_minute is None
    limiter = RateLimiter(requests_per_minute=None, tokens_per_minute=None)
    for _ in range(10_000):
        limiter.admit("alice")
    limiter.charge("alice", 10**9)
    limiter.admit("alice")
