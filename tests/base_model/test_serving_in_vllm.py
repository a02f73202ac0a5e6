"""The built folder serves in a real vLLM as it is: the chat endpoint ends the turn at
<|im_end|>, and a peft adapter trained on the folder loads at runtime and answers."""

from __future__ import annotations

import re

import httpx
import pytest
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

pytestmark = pytest.mark.integration

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
    body = chat(vllm_url, "base", "What is 12 + 34?")
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
