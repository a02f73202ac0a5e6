"""The runner against a real vLLM on the tiny model: answers as vLLM gives them, judged, in item
order, concurrently; a candidate and a champion compared item for item."""

from __future__ import annotations

import asyncio
import re
import socket
from pathlib import Path

import httpx
import pytest
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from lifelong.adapters.lora_config import LLAMA_TARGETS
from lifelong.evals.runner import EvalRequestFailed, Sampling, compare, evaluate
from lifelong.evals.statistics import mcnemar_exact
from lifelong.evals.suites import EvalItem, Suite

pytestmark = pytest.mark.integration


def chat_item(a: int, b: int) -> EvalItem:
    return EvalItem(id=f"add-{a}-{b}", messages=[{"role": "user", "content": f"What is {a} + {b}?"}],
                    reference=str(a + b), verifier="numeric")


ADDITIONS = Suite(name="add2", kind="regression",
                  items=tuple(chat_item(a, b) for a, b in [(12, 34), (50, 21), (33, 44), (71, 18),
                                                           (25, 25), (40, 39), (11, 11), (62, 27)]))


def direct_chat(url: str, model: str, item: EvalItem) -> str:
    body = {"model": model, "messages": item.messages, "max_tokens": 256, "temperature": 0}
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
    response.raise_for_status()
    return response.json()["choices"][0]["message"]["content"]


@pytest.fixture(scope="module")
def twin_adapter(vllm_url: str, tiny_base_model: Path, tmp_path_factory) -> str:
    """A freshly initialised LoRA adapter (B = 0: answers exactly as the base), loaded as `twin`."""
    path = tmp_path_factory.mktemp("adapters") / "twin"
    get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_base_model),
        # Every projection, as the trainer does. A q/v-only twin answered unlike the base model
        # once this vLLM had served other (all-projection) adapters: most likely a reused LoRA
        # slot keeps an earlier adapter's weights for the modules a later one leaves out.
        LoraConfig(r=8, lora_alpha=16, target_modules=list(LLAMA_TARGETS), task_type="CAUSAL_LM"),
    ).save_pretrained(path)
    loaded = httpx.post(f"{vllm_url}/v1/load_lora_adapter",
                        json={"lora_name": "twin", "lora_path": str(path)}, timeout=120)
    assert loaded.status_code == 200, loaded.text
    return "twin"


def test_answers_are_vllms_greedy_answers_judged_in_item_order(vllm_url):
    (run,) = asyncio.run(evaluate(vllm_url, "base", [ADDITIONS]))
    assert [r.item_id for r in run.results] == [item.id for item in ADDITIONS.items]
    for item, result in zip(ADDITIONS.items, run.results, strict=True):
        assert result.answer == direct_chat(vllm_url, "base", item)
        assert re.fullmatch(r"\d{1,3}", result.answer), result
        assert result.finish_reasons == ("stop",) and result.format_ok
        assert result.passed == (int(result.answer) == int(item.reference))
        assert result.score == float(result.passed) and result.latency_s > 0
    summary = run.summary
    assert (summary.suite, summary.kind, summary.model, summary.n) == ("add2", "regression", "base", 8)
    assert summary.mean == summary.pass_rate == sum(r.passed for r in run.results) / 8
    assert summary.ci_low <= summary.mean <= summary.ci_high
    assert summary.empty_answers == 0 and summary.format_rate == 1.0


def test_greedy_runs_repeat_exactly(vllm_url):
    first, again = (asyncio.run(evaluate(vllm_url, "base", [ADDITIONS]))[0] for _ in range(2))
    assert [r.answers for r in first.results] == [r.answers for r in again.results]


def prompt_item(a: int, b: int) -> EvalItem:
    return EvalItem(id=f"p-{a}-{b}", prompt=f"<|im_start|>user\nWhat is {a} + {b}?<|im_end|>\n"
                    "<|im_start|>assistant\n", reference=str(a + b), verifier="numeric")


def direct_completion(url: str, item: EvalItem) -> str:
    body = {"model": "base", "prompt": item.prompt, "max_tokens": 256, "temperature": 0}
    return httpx.post(f"{url}/v1/completions", json=body, timeout=120).json()["choices"][0]["text"]


ITEMS = tuple(prompt_item(a, b) for a, b in [(12, 34), (50, 21), (9, 90), (33, 44), (71, 18)])


