"""The judge: a candidate adapter against the champion, on the same items, through vLLM, then the gate.

One judgement:
1. the candidate (and the champion, if it is an adapter) are verified on disk (checksums, base
   model) and loaded into a vLLM server under private names (`eval-<version>-<checksum>`) that
   the gateway never routes, so a candidate can never answer a user;
2. the suites are assembled: target suites (held-out tasks in the store, per family, and the
   held-out feedback whose right answer is known: corrections, passed outcomes), regression
   suites (the JSONL folder), and the retention suite (frozen, the first time, from what the base
   model answers right: forgetting is measured against where the model began);
3. both answer every item (`lifelong.evals.runner.compare`), the gate decides, and in one
   transaction the per-item results, the decision with its reasons, the eval run's summary and
   the candidate's registry status (`approved` or `rejected`) are written.

A failure anywhere (vLLM gone, a corrupted adapter) marks the eval run failed with the error and
leaves the registry as it was. Everything here is HTTP to vLLM and SQL: no model is loaded.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from lifelong.adapters import verify
from lifelong.adapters.anchors import MAX_NEW_TOKENS as ANCHOR_MAX_TOKENS
from lifelong.adapters.anchors import cached_answers, write_answers
from lifelong.adapters.artifact import base_model_identity
from lifelong.base_model import CORPUS_SKILLS, SKILLS, heldout_items, messages
from lifelong.daemon.settings import Settings
from lifelong.daemon.upstream import BASE_MODEL_NAME, Upstream
from lifelong.evals.gate import Decision, GatePolicy, decide
from lifelong.evals.general import SUITE_NAME as GENERAL_SUITE
from lifelong.evals.general import general_items, general_prompts
from lifelong.evals.records import store_comparisons, store_decision, summary_json
from lifelong.evals.runner import Comparison, Sampling, compare, evaluate
from lifelong.evals.suites import (
    EvalItem,
    Suite,
    feedback_suite,
    freeze_retention_suite,
    load_regression_suites,
    load_suite_file,
    target_suites,
)
from lifelong.evals.verifier_pool import VerifierPool
from lifelong.feedback_store import registry
from lifelong.feedback_store.runs import finish_eval_run, start_eval_run

logger = logging.getLogger(__name__)

EVAL_PREFIX = "eval-"  # vLLM names of adapters under evaluation; never a public model name


class NothingToJudge(ValueError):
    """A candidate cannot be judged as asked (e.g. against itself, or there are no suites)."""


@dataclass(frozen=True)
class Suites:
    """Where the suites come from. `retention_source()`: the items the retention suite is frozen
    from, or None when there are none (a model of your own without a given source)."""

    regression_dir: Path
    retention_file: Path
    retention_source: Callable[[], Sequence[EvalItem] | None]
    # The general-capability suite (lifelong.evals.general), frozen here the first time; None: off.
    general_file: Path | None = None
    general_min_ratio: float = 0.6


@dataclass(frozen=True)
class Judgement:
    eval_run_id: int
    candidate: str
    champion: str  # an adapter version or `base`
    comparisons: list[Comparison]
    decision: Decision
    registry_status: str | None  # the candidate's status after this, if it was changed


class Judge:
    """Judges candidates one at a time on one vLLM server (`upstream`)."""

    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        upstream: Upstream,
        base_model_dir: Path,
        suites: Suites,
        policy: GatePolicy,
        sampling: Sampling,
        verifiers: VerifierPool,
        concurrency: int = 64,
    ) -> None:
        self.verifiers = verifiers  # answers are judged there, off the gateway's loop and threads
        self.sessions = sessions
        self.upstream = upstream
        self.base_model_dir = base_model_dir
        self.suites = suites
        self.policy = policy
        self.sampling = sampling
        self.concurrency = concurrency
        self.lock = asyncio.Lock()

    async def judge(
        self,
        candidate: str,
        *,
        against: str | None = None,
        on_started: Callable[[int], None] | None = None,
    ) -> Judgement:
        """Judge adapter `candidate` against `against` (a version, or `base`; default: the
        champion). Its registry status changes only when judged against the current champion.

        Raises UnknownAdapter, NothingToJudge, AdapterError (corrupted or foreign adapter),
        SuiteError before an eval run is recorded; afterwards whatever failed, the run marked
        failed.
        """
        async with self.lock:
            champion, paths, decides_status = await asyncio.to_thread(
                self._resolve, candidate, against
            )
            suites = await self._suites()
            run_id = await asyncio.to_thread(self._open_run, candidate, champion, suites)
            if on_started is not None:
                on_started(run_id)
            try:
                return await self._run(run_id, candidate, champion, paths, suites, decides_status)
            except BaseException as exc:
                await asyncio.to_thread(self._fail, run_id, exc)
                raise

    def _resolve(
        self, candidate: str, against: str | None
    ) -> tuple[str, dict[str, tuple[str, str]], bool]:
        with self.sessions() as session:
            row = registry.get(session, version=candidate)
            current = registry.champion(session)
            champion = against or (current.version if current else BASE_MODEL_NAME)
            if champion == candidate:
                raise NothingToJudge(f"{candidate} is the champion: nothing to judge it against")
            paths = {candidate: (row.path, row.checksum)}
            if champion != BASE_MODEL_NAME:
                other = registry.get(session, version=champion)
                paths[champion] = (other.path, other.checksum)
            decides = (row.status in ("candidate", "approved", "rejected")
                       and champion == (current.version if current else BASE_MODEL_NAME))
        for path, checksum in paths.values():
            verify(Path(path), self.base_model_dir, checksum=checksum)
        return champion, paths, decides

    async def _suites(self) -> list[Suite]:
        def stored() -> list[Suite]:
            with self.sessions() as session:
                feedback = feedback_suite(session)
                return target_suites(session) + ([feedback] if feedback else [])

        suites = await asyncio.to_thread(stored)
        if self.suites.regression_dir.is_dir():
            suites += await asyncio.to_thread(load_regression_suites, self.suites.regression_dir)
        retention = await self.retention_suite()
        if retention is not None:
            suites.append(retention)
        if self.suites.general_file is not None:
            suites.append(await self.general_suite(self.suites.general_file))
        if not suites:
            raise NothingToJudge(
                "no eval suites: register held-out tasks (POST /v1/tasks), add regression suites "
                f"to {self.suites.regression_dir}, or give evals.retention_source"
            )
        return suites

    async def retention_suite(self) -> Suite | None:
        """The retention suite, frozen from the base model's answers the first time."""
        path = self.suites.retention_file
        if path.exists():
            return await asyncio.to_thread(load_suite_file, path, kind="retention")
        source = await asyncio.to_thread(self.suites.retention_source)
        if not source:
            return None
        probe = Suite(name=path.stem, kind="retention", items=tuple(source))
        (run,) = await evaluate(self.upstream.base_url, BASE_MODEL_NAME, [probe],
                                sampling=self.sampling, concurrency=self.concurrency,
                                verifiers=self.verifiers)
        passed = {result.item_id: result.passed for result in run.results}
        logger.info("retention suite frozen", extra={
            "path": str(path), "items": sum(passed.values()), "of": len(passed)})
        return await asyncio.to_thread(freeze_retention_suite, path, items=source,
                                       base_passed=passed)

    async def prepare(self, anchors_file: Path | None) -> None:
        """What the base model says, asked once while nothing else needs it (at start-up): the
        general suite frozen (if on) and the anchors' answers written (if `anchors_file`), both
        through vLLM, which batches them far faster than the trainer's transformers would.
        A first cycle then neither waits for them nor asks them beside the users' traffic."""
        async with self.lock:
            if self.suites.general_file is not None:
                await self.general_suite(self.suites.general_file)
            if anchors_file is not None:
                await self._anchor_answers(anchors_file)

    async def _anchor_answers(self, path: Path) -> None:
        identity = await asyncio.to_thread(base_model_identity, self.base_model_dir)
        if cached_answers(path, base_sha256=identity["sha256"]) is not None:
            return
        answers = await self._base_answers(general_prompts("anchor"),
                                           replace(self.sampling, max_tokens=ANCHOR_MAX_TOKENS))
        await asyncio.to_thread(write_answers, path, answers, base_sha256=identity["sha256"])
        logger.info("anchor answers written", extra={"path": str(path), "prompts": len(answers)})

    async def general_suite(self, path: Path) -> Suite:
        """The general-capability suite: the shipped prompts the base model answered the first
        time (through vLLM, greedy), kept where a second answer agreed with the first (an
        answer the base model itself does not repeat measures nothing)."""
        if path.exists():
            return await asyncio.to_thread(load_suite_file, path, kind="retention")
        prompts = general_prompts("eval")
        answers = await self._base_answers(prompts, self.sampling)
        items = general_items(answers, min_ratio=self.suites.general_min_ratio)
        probe = Suite(name=GENERAL_SUITE, kind="retention", items=tuple(items))
        (second,) = await evaluate(self.upstream.base_url, BASE_MODEL_NAME, [probe],
                                   sampling=self.sampling, concurrency=self.concurrency,
                                   verifiers=self.verifiers)
        stable = {result.item_id: result.score == 1.0 for result in second.results}
        logger.info("general suite frozen", extra={
            "path": str(path), "items": sum(stable.values()), "of": len(prompts)})
        return await asyncio.to_thread(freeze_retention_suite, path, items=items,
                                       base_passed=stable)

    async def _base_answers(self, prompts: list[str], sampling: Sampling) -> dict[str, str]:
        """prompt -> the base model's answer through vLLM (the runner's batching, no verdict
        needed: each item is graded against a placeholder that is thrown away)."""
        asked = Suite(name="base-answers", kind="retention", items=tuple(
            general_items({prompt: "?" for prompt in prompts})))
        (run,) = await evaluate(self.upstream.base_url, BASE_MODEL_NAME, [asked],
                                sampling=sampling, concurrency=self.concurrency,
                                verifiers=self.verifiers)
        return {prompt: result.answer for prompt, result in zip(prompts, run.results, strict=True)}

    def _open_run(self, candidate: str, champion: str, suites: list[Suite]) -> int:
        config = {
            "suites": {suite.name: {"kind": suite.kind, "items": len(suite.items)}
                       for suite in suites},
            "policy": asdict(self.policy) | {"tolerances": dict(self.policy.tolerances)},
            "sampling": asdict(self.sampling), "upstream": self.upstream.base_url,
        }
        with self.sessions.begin() as session:
            baseline = None if champion == BASE_MODEL_NAME else champion
            return start_eval_run(session, candidate_version=candidate,
                                  baseline_version=baseline, config=config).id

    async def _run(
        self, run_id: int, candidate: str, champion: str, paths: dict[str, tuple[str, str]],
        suites: list[Suite], decides_status: bool,
    ) -> Judgement:
        # The checksum in the name: a version name alone may have meant other weights on this
        # server before (a registry started afresh), and vLLM would answer with those.
        names = {version: f"{EVAL_PREFIX}{version}-{checksum[:12]}"
                 for version, (_, checksum) in paths.items()}
        loaded = await self.upstream.loaded_adapters()
        for version, name in names.items():
            if name not in loaded:
                await self.upstream.load_adapter(name=name, path=paths[version][0])
        # Never unloaded: in vLLM 0.32, answers after an unload were measured wrong (the base
        # model scored 25% on a skill it lacks, as if a stale adapter still applied), and an
        # unload frees nothing anyway. A loaded name stays until the server restarts.
        logger.info("eval run started", extra={
            "eval_run_id": run_id, "candidate": candidate, "champion": champion,
            "suites": {suite.name: len(suite.items) for suite in suites}})
        comparisons = await compare(
            self.upstream.base_url, candidate=names[candidate],
            champion=names.get(champion, BASE_MODEL_NAME), suites=suites,
            sampling=self.sampling, concurrency=self.concurrency, verifiers=self.verifiers,
        )
        decision = decide(comparisons, self.policy)
        status = await asyncio.to_thread(
            self._record, run_id, candidate, champion, comparisons, decision, decides_status
        )
        logger.info("gate decided", extra={"eval_run_id": run_id, "candidate": candidate,
                                           "status": decision.status, "reasons": decision.reasons})
        return Judgement(run_id, candidate, champion, list(comparisons), decision, status)

    def _record(
        self, run_id: int, candidate: str, champion: str, comparisons: Sequence[Comparison],
        decision: Decision, decides_status: bool,
    ) -> str | None:
        with self.sessions.begin() as session:
            store_comparisons(session, eval_run_id=run_id, comparisons=comparisons)
            store_decision(session, eval_run_id=run_id, candidate_version=candidate,
                           champion_version=None if champion == BASE_MODEL_NAME else champion,
                           decision=decision)
            finish_eval_run(session, run_id=run_id, status="succeeded",
                            summary=summary_json(comparisons, decision))
            if not decides_status:
                return None
            if decision.status == "approved":
                return registry.approve(session, version=candidate).status
            if decision.status == "rejected":
                return registry.reject(session, version=candidate).status
            # Not enough evidence: neither good nor bad yet; it waits for more held-out data.
            return registry.get(session, version=candidate).status

    def _fail(self, run_id: int, exc: BaseException) -> None:
        error = f"{type(exc).__name__}: {exc}"
        logger.error("eval run %s failed: %s", run_id, error)
        try:
            with self.sessions.begin() as session:
                finish_eval_run(session, run_id=run_id, status="failed", error=error)
        except Exception:
            logger.exception("could not mark eval run %s failed", run_id)


