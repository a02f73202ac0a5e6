"""The product's default model, SmolLM2-135M-Instruct (imported from the pinned GGUF), end to end
through `lifelong serve`: the official `openai` client (chat with a system prompt, streaming,
completions, feedback), training rendered exactly as vLLM renders (token parity through vLLM's
own /tokenize), and learning from corrections through the public API: the model answers
"What is 27 + 82? Answer with the number only." with "27 + 82 = 198" before and the bare sum
after, while the general-capability suite shows it still answers everything else as it did.
"""

from __future__ import annotations

import random
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from transformers import AutoTokenizer

from lifelong.adapters.batches import encode
from lifelong.daemon.demo import sum_question
from lifelong.feedback_store.training_data import Prompt

pytestmark = pytest.mark.integration

SYSTEM = "You are a terse assistant for a bookshop."


def sums(seed: int, n: int, exclude: set[tuple[int, int]] = frozenset()) -> list[tuple[int, int]]:
    pairs = [(a, b) for a in range(10, 100) for b in range(10, 100) if (a, b) not in exclude]
    return random.Random(seed).sample(pairs, n)


@pytest.fixture(scope="module")
def smol(smollm2_base_model: Path, tmp_path_factory: pytest.TempPathFactory, start_daemon):
    daemon = start_daemon(
        tmp_path_factory.mktemp("smol"), smollm2_base_model,
        vllm={"max_model_len": 1024},
        training={"recipe": ["sft"], "learning_rate": 1e-3, "warmup_steps": 5, "batch_size": 16,
                  "epochs": 2, "max_steps": None, "min_new_examples": 5, "device": "cpu",
                  "anchor_fraction": 0.5},
        evals={"general_suite": True, "max_tokens": 48},
        database={"heldout_fraction": 0.0},  # every interaction trains; the target is the tasks
    )
    yield daemon
    daemon.stop()


def client_for(daemon) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{daemon.url}/v1", api_key=daemon.key("alice"),
                         max_retries=0, timeout=120)