def test_prompt_items_are_batched_into_completions_requests_and_matched_back(vllm_url):
    (run,) = asyncio.run(evaluate(vllm_url, "base", [Suite("raw", "regression", ITEMS)],
                                  prompt_batch=2))
    direct = [direct_completion(vllm_url, item) for item in ITEMS]
    assert len(set(direct)) > 1  # distinct answers, so a mix-up between items would show
    assert [r.answer for r in run.results] == direct


def test_samples_of_a_batched_prompt_stay_with_their_item(vllm_url):
    sampling = Sampling(n=2, temperature=1.0, seed=7)
    (run,) = asyncio.run(evaluate(vllm_url, "base", [Suite("raw", "regression", ITEMS)],
                                  sampling=sampling, prompt_batch=len(ITEMS)))
    # The same request, seeded, straight to vLLM: choice index = prompt index * n + sample index.
    body = {"model": "base", "prompt": [item.prompt for item in ITEMS], **sampling.body()}
    choices = httpx.post(f"{vllm_url}/v1/completions", json=body, timeout=120).json()["choices"]
    texts = [c["text"] for c in sorted(choices, key=lambda c: c["index"])]
    assert [r.answers for r in run.results] == [tuple(texts[2 * k:2 * k + 2]) for k in range(5)]


def test_several_greedy_samples_are_refused():
    with pytest.raises(ValueError, match="temperature above 0"):
        Sampling(n=2)


def test_prompt_and_chat_items_mix_in_one_suite_in_item_order(vllm_url):
    items = (prompt_item(12, 34), chat_item(50, 21), prompt_item(9, 90))
    (run,) = asyncio.run(evaluate(vllm_url, "base", [Suite("mixed", "regression", items)]))
    assert [r.item_id for r in run.results] == [item.id for item in items]
    assert run.results[1].answer == direct_chat(vllm_url, "base", items[1])
    assert run.results[2].answer == direct_completion(vllm_url, items[2])


def test_items_are_in_flight_together_so_vllm_batches_them(vllm_url):
    suite = Suite("many", "regression", tuple(chat_item(a, a + 1) for a in range(10, 42)))
    loop = asyncio.new_event_loop()
    started = loop.time()
    (run,) = loop.run_until_complete(evaluate(vllm_url, "base", [suite], concurrency=32))
    wall = loop.time() - started
    loop.close()
    # Sequential requests would add up to the wall time; overlapping ones add up to far more.
    assert sum(r.latency_s for r in run.results) > 4 * wall


def test_several_samples_per_item_are_all_judged(vllm_url):
    sampling = Sampling(n=3, temperature=1.0, seed=7)
    (run,) = asyncio.run(evaluate(vllm_url, "base", [ADDITIONS], sampling=sampling))
    for result in run.results:
        assert len(result.answers) == 3 and len(result.finish_reasons) == 3
        passes = int(result.reason.split("/")[0])
        assert result.reason.startswith(f"{passes}/3 samples passed; first: ")
        assert result.passed == (passes >= 2) and result.score == pytest.approx(passes / 3)


def test_unknown_model_stops_the_run_with_vllms_message(vllm_url):
    with pytest.raises(EvalRequestFailed, match="404.*nobody"):
        asyncio.run(evaluate(vllm_url, "nobody", [ADDITIONS]))


def test_unreachable_server_fails_after_retries():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        with pytest.raises(EvalRequestFailed, match="ClientConnectorError"):
            asyncio.run(evaluate(f"http://127.0.0.1:{port}", "base", [ADDITIONS]))


def test_candidate_and_champion_answer_the_same_items(vllm_url, twin_adapter):
    other = Suite("sub", "retention", (chat_item(5, 5),))
    comparisons = asyncio.run(compare(vllm_url, candidate=twin_adapter, champion="base",
                                      suites=[ADDITIONS, other]))
    assert [c.suite.name for c in comparisons] == ["add2", "sub"]
    for comparison in comparisons:
        assert comparison.candidate.model == "twin" and comparison.champion.model == "base"
        pairs = list(zip(comparison.candidate.results, comparison.champion.results, strict=True))
        assert all(c.item_id == b.item_id for c, b in pairs)
        # Not asserted: that the untrained twin answers exactly as the base model. It did on a
        # fresh server, and did not once this vLLM had served four other adapters in the same
        # session (see the README's known limits): a vLLM property, not the runner's.
        test = mcnemar_exact([c.passed for c, _ in pairs], [b.passed for _, b in pairs])
        assert test.n == len(pairs)