def build_judge(settings: Settings, *, sessions: sessionmaker[Session],
                upstream: Upstream, verifiers: VerifierPool) -> Judge:
    """The judge the settings describe, answering through `upstream`, judging in `verifiers`."""
    g = settings.evals.gate
    tolerances = {GENERAL_SUITE: settings.evals.general_tolerance} | dict(g.tolerances)
    policy = g.policy(
        tolerances=tolerances,
        floors={GENERAL_SUITE: settings.evals.general_floor} if settings.evals.general_suite else {},
    )
    return Judge(
        sessions=sessions, upstream=upstream,
        base_model_dir=settings.base_model_path,
        suites=Suites(settings.regression_dir, settings.retention_file,
                      lambda: retention_source(settings),
                      general_file=settings.general_file if settings.evals.general_suite else None,
                      general_min_ratio=settings.evals.general_min_ratio),
        policy=policy,
        sampling=Sampling(max_tokens=settings.evals.max_tokens, n=settings.evals.samples,
                          temperature=settings.evals.temperature),
        concurrency=settings.evals.concurrency, verifiers=verifiers,
    )


def retention_source(settings: Settings) -> Sequence[EvalItem] | None:
    """What the retention suite is frozen from: the given file; else, for the embedded tiny
    model, held-out questions of the skills it was built on; else nothing (a chat model is
    guarded by the general suite)."""
    if settings.evals.retention_source is not None:
        return load_suite_file(settings.evals.retention_source, kind="retention").items
    if not settings.base_model.embedded_tiny:
        return None
    return [
        EvalItem(id=f"{name}-{n}", messages=messages(question), reference=answer,
                 verifier="exact_match", tags=(f"family:{name}",))
        for name in CORPUS_SKILLS
        for n, (question, answer) in enumerate(
            heldout_items(SKILLS[name], n=settings.evals.retention_items, seed=0))
    ]


