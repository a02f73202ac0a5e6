"""The verifier pool: answers are judged in worker processes of their own, never in the caller's.

A verifier is CPU-bound Python (jsonschema, difflib's `agreement`, a plugin) or waits seconds on
the sandbox (`python_tests`). Run on the gateway's threads it held the GIL the event loop needs,
and on asyncio's default executor it took the threads the gateway's database reads wait for: with
12 sandbox runs in flight, `GET /v1/interactions` and `POST /v1/tasks` took 15 s (measured). Here
judgements run in a bounded `concurrent.futures` process pool; more of them wait in its queue,
in front of nothing else. Measured on 2 cores: `agreement` on two 3,000-character answers (0.5 s
of pure Python) left an asyncio loop 54 of its 5 ms ticks when run on a thread, 113 (as many as
idle) from a worker process. Workers run at nice 10, so the gateway gets the cores first.

Workers start on first use from a fork server (a fork of the gateway would inherit its threads'
locks mid-use) and live as long as the pool. A fresh process does not inherit the sandbox's
policy (`sandbox.configure`): each worker is given the one its pool's maker had when it made it.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from lifelong.evals import sandbox
from lifelong.evals.verifiers import UnknownVerifier, VerifierResult, verify

logger = logging.getLogger(__name__)

NICENESS = 10


def _worker_started(policy: sandbox.SandboxPolicy) -> None:
    os.nice(NICENESS)
    sandbox.configure(policy)


def _verify_all(name: str, answers: list[str], reference: str,
                options: dict[str, Any]) -> list[VerifierResult]:
    try:
        return [verify(name, answer, reference, options) for answer in answers]
    except UnknownVerifier as error:  # its own exception does not pickle (two init arguments)
        return [VerifierResult(score=0.0, passed=False, reason=str(error)) for _ in answers]


class VerifierPool:
    """At most `workers` judgements at once, each in a worker process. Close it (or use `with`)."""

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"a verifier pool needs at least one worker, not {workers}")
        self.workers = workers
        self._policy = sandbox.policy()
        self._executor = self._start()

    def _start(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.workers, mp_context=multiprocessing.get_context("forkserver"),
            initializer=_worker_started, initargs=(self._policy,),
        )

    async def verify(self, name: str, answers: Sequence[str], reference: str,
                     options: Mapping[str, Any]) -> list[VerifierResult]:
        """Each of `answers` judged by the verifier `name`, in order. A verifier that raises, an
        unknown name (check names up front: `verifier_names`), or a worker that dies fails its
        answers rather than the caller."""
        # No name check here: listing the installed plugins reads every distribution's metadata
        # (6.7 ms here), and this runs on the caller's event loop once per item.
        executor = self._executor
        future = executor.submit(_verify_all, name, list(answers), reference, dict(options))
        try:
            return await asyncio.wrap_future(future)
        except BrokenProcessPool as error:
            # A worker died (a plugin crashed it, the OOM killer): the pool starts afresh.
            logger.error("a verifier worker died judging with %s: %s", name, error)
            if self._executor is executor:
                executor.shutdown(wait=False, cancel_futures=True)
                self._executor = self._start()
            reason = f"verifier {name!r}: its worker process died"
            return [VerifierResult(score=0.0, passed=False, reason=reason) for _ in answers]

    def close(self) -> None:
        """Drop judgements not yet started; wait for running ones (the sandbox bounds them)."""
        self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> VerifierPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
