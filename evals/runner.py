"""The eval runner: a model answers suites through vLLM's OpenAI HTTP API, verifiers judge.

The model is a name vLLM serves: the base model's served name or a loaded LoRA adapter's. Items
with a `prompt` go to /v1/completions, several to a request (a list prompt), items with
`messages` to /v1/chat/completions, one to a request, as the gateway sends them. Requests go out
concurrently (at most `concurrency` in flight, the HTTP connector's limit) so vLLM's scheduler
batches them; greedy (temperature 0) unless told otherwise, `n` samples per item.

An item's score is the mean of its samples' scores; it passes when at least half its samples
pass (with one sample: when that one passes). An HTTP failure is not a wrong answer: after
retries it stops the run (EvalRequestFailed), since a gate must not judge a model by its server.
Requests go through `vllm_client.py`, the library layer's one client of vLLM's HTTP API.

`compare` answers the same suites with the candidate and the champion at once, for the gate.

Answers are judged in a `VerifierPool` (worker processes), never on the caller's event loop or
its default executor: the daemon's judge shares its loop with the gateway's requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from lifelong.evals.statistics import mean_interval
from lifelong.evals.suites import EvalItem, Suite, SuiteKind
from lifelong.evals.verifier_pool import VerifierPool
from lifelong.evals.verifiers import UnknownVerifier, VerifierResult, verifier_names
from lifelong.evals.vllm_client import (
    CHAT,
    COMPLETIONS,
    EvalRequestFailed,
    client_session,
    post_json,
)


@dataclass(frozen=True, slots=True)
class Sampling:
    max_tokens: int = 256
    temperature: float = 0.0  # greedy: the same answer every run, so differences are the model's
    top_p: float = 1.0
    n: int = 1
    seed: int = 0  # used by vLLM when sampling (temperature > 0)

    def __post_init__(self) -> None:
        if self.n > 1 and self.temperature == 0:
            raise ValueError("several samples need a temperature above 0 (greedy gives one answer)")

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"max_tokens": self.max_tokens, "temperature": self.temperature,
                                "top_p": self.top_p, "n": self.n}
        if self.temperature > 0:
            body["seed"] = self.seed
        return body


@dataclass(frozen=True, slots=True)
class ItemResult:
    item_id: str
    answers: tuple[str, ...]  # one per sample
    score: float  # mean over samples, in [0, 1]
    passed: bool
    reason: str  # the first sample's verifier reason (and k/n when sampling several)
    latency_s: float  # the request's wall time, all samples together
    finish_reasons: tuple[str | None, ...]

    @property
    def answer(self) -> str:
        return self.answers[0]

    @property
    def format_ok(self) -> bool:
        """Every sample non-empty and ended by the model itself (not cut at max_tokens)."""
        return all(a.strip() for a in self.answers) and all(f == "stop" for f in self.finish_reasons)


@dataclass(frozen=True, slots=True)
class SuiteSummary:
    suite: str
    kind: SuiteKind
    model: str
    n: int
    mean: float  # mean score
    ci_low: float  # 95% interval of the mean score
    ci_high: float
    pass_rate: float
    empty_answers: int
    format_rate: float
    mean_latency_s: float


@dataclass(frozen=True, slots=True)
class SuiteRun:
    suite: Suite
    model: str
    results: tuple[ItemResult, ...]  # in the suite's item order
    summary: SuiteSummary


@dataclass(frozen=True, slots=True)
class Comparison:
    """Candidate and champion on the same suite, item for item."""

    suite: Suite
    candidate: SuiteRun
    champion: SuiteRun


def summarise(suite: Suite, model: str, results: Sequence[ItemResult]) -> SuiteSummary:
    """Mean, n and a 95% interval for one suite's results (all zeros when it has no items)."""
    n = len(results)
    if n == 0:
        return SuiteSummary(suite.name, suite.kind, model, 0, 0.0, 0.0, 0.0, 0.0, 0, 0.0, 0.0)
    mean, low, high = mean_interval([r.score for r in results])
    return SuiteSummary(
        suite=suite.name, kind=suite.kind, model=model, n=n, mean=mean, ci_low=low, ci_high=high,
        pass_rate=sum(r.passed for r in results) / n,
        empty_answers=sum(1 for r in results if not all(a.strip() for a in r.answers)),
        format_rate=sum(r.format_ok for r in results) / n,
        mean_latency_s=sum(r.latency_s for r in results) / n,
    )


Answers = tuple[list[list[str]], list[list[str | None]], float]  # per item: texts, finishes; latency


async def _chat(http: aiohttp.ClientSession, base_url: str, model: str, item: EvalItem,
                sampling: Sampling) -> Answers:
    url = f"{base_url}{CHAT}"
    started = time.perf_counter()
    payload = await post_json(http, url, {"model": model, "messages": item.messages, **sampling.body()})
    latency = time.perf_counter() - started
    try:
        choices = sorted(payload["choices"], key=lambda c: c["index"])
        texts = [c["message"]["content"] or "" for c in choices]
        return [texts], [[c.get("finish_reason") for c in choices]], latency
    except (KeyError, TypeError) as error:
        raise EvalRequestFailed(f"{url}: unexpected response shape ({error!r})") from error


