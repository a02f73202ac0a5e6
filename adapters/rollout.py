"""Rollouts: K sampled answers per practice task from a policy vLLM serves, each graded.

Sampling goes through vLLM's OpenAI HTTP API like every other request (`n=K`, temperature > 0,
one request per task, at most `concurrency` in flight), so the policy is whatever name vLLM
serves: the base model, or a LoRA adapter loaded at runtime. Each answer is graded by its task's
verifier; its score is the reward.

No per-request `seed` is sent: vLLM 0.32's CPU build killed its engine ("CPU Generator does not
use offset") when seeded requests were split across scheduler steps under load, and the daemon's
vLLM is the one serving users. Rollouts are therefore not reproducible bit for bit; what is
seeded is the choice of tasks and everything on the training side.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import aiohttp

from lifelong.adapters.pause_file import PauseFile
from lifelong.evals.verifiers import VerifierResult, get_verifier
from lifelong.evals.vllm_client import (
    CHAT,
    COMPLETIONS,
    AdapterLoadRefused,
    client_session,
    load_adapter,
    post_json,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PracticeTask:
    """A task to practise on: the store's row, as plain values."""

    id: str
    messages: list[dict[str, Any]] | None
    prompt: str | None
    reference: str
    verifier: str
    options: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Sample:
    text: str
    finish_reason: str | None
    reward: float
    passed: bool


@dataclass(frozen=True, slots=True)
class Group:
    """One task's K samples from one policy."""

    task: PracticeTask
    policy: str
    samples: tuple[Sample, ...]


async def _sample(http: aiohttp.ClientSession, base_url: str, policy: str, task: PracticeTask,
                  *, k: int, temperature: float, max_tokens: int,
                  slots: asyncio.Semaphore, pause: PauseFile | None) -> Group:
    body: dict[str, Any] = {"model": policy, "n": k, "temperature": temperature,
                            "max_tokens": max_tokens}
    if task.messages is not None:
        url = f"{base_url}{CHAT}"
        body["messages"] = task.messages
    else:
        url = f"{base_url}{COMPLETIONS}"
        body["prompt"] = task.prompt
    async with slots:
        if pause is not None:
            await pause.wait_async()  # checked with a slot in hand: nothing queued behind it
        # Not retried: a failed round fails the run (the trainer's cycle tries again later).
        payload = await post_json(http, url, body, retries=0)
    choices = sorted(payload["choices"], key=lambda c: c["index"])
    texts = [(c["message"]["content"] or "") if task.messages is not None else c["text"]
             for c in choices]
    finishes = [choice.get("finish_reason") for choice in choices]
    # Verifiers may take seconds (python_tests runs a sandbox): off the event loop.
    samples = await asyncio.to_thread(_grade, task, texts, finishes)
    return Group(task=task, policy=policy, samples=tuple(samples))


def _grade(task: PracticeTask, texts: list[str], finishes: list[str | None]) -> list[Sample]:
    verifier = get_verifier(task.verifier)
    samples = []
    for text, finish in zip(texts, finishes, strict=True):
        try:
            verdict = verifier(text, task.reference, task.options)
        except Exception as error:  # a plugin's bug scores the sample 0, not the run
            logger.exception("verifier %s raised on task %s", task.verifier, task.id)
            verdict = VerifierResult(score=0.0, passed=False, reason=repr(error))
        samples.append(Sample(text, finish, verdict.score, verdict.passed))
    return samples


async def sample_groups(
    base_url: str, policy: str, tasks: list[PracticeTask], *, k: int, temperature: float,
    max_tokens: int, concurrency: int = 8, pause: PauseFile | None = None,
) -> list[Group]:
    """`k` graded samples of each task from `policy`, in task order, at most `concurrency`
    requests in flight; none is sent while `pause` says the daemon's users come first.

    Raises ValueError for temperature 0 (k copies of one answer), EvalRequestFailed when vLLM
    refuses a request or cannot be reached, UnknownVerifier for a task whose verifier is not installed.
    """
    if temperature <= 0:
        raise ValueError("rollouts need a temperature above 0: greedy gives one answer k times")
    slots = asyncio.Semaphore(concurrency)
    async with client_session(concurrency) as http:
        return list(await asyncio.gather(*(
            _sample(http, base_url, policy, task, k=k, temperature=temperature,
                    max_tokens=max_tokens, slots=slots, pause=pause) for task in tasks)))


__all__ = ["AdapterLoadRefused", "Group", "PracticeTask", "Sample", "load_adapter",
           "sample_groups"]
