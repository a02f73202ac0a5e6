"""The built folder serves in a real vLLM as it is: the chat endpoint ends the turn at
<|im_end|>, and a peft adapter trained on the folder loads at runtime and answers."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

pytestmark = pytest.mark.integration

STARTUP_TIMEOUT_S = 300  # about 30 s on 2 idle cores; far more when the machine is shared


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def vllm_url(tiny_base_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("vllm") / "vllm.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
         "--model", str(tiny_base_model), "--served-model-name", "tiny",
         "--enable-lora", "--max-lora-rank", "8", "--max-model-len", "512",
         "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1", "VLLM_CPU_KVCACHE_SPACE": "1"},
        stdout=log.open("wb"), stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so the engine workers go with it
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"vLLM exited {process.returncode}:\n{log.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"vLLM not up in {STARTUP_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def chat(url: str, model: str, question: str) -> dict:
    response = httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": question}],
              "max_tokens": 16, "temperature": 0},
        timeout=60,
    )
    response.raise_for_status()
    return response.json()


def test_chat_answers_with_a_number_and_stops_at_im_end(vllm_url):
    body = chat(vllm_url, "tiny", "What is 12 + 34?")
    (choice,) = body["choices"]
    assert choice["finish_reason"] == "stop"
    assert re.fullmatch(r"\d{1,3}", choice["message"]["content"]), choice
    assert body["usage"]["completion_tokens"] <= 4  # up to three digits, then <|im_end|>


def test_a_peft_adapter_loads_at_runtime_and_answers(vllm_url, tiny_base_model, tmp_path):
    adapter = tmp_path / "a1"
    get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_base_model),
        LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    ).save_pretrained(adapter)
    loaded = httpx.post(
        f"{vllm_url}/v1/load_lora_adapter",
        json={"lora_name": "a1", "lora_path": str(adapter)},
        timeout=60,
    )
    assert loaded.status_code == 200, loaded.text
    body = chat(vllm_url, "a1", "What is 12 + 34?")
    assert body["model"] == "a1"
    assert body["choices"][0]["finish_reason"] == "stop"