async def _completions(http: aiohttp.ClientSession, base_url: str, model: str,
                       items: Sequence[EvalItem], sampling: Sampling) -> Answers:
    # One request for many prompts (a list prompt): vLLM schedules them together, and the
    # per-request cost (HTTP, parsing, a response) is paid once per chunk, not once per item.
    url = f"{base_url}{COMPLETIONS}"
    started = time.perf_counter()
    payload = await post_json(http, url, {"model": model, "prompt": [item.prompt for item in items],
                                      **sampling.body()})
    latency = time.perf_counter() - started
    try:
        # Choice index = prompt index * n + sample index.
        choices = sorted(payload["choices"], key=lambda c: c["index"])
        if len(choices) != len(items) * sampling.n:
            raise EvalRequestFailed(f"{url}: {len(choices)} choices for {len(items)} prompts")
        n = sampling.n
        texts = [[c["text"] for c in choices[k * n:(k + 1) * n]] for k in range(len(items))]
        finishes = [[c.get("finish_reason") for c in choices[k * n:(k + 1) * n]]
                    for k in range(len(items))]
        return texts, finishes, latency
    except (KeyError, TypeError) as error:
        raise EvalRequestFailed(f"{url}: unexpected response shape ({error!r})") from error


def _verdict(answers: list[str], verdicts: list[VerifierResult]) -> tuple[float, bool, str]:
    # A verifier that raised has failed its sample already (verifiers.verify), not the eval.
    passes = sum(1 for v in verdicts if v.passed)
    reason = verdicts[0].reason
    if len(answers) > 1:
        reason = f"{passes}/{len(answers)} samples passed; first: {reason}"
    return sum(v.score for v in verdicts) / len(verdicts), 2 * passes >= len(answers), reason


async def run_suite(
    http: aiohttp.ClientSession, base_url: str, model: str, suite: Suite, *,
    verifiers: VerifierPool, sampling: Sampling = Sampling(), prompt_batch: int = 32,
) -> SuiteRun:
    """`model` answers every item of `suite` (through `http`, from `client_session`), judged in
    `verifiers`; results in item order, with a summary. Prompt items go `prompt_batch` to a
    request (their latency is that request's); chat items one to a request.

    Raises EvalRequestFailed, or UnknownVerifier for an item whose verifier is gone.
    """
    known = verifier_names()  # an unknown name stops the run before any request
    for name in {item.verifier for item in suite.items} - set(known):
        raise UnknownVerifier(name, known)
    results: dict[str, ItemResult] = {}

    async def judge(items: Sequence[EvalItem], answered: Answers) -> None:
        texts, finishes, latency = answered
        verdicts = await asyncio.gather(*(
            verifiers.verify(item.verifier, answers, item.reference, item.options)
            for item, answers in zip(items, texts, strict=True)))
        for item, answers, finish, judged in zip(items, texts, finishes, verdicts, strict=True):
            score, passed, reason = _verdict(answers, judged)
            results[item.id] = ItemResult(
                item_id=item.id, answers=tuple(answers), score=score, passed=passed,
                reason=reason, latency_s=latency, finish_reasons=tuple(finish))

    async def ask(items: Sequence[EvalItem]) -> None:
        if items[0].messages is not None:
            answered = await _chat(http, base_url, model, items[0], sampling)
        else:
            answered = await _completions(http, base_url, model, items, sampling)
        await judge(items, answered)

    prompts = [item for item in suite.items if item.prompt is not None]
    requests = [prompts[k:k + prompt_batch] for k in range(0, len(prompts), prompt_batch)]
    requests += [[item] for item in suite.items if item.messages is not None]
    # All requests are in flight at once; the session's connector admits `concurrency` of them.
    await asyncio.gather(*(ask(items) for items in requests))
    ordered = tuple(results[item.id] for item in suite.items)
    return SuiteRun(suite=suite, model=model, results=ordered, summary=summarise(suite, model, ordered))


@contextlib.contextmanager
def _pool(given: VerifierPool | None) -> Iterator[VerifierPool]:
    if given is not None:
        yield given
    else:  # a caller without a pool of its own (a script, a test): one for this call
        with VerifierPool(os.cpu_count() or 1) as pool:
            yield pool


async def evaluate(
    base_url: str, model: str, suites: Sequence[Suite], *, sampling: Sampling = Sampling(),
    concurrency: int = 64, prompt_batch: int = 32, verifiers: VerifierPool | None = None,
) -> list[SuiteRun]:
    """`model` answers every suite, all items in flight together (bounded by `concurrency`),
    judged in `verifiers` (None: a pool for this call)."""
    with _pool(verifiers) as pool:
        async with client_session(concurrency) as http:
            return list(await asyncio.gather(*(
                run_suite(http, base_url, model, suite, verifiers=pool, sampling=sampling,
                          prompt_batch=prompt_batch)
                for suite in suites)))


async def compare(
    base_url: str, *, candidate: str, champion: str, suites: Sequence[Suite],
    sampling: Sampling = Sampling(), concurrency: int = 64, prompt_batch: int = 32,
    verifiers: VerifierPool | None = None,
) -> list[Comparison]:
    """Candidate and champion answer the same items (together, to keep vLLM's batches full),
    judged in `verifiers` (None: a pool for this call)."""
    with _pool(verifiers) as pool:
        async with client_session(concurrency) as http:
            runs = await asyncio.gather(*(
                run_suite(http, base_url, model, suite, verifiers=pool, sampling=sampling,
                          prompt_batch=prompt_batch)
                for model in (candidate, champion) for suite in suites))
    k = len(suites)
    return [Comparison(suite=suite, candidate=runs[i], champion=runs[k + i])
            for i, suite in enumerate(suites)]