def describe(judgement: Judgement) -> str:
    """The judgement as a table for a terminal: per suite, both sides, the test, the verdict."""
    checks = {check.suite: check for check in judgement.decision.suites}
    header = ("SUITE", "KIND", "N", judgement.champion.upper()[:12], judgement.candidate.upper(),
              "DIFF", "P", "DETECTABLE", "VERDICT")
    rows: list[tuple[str, ...]] = [header]
    for comparison in judgement.comparisons:
        name = comparison.suite.name
        check = checks[name]
        p = check.p_improvement_adjusted if check.p_improvement_adjusted is not None \
            else check.p_regression
        rows.append((
            name, comparison.suite.kind, str(check.n), _interval(comparison.champion.summary),
            _interval(comparison.candidate.summary), f"{check.difference:+.3f}", f"{p:.3g}",
            f"{check.min_detectable_difference:.3f}", check.outcome,
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    lines.append(f"\ndecision: {judgement.decision.status} (eval run {judgement.eval_run_id})")
    lines += [f"  - {reason}" for reason in judgement.decision.reasons]
    if judgement.registry_status:
        lines.append(f"{judgement.candidate} is now {judgement.registry_status}")
    return "\n".join(lines)


def _interval(summary: Any) -> str:
    return f"{summary.mean:.3f} [{summary.ci_low:.2f},{summary.ci_high:.2f}]"