def test_the_real_model_serves_chat_streams_and_completions_through_the_gateway(smol):
    client = client_for(smol)
    reply = client.chat.completions.create(
        model="lifelong", temperature=0, max_tokens=24,
        messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert "Paris" in reply.choices[0].message.content
    streamed = client.chat.completions.create(
        model="lifelong", temperature=0, max_tokens=24, stream=True,
        messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == \
        reply.choices[0].message.content
    with_system = client.chat.completions.create(
        model="lifelong", temperature=0, max_tokens=32,
        messages=[{"role": "system", "content": SYSTEM},
                  {"role": "user", "content": "Hello!"}])
    assert with_system.choices[0].message.content.strip()
    text = client.completions.create(model="lifelong", prompt="The capital of France is",
                                     max_tokens=8, temperature=0)
    assert text.choices[0].text.strip()

    given = httpx.post(f"{smol.url}/v1/feedback", headers=smol.headers("alice"), json={
        "interaction_id": with_system.id, "kind": "rating", "score": 1})
    assert given.status_code == 201, given.text
    deadline = time.monotonic() + 30
    while (logged := httpx.get(f"{smol.url}/v1/interactions/{with_system.id}",
                               headers=smol.headers("alice"))).status_code == 404:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    row = logged.json()
    # Token counts are vLLM's own (its usage), not a count of ours.
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        with_system.usage.prompt_tokens, with_system.usage.completion_tokens)
    assert row["request"]["messages"][0] == {"role": "system", "content": SYSTEM}


@pytest.mark.parametrize("turns", [
    [{"role": "user", "content": "What is 12 + 34?"}],  # the template adds its default system
    [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Any poetry?"}],
    [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Do you sell maps?"}],
], ids=["user", "system", "multi-turn"])
def test_training_examples_are_the_tokens_vllm_serves(smol, smollm2_base_model, turns):
    vllm = (smol.data_dir / "run" / "vllm.url").read_text().strip()
    tokenizer = AutoTokenizer.from_pretrained(smollm2_base_model)
    completion = "Yes, we do."
    encoded = encode(tokenizer, Prompt("chat.completions", turns, None), completion,
                     max_length=1024)
    served_prompt = httpx.post(f"{vllm}/tokenize", json={
        "model": "base", "messages": turns, "add_generation_prompt": True}).json()["tokens"]
    served_whole = httpx.post(f"{vllm}/tokenize", json={
        "model": "base", "messages": [*turns, {"role": "assistant", "content": completion}],
        "add_generation_prompt": False}).json()["tokens"]
    head = len(served_prompt)
    assert encoded.input_ids[:head] == served_prompt  # the prompt exactly as vLLM renders it
    assert set(encoded.labels[:head]) == {-100}  # no loss on the prompt
    # The assistant's turn up to its end-of-turn token, as the template writes it; what
    # follows in the template (a newline) is layout the model is not taught.
    assert encoded.input_ids == served_whole[:len(encoded.input_ids)]
    assert encoded.labels[head:] == encoded.input_ids[head:]
    assert tokenizer.decode(encoded.input_ids[head:]) == completion + "<|im_end|>"
    assert not encoded.truncated


# Outside `make test` on a host without AVX-512: vLLM's CPU kernels there (an AMD EPYC with AVX2
# only) served SmolLM2 at ~20 tokens/s with 60 requests running, so the daemon's start-up
# preparation alone (142 general prompts, 135 anchors) took 17 minutes against ~2.3 on the
# AVX-512 hosts this test ran on (543-589 s in all); it timed out at 900 s asking its first 160
# questions. `make test-slow` runs it, with room for such a host.
@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_corrections_teach_bare_sums_and_the_general_suite_holds(smol, migrated_store):
    client = client_for(smol)
    heldout = [sum_question(a, b) for a, b in sums(1, 40)]
    taught = [sum_question(a, b) for a, b in sums(2, 160, exclude=set(sums(1, 40)))]
    with migrated_store(f"sqlite:///{smol.data_dir / 'lifelong.db'}") as store:
        store.add_heldout_tasks(heldout, family="sums")

    def ask(question: str, model: str = "lifelong") -> tuple[str, str, str]:
        reply = client.chat.completions.with_raw_response.create(
            model=model, temperature=0, max_tokens=16,
            messages=[{"role": "user", "content": question}])
        answer = reply.parse()
        return answer.id, answer.choices[0].message.content or "", reply.headers["x-lifelong-adapter"]

    def right(asked, items) -> float:
        return sum(said.strip() == want for (_, said, _), (_, want) in
                   zip(asked, items, strict=True)) / len(items)

    with ThreadPoolExecutor(4) as pool:
        asked = list(pool.map(lambda qa: ask(qa[0]), taught))
        before = list(pool.map(lambda qa: ask(qa[0]), heldout))
    assert right(before, heldout) <= 0.2  # it says "27 + 82 = 109", not "109"
    corrections = [{"interaction_id": interaction, "kind": "correction", "text": want}
                   for (interaction, said, _), (_, want) in zip(asked, taught, strict=True)
                   if said.strip() != want]
    given = httpx.post(f"{smol.url}/v1/feedback:batch", json={"items": corrections},
                       headers=smol.headers("alice"), timeout=120)
    assert given.status_code == 201, given.text

    # At start-up the daemon asked the base model, through vLLM, for the general suite's and
    # the anchors' answers, so neither the judge nor the trainer waits for them.
    evals = smol.data_dir / "evals"
    deadline = time.monotonic() + 600
    while not ((evals / "general.jsonl").exists() and (evals / "anchors.jsonl").exists()):
        assert time.monotonic() < deadline, "the base model's answers were not prepared"
        time.sleep(2)

    admin = httpx.Client(base_url=smol.url, headers=smol.headers("ops"), timeout=60)
    started = admin.post("/admin/train", json={})
    assert started.status_code == 202, started.text
    last = smol.cycle_ended(timeout=1500)["cycle"]["last"]
    decision = admin.get("/admin/adapters/v0001").json()["gate_decision"]
    assert (last["outcome"], last["decision"]) == ("promoted", "approved"), decision["reasons"]
    # The general suite: answers to everyday prompts stay alike to the base model's (a floor,
    # checked by the gate as a hard check; the first candidate rewords about half of them).
    assert "hard check general at or above its floor: ok" in " ".join(decision["reasons"])
    target = next(s for s in decision["suites"] if s["suite"] == "target:sums")
    assert target["difference"] >= 0.3, decision["reasons"]

    trainer_log = (smol.data_dir / "logs" / "trainer-1.log").read_text()
    assert re.search(r"sft stage: \d+ feedback examples and \d+ anchors", trainer_log)
    assert "answering 135 anchor prompts" not in trainer_log  # read back, not generated again

    with ThreadPoolExecutor(4) as pool:
        after = list(pool.map(lambda qa: ask(qa[0]), heldout))
    assert {version for _, _, version in after} == {"v0001"}
    assert right(after, heldout) >= right(before, heldout) + 0.3
    assert "Paris" in ask("What is the capital of France?")[1]
