"""The gateway's Prometheus metrics, all defined here (exported by `gateway/exposition.py`).

Two parts, both registered in one `CollectorRegistry` per app (never the global one, so a test
process can build several apps):

- `ServingMetrics`: what only the serving path sees, counted as it happens: requests, latency,
  time to first token, tokens, refused feedback; and, read at scrape time from the objects that
  hold them, upstream (vLLM) readiness and restarts and the interaction log's queue.
- `StateCollector`: what the store knows (training runs, eval scores, gate decisions,
  promotions, canaries and watches, feedback and outcomes per version, the champion), read on
  scrape as plain figures (`feedback_store/stats.py`: the SQL is there) and cached for
  `cache_s` seconds so a scrape costs a few small queries at most every `cache_s`. Its
  counters are counts of store rows, so they are exact across daemon restarts.

Adapter versions are label values, so they are bounded (`VersionLabels`): `base`, the champion,
the 3 previous champions, the 3 newest adapters and the open canary's (or watch's) versions keep
their names; every other version is `other`. When a version leaves that set, the serving series
labelled with it are removed and its later traffic counts as `other`.

Suite names are label values too, and target suites are named by callers' `family:` tags
(`SuiteLabels`): every suite name keeps only `[A-Za-z0-9_.:+-]` (others become `_`) and at most
64 characters; the 20 target suites with the most items keep their names, the rest are
`target:other`, whose figures are the mean of theirs.

One module past ~400 lines on purpose: every metric's name, labels and help text is defined here
and nowhere else, so a dashboard author reads one file.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session, sessionmaker

from lifelong.adapters.artifact import served_name
from lifelong.daemon.catalog import ModelCatalog
from lifelong.daemon.upstream import Upstream
from lifelong.feedback_store import registry, replicas
from lifelong.feedback_store.interaction_log import InteractionLog
from lifelong.feedback_store.models import CANARY_DECISIONS, CANARY_KINDS
from lifelong.feedback_store.replicas import ReplicaView
from lifelong.feedback_store.stats import (
    BASE,
    CanaryStats,
    DecisionStats,
    FeedbackTotals,
    PromotionStats,
    RolloutTotals,
    TrainingStats,
    TrialStats,
    read_stats,
    recent_versions,
)

logger = logging.getLogger(__name__)

OTHER = "other"
PREVIOUS_CHAMPIONS_KEPT = 3
NEWEST_ADAPTERS_KEPT = 3
RECENT_DECISIONS_READ = 50  # enough to give every kept version its latest eval scores
TARGET_SUITES_KEPT = 20
OTHER_TARGET = "target:other"
MAX_LABEL_CHARS = 64
_NOT_IN_LABELS = re.compile(r"[^A-Za-z0-9_.:+-]")

# Latency of a small model on a CPU up to a large one on a GPU under load.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class VersionLabels:
    """Adapter version -> a bounded label value. `kept` is replaced as the registry changes;
    the live champion always keeps its name (a just-promoted version before the next refresh)."""

    def __init__(self, catalog: ModelCatalog | None = None) -> None:
        self._catalog = catalog
        self.kept: frozenset[str] = frozenset({BASE})

    def __call__(self, version: str | None) -> str:
        if version is None or version == BASE:
            return BASE
        if version in self.kept or (self._catalog and version == self._catalog.champion):
            return version
        return OTHER


def label_value(text: str) -> str:
    """`text` as a bounded label value: allowed characters only, at most MAX_LABEL_CHARS."""
    clean = _NOT_IN_LABELS.sub("_", text)
    return clean if len(clean) <= MAX_LABEL_CHARS else clean[:MAX_LABEL_CHARS - 1] + "~"


class SuiteLabels:
    """Suite name -> a bounded label value. Target suites are named by `family:` tags that API
    callers chose: only the TARGET_SUITES_KEPT largest of `suites` keep their names."""

    def __init__(self, suites: Iterable[dict[str, Any]]) -> None:
        sizes: dict[str, int] = {}
        for suite in suites:
            if suite["kind"] == "target":
                sizes[suite["suite"]] = max(sizes.get(suite["suite"], 0), int(suite.get("n") or 0))
        largest = sorted(sizes, key=lambda name: (-sizes[name], name))
        self.kept = frozenset(largest[:TARGET_SUITES_KEPT])

    def __call__(self, name: str, kind: str) -> str:
        if kind == "target" and name not in self.kept:
            return OTHER_TARGET
        return label_value(name)


def _means(values: dict[tuple[str, ...], list[float]]) -> dict[tuple[str, ...], float]:
    # Suites merged into one label (`target:other`, or names equal once cleaned) report their mean.
    return {labels: sum(seen) / len(seen) for labels, seen in sorted(values.items())}


def kept_versions(session: Session, *, trial: TrialStats | None = None) -> frozenset[str]:
    """base, the champion, the 3 previous champions, the 3 newest adapters, and the versions of
    the open `trial` (a canary's candidate may be older than the newest adapters: its traffic
    is what the canary row is read for)."""
    recent = recent_versions(session, previous_champions=PREVIOUS_CHAMPIONS_KEPT,
                             newest=NEWEST_ADAPTERS_KEPT)
    named = {recent.champion, *recent.previous_champions, *recent.newest}
    if trial is not None:
        named |= {trial.version, trial.baseline_version}
    return frozenset({BASE} | {v for v in named if v})


class Watched(Protocol):
    """What the supervisor and the health watch expose about one vLLM server."""

    restarts: int
    upstream: Upstream


class Yielding(Protocol):
    """What practice exposes about making way for users (`daemon.practice.Practice`)."""

    paused: bool
    pauses: int


class ServingMetrics:
    """Counters and histograms of the serving path, plus upstream, log and practice state read
    on scrape."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        versions: VersionLabels,
        watchers: Sequence[Watched],
        interaction_log: InteractionLog,
        practice: Yielding | None = None,
    ) -> None:
        self.versions = versions
        self.watchers = watchers
        self.interaction_log = interaction_log
        self.practice = practice
        self.requests = Counter(
            "lifelong_requests", "Completion requests answered, by endpoint, requested model "
            "(the public alias, `pinned` for a version or base asked by name, `unknown`), "
            "adapter version and HTTP status.",
            ["endpoint", "model", "version", "status"], registry=registry,
        )
        self.duration = Histogram(
            "lifelong_request_duration_seconds", "Completion request time in the gateway, "
            "until the last byte of the answer (streams included).",
            ["endpoint", "version"], buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.ttft = Histogram(
            "lifelong_time_to_first_token_seconds", "Streamed completions: time until the first "
            "chunk with content.", ["endpoint", "version"], buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.prompt_tokens = Counter(
            "lifelong_prompt_tokens", "Prompt tokens of answered requests (vLLM's usage).",
            ["version"], registry=registry,
        )
        self.completion_tokens = Counter(
            "lifelong_completion_tokens", "Completion tokens of answered requests (vLLM's usage).",
            ["version"], registry=registry,
        )
        self.feedback = Counter(
            "lifelong_feedback_received", "Feedback items received by the API, by kind and "
            "whether they were committed or refused (a refused batch refuses all its items).",
            ["kind", "result"], registry=registry,
        )
        # label tuples used per version, so a version leaving the kept set can be forgotten
        self._series: dict[str, set[tuple[Any, tuple[str, ...]]]] = defaultdict(set)
        self._lock = threading.Lock()
        registry.register(_LiveServing(self))

    def _labels(self, metric: Any, version: str, *values: str) -> Any:
        with self._lock:
            self._series[version].add((metric, values))
        return metric.labels(*values)

    def request(self, *, endpoint: str, model: str, version: str | None, status: int,
                seconds: float | None = None) -> None:
        """One answered (or refused) completion request; `seconds` when it was answered."""
        label = self.versions(version) if version else "none"
        self._labels(self.requests, label, endpoint, model, label, str(status)).inc()
        if seconds is not None:
            self._labels(self.duration, label, endpoint, label).observe(seconds)

    def first_token(self, *, endpoint: str, version: str, seconds: float) -> None:
        label = self.versions(version)
        self._labels(self.ttft, label, endpoint, label).observe(seconds)

    def tokens(self, *, version: str, usage: dict[str, Any] | None) -> None:
        if not usage:
            return
        label = self.versions(version)
        self._labels(self.prompt_tokens, label, label).inc(usage.get("prompt_tokens") or 0)
        self._labels(self.completion_tokens, label, label).inc(usage.get("completion_tokens") or 0)

    def feedback_received(self, kinds: Iterable[str], *, committed: bool) -> None:
        result = "committed" if committed else "refused"
        for kind in kinds:
            self.feedback.labels(kind, result).inc()

    def forget_versions(self, kept: frozenset[str]) -> None:
        """Remove the series of versions no longer kept (their later traffic is `other`)."""
        with self._lock:
            dropped = [v for v in self._series if v not in kept and v not in (OTHER, "none")]
            series = [entry for v in dropped for entry in self._series.pop(v)]
        for metric, values in series:
            with contextlib.suppress(KeyError):  # removed already
                metric.remove(*values)


class _LiveServing(Collector):
    """Upstream and interaction-log state, read from the live objects at each scrape."""

    def __init__(self, serving: ServingMetrics) -> None:
        self.serving = serving

    def collect(self) -> Iterator[Metric]:
        ready = GaugeMetricFamily(
            "lifelong_upstream_ready", "1 while the vLLM server is healthy with the champion "
            "loaded and takes traffic.", labels=["upstream"])
        restarts = CounterMetricFamily(
            "lifelong_upstream_restarts", "Restarts of the vLLM child by the supervisor since "
            "the daemon started (0 for servers managed elsewhere).", labels=["upstream"])
        replacements = CounterMetricFamily(
            "lifelong_upstream_replacements", "Planned replacements of the vLLM child (it had "
            "registered vllm.replace_after_adapters adapters) since the daemon started.",
            labels=["upstream"])
        registered = GaugeMetricFamily(
            "lifelong_upstream_adapters_registered", "Adapters the vLLM server has registered "
            "since it started (vLLM frees none: its memory grows with this).", labels=["upstream"])
        for watcher in self.serving.watchers:
            # The daemon's own server (the only one with replacements) moves between two ports
            # when replaced: one label for it.
            local = getattr(watcher, "replacements", None) is not None
            url = "local" if local else watcher.upstream.base_url
            ready.add_metric([url], 1.0 if watcher.upstream.ready else 0.0)
            restarts.add_metric([url], float(watcher.restarts))
            replacements.add_metric([url], float(getattr(watcher, "replacements", 0)))
            registered.add_metric([url], float(watcher.upstream.adapters_registered))
        stats = self.serving.interaction_log.stats()
        yield ready
        yield restarts
        yield replacements
        yield registered
        yield GaugeMetricFamily(
            "lifelong_interaction_log_queue_depth",
            "Interactions waiting in memory to be written to the store.", value=stats.queued)
        yield CounterMetricFamily(
            "lifelong_interaction_log_dropped",
            "Interactions never logged: dropped (queue full), refused by the database, or lost "
            "at shutdown.", value=stats.dropped + stats.rejected + stats.lost)
        yield CounterMetricFamily(
            "lifelong_interaction_log_written", "Interactions committed to the store.",
            value=stats.written)
        practice = self.serving.practice
        if practice is not None:
            yield GaugeMetricFamily(
                "lifelong_practice_paused", "1 while a GRPO run waits for users to be quiet.",
                value=int(practice.paused))
            yield CounterMetricFamily(
                "lifelong_practice_pauses", "Times a GRPO run was asked to make way for user "
                "requests since the daemon started.", value=practice.pauses)


def _suites(details: dict[str, Any]) -> list[dict[str, Any]]:
    return list(details.get("suites") or [])


class StateCollector(Collector):
    """The learning side, from the store (cached `cache_s`) and the trainer, on each scrape.

    `refresh()` also updates the kept versions (and tells `on_versions`), so call it once at
    start-up: the serving path labels by them from the first request.
    """

    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        versions: VersionLabels,
        canary_margin: float,
        running_run: Callable[[], int | None] = lambda: None,
        on_versions: Callable[[frozenset[str]], None] = lambda kept: None,
        cache_s: float = 5.0,
        wait_s: float = 5.0,
        replica_stale_s: float = 15.0,
    ) -> None:
        self.sessions = sessions
        self.replica_stale_s = replica_stale_s  # a replica silent this long is down
        self.wait_s = wait_s
        self.versions = versions
        self.canary_margin = canary_margin  # promotion.canary.margin: the rows do not hold it
        self.running_run = running_run  # () -> the id of the training run going on, or None
        self.on_versions = on_versions
        self.cache_s = cache_s
        self._lock = threading.Lock()
        self._cached: list[Metric] = []
        self._cached_at = float("-inf")
        self._feedback = FeedbackTotals()
        self._rollouts = RolloutTotals()

    def describe(self) -> Iterable[Metric]:
        return []  # collected on demand only: no store query when registered

    def collect(self) -> Iterator[Metric]:
        # A refresh stuck on a database that stopped answering (a query on an open connection
        # has no client-side timeout) must not hold every later scrape: after `wait_s` they
        # serve the last figures.
        if not self._lock.acquire(timeout=self.wait_s):
            logger.warning("metrics: the store is still being read; serving the last figures")
            yield from self._cached
            return
        try:
            if time.monotonic() - self._cached_at >= self.cache_s:
                try:
                    self._cached = self.refresh()
                except Exception:  # a store hiccup must not fail the scrape of everything else
                    logger.exception("metrics: reading the store failed; serving the last figures")
                self._cached_at = time.monotonic()
            cached = self._cached
        finally:
            self._lock.release()
        yield from cached

    def refresh(self) -> list[Metric]:
        """Read the store now; the metric families it yields until the next refresh."""
        with self.sessions() as session:
            stats = read_stats(session, running_run=self.running_run(),
                               recent_decisions=RECENT_DECISIONS_READ)
            kept = kept_versions(session, trial=stats.canaries.open)
            self.versions.kept = kept
            self.on_versions(kept)
            self._feedback.advance(session)
            self._rollouts.advance(session)
            peers = replicas.listed(session)
            champion = registry.champion(session)
        return [
            *_replicas(peers, champion and (champion.version, served_name(
                champion.version, champion.checksum)), self.replica_stale_s),
            *_training(stats.training),
            *_practice(self._rollouts, stats.training.latest_grpo_rounds),
            *_decisions(stats.decisions_by_status, stats.recent_decisions, self.versions),
            *_promotions(stats.promotions),
            *_canaries(stats.canaries, margin=self.canary_margin, versions=self.versions),
            *self._feedback_metrics(),
        ]

    def _feedback_metrics(self) -> Iterator[Metric]:
        totals = self._feedback
        items: dict[tuple[str, str], int] = defaultdict(int)
        for (kind, version), count in totals.items.items():
            items[(kind, self.versions(version))] += count
        family = CounterMetricFamily(
            "lifelong_feedback_items", "Feedback items stored, by kind and the adapter version "
            "that gave the answer.", labels=["kind", "version"])
        for labels, count in sorted(items.items()):
            family.add_metric(list(labels), count)
        yield family
        outcomes = CounterMetricFamily(
            "lifelong_outcomes", "Outcome feedback with a pass/fail verdict, by version and "
            "result (passed, failed).", labels=["version", "result"])
        reward = SummaryMetricFamily(
            "lifelong_outcome_reward", "Rewards of outcome feedback, by version (mean reward "
            "= rate of _sum / rate of _count).", labels=["version"])
        for version, count in _by_label(totals.passed, self.versions).items():
            outcomes.add_metric([version, "passed"], count)
        for version, count in _by_label(totals.failed, self.versions).items():
            outcomes.add_metric([version, "failed"], count)
        sums = _by_label(totals.reward_sum, self.versions)
        for version, count in _by_label(totals.reward_count, self.versions).items():
            reward.add_metric([version], count_value=count, sum_value=sums.get(version, 0.0))
        yield outcomes
        yield reward


def _replicas(peers: list[ReplicaView], champion: tuple[str, str] | None,
              stale_s: float) -> Iterator[Metric]:
    """Every gateway replica as the database has it (its own heartbeats): alive, leading,
    and whether each vLLM server it talks to serves the registry's champion. Every replica
    exports the same figures: aggregate with max by (replica[, server])."""
    up = GaugeMetricFamily("lifelong_replica_up", "1 while a gateway replica writes its "
                           "heartbeat, 0 once it has been silent for 3 heartbeats.",
                           labels=["replica"])
    leader = GaugeMetricFamily("lifelong_replica_leader", "1 for the replica that runs the "
                               "learning loop (by its last heartbeat).", labels=["replica"])
    agrees = GaugeMetricFamily(
        "lifelong_replica_serves_champion", "1 while the replica routes the alias to the "
        "registry's champion and every vLLM server it talks to is ready and serves it; 0 for "
        "a replica that disagrees (or is down).", labels=["replica"])
    servers = GaugeMetricFamily(
        "lifelong_server_serves_champion", "1 while a vLLM server, as a replica sees it, is "
        "ready and lists the registry's champion (any server, while the base model serves).",
        labels=["replica", "server"])
    for peer in peers:
        alive = peer.alive(stale_s)
        up.add_metric([peer.replica_id], float(alive))
        leader.add_metric([peer.replica_id], float(alive and peer.leader))
        fine = []
        for server in peer.servers:  # champion: (version, the name servers list it under)
            ok = bool(server.get("ready")) and (
                champion is None or champion[1] in server.get("adapters", ()))
            fine.append(ok)
            servers.add_metric([peer.replica_id, str(server.get("url"))], float(alive and ok))
        version = champion[0] if champion else None
        agrees.add_metric([peer.replica_id],
                          float(alive and peer.champion == version and all(fine)))
    yield from (up, leader, agrees, servers)


def _training(stats: TrainingStats) -> Iterator[Metric]:
    runs = CounterMetricFamily(
        "lifelong_training_runs", "Training runs that ended, by result "
        "(succeeded, failed, skipped, interrupted).", labels=["result"])
    for result in ("succeeded", "failed", "skipped", "interrupted"):
        runs.add_metric([result], stats.runs_by_status.get(result, 0))
    yield runs
    if stats.last_succeeded_seconds is not None:
        yield GaugeMetricFamily(
            "lifelong_training_last_run_duration_seconds",
            "Wall time of the last successful training run.", value=stats.last_succeeded_seconds)
        loss = _final_loss(stats.last_succeeded_metrics or {})
        if loss is not None:
            yield GaugeMetricFamily(
                "lifelong_training_last_run_loss", "Final loss of the last successful "
                "training run (its last stage's; SFT and DPO losses are on other scales).",
                value=loss)
    active = stats.running_run is not None
    step = GaugeMetricFamily(
        "lifelong_training_current_run_step",
        "Optimizer steps done by the training run going on (0 when none is).", value=0)
    history = (stats.current_metrics or {}).get("history") or {}
    steps, losses = history.get("step") or [], history.get("loss") or []
    if steps:
        step = GaugeMetricFamily(step.name, step.documentation, value=steps[-1])
    yield GaugeMetricFamily(
        "lifelong_training_run_active", "1 while a training run goes on.", value=int(active))
    yield step
    if losses:
        yield GaugeMetricFamily(
            "lifelong_training_current_run_loss",
            "Latest recorded loss of the training run going on.", value=losses[-1])


def _practice(totals: RolloutTotals, rounds: list[dict[str, Any]]) -> Iterator[Metric]:
    rollouts = CounterMetricFamily(
        "lifelong_rollouts", "GRPO samples graded by their task's verifier, by result "
        "(passed, failed).", labels=["result"])
    rollouts.add_metric(["passed"], totals.passed)
    rollouts.add_metric(["failed"], totals.failed)
    yield rollouts
    yield CounterMetricFamily(
        "lifelong_rollout_reward", "Sum of the rollouts' rewards (mean reward = rate of "
        "this / rate of lifelong_rollouts_total).", value=totals.reward_sum)
    if rounds:
        pass_rate = GaugeMetricFamily(
            "lifelong_practice_round_pass_rate", "Share of the rollouts the verifier passed, "
            "per round of the latest GRPO run (round 0 samples the starting weights).",
            labels=["round"])
        for row in rounds:
            pass_rate.add_metric([str(row["round"])], row["pass_rate"])
        yield pass_rate


def _decisions(by_status: dict[str, int], recent: list[DecisionStats],
               versions: VersionLabels) -> Iterator[Metric]:
    decisions = CounterMetricFamily(
        "lifelong_gate_decisions",
        "Gate decisions, by result (approved, rejected, not_enough_evidence).",
        labels=["result"])
    for result in ("approved", "rejected", "not_enough_evidence"):
        decisions.add_metric([result], by_status.get(result, 0))
    yield decisions

    suite_label = SuiteLabels(s for decision in recent for s in _suites(decision.details))
    scores: dict[tuple[str, str, str], float] = {}
    for decision in reversed(recent):  # oldest first: the latest score of each wins
        for suite in _suites(decision.details):
            for version, mean in ((decision.candidate_version, suite["candidate_mean"]),
                                  (decision.champion_version, suite["champion_mean"])):
                scores[(versions(version), suite["suite"], suite["kind"])] = mean
    merged: dict[tuple[str, ...], list[float]] = defaultdict(list)
    for (version, name, kind), mean in scores.items():
        merged[(version, suite_label(name, kind), kind)].append(mean)
    eval_score = GaugeMetricFamily(
        "lifelong_eval_score", "Mean score (pass rate for pass/fail suites) of a version on "
        "an eval suite, from the latest gate decision that measured it.",
        labels=["version", "suite", "kind"])
    for labels, mean in _means(merged).items():
        eval_score.add_metric(list(labels), mean)
    yield eval_score
    if recent:
        yield from _last_decision(recent[0], suite_label)


def _promotions(stats: PromotionStats) -> Iterator[Metric]:
    yield CounterMetricFamily(
        "lifelong_adapter_promotions", "Promotions of an adapter to champion "
        "(forced ones included).", value=stats.promoted)
    yield CounterMetricFamily(
        "lifelong_adapter_forced_promotions",
        "Promotions that skipped the gate (`promote --force`).", value=stats.forced)
    yield CounterMetricFamily(
        "lifelong_adapter_rollbacks", "Rollbacks to a previous champion or the base model.",
        value=stats.rolled_back)
    info = InfoMetricFamily(
        "lifelong_champion", "The version the public alias serves, and its parent.",
        labels=[])
    champion = stats.champion
    info.add_metric([], {"version": champion or BASE,
                         "parent": (stats.champion_parent or BASE) if champion else ""})
    yield info


def _canaries(stats: CanaryStats, *, margin: float, versions: VersionLabels
              ) -> Iterator[Metric]:
    """Canaries and watches: how many began and how each ended (counted from their rows, so
    exact across restarts), and the open one as of the leader's latest look at it."""
    trials = CounterMetricFamily(
        "lifelong_canary_trials", "Live trials opened, by kind: canary (an approved candidate "
        "on a share of the alias's users against the champion) or watch (a new champion "
        "against its predecessor's last window).", labels=["kind"])
    decisions = CounterMetricFamily(
        "lifelong_canary_decisions", "Live trials ended, by kind and decision: promote, "
        "rollback (always the trial's own, automatic), timeout (champion kept), kept (a watch "
        "saw no drop), aborted (stopped, superseded, or the candidate could not be served).",
        labels=["kind", "decision"])
    opened = GaugeMetricFamily("lifelong_canary_open", "1 while a trial of this kind is open "
                               "(at most one trial is).", labels=["kind"])
    trial = stats.open
    for kind in CANARY_KINDS:  # every series from the start: increase() sees the first one
        trials.add_metric([kind], stats.started.get(kind, 0))
        opened.add_metric([kind], float(trial is not None and trial.kind == kind))
        for decision in CANARY_DECISIONS:
            decisions.add_metric([kind, decision], stats.ended.get((kind, decision), 0))
    yield from (trials, decisions, opened)
    yield GaugeMetricFamily(
        "lifelong_canary_share", "Share of the alias's users sent to the open canary's "
        "candidate (0 while no canary is open: a watch splits nobody).",
        value=trial.share if trial is not None and trial.kind == "canary" else 0.0)
    yield GaugeMetricFamily(
        "lifelong_canary_margin", "Non-inferiority margin on the pass rate "
        "(promotion.canary.margin): a canary may promote once the pass-rate difference's "
        "lower bound is above -margin; it rolls back once the upper bound is below 0.",
        value=margin)
    if trial is None:
        return
    started = GaugeMetricFamily(
        "lifelong_canary_started_timestamp_seconds", "When the open trial began, naming the "
        "version on trial and the one it is compared with (a watch: the new champion and its "
        "predecessor).", labels=["kind", "version", "baseline"])
    started.add_metric([trial.kind, versions(trial.version), versions(trial.baseline_version)],
                       trial.started_at.timestamp())
    yield started
    yield from _arms(trial)


def _arms(trial: TrialStats) -> Iterator[Metric]:
    """The open trial's live figures per side and its pass-rate interval, from the statistics
    the leader wrote at its latest look (none before the first)."""
    figures = trial.stats
    # A watch's sides are the new champion and its predecessor: the same two roles.
    sides = {"candidate": figures.get("candidate" if trial.kind == "canary" else "champion"),
             "baseline": figures.get("baseline" if trial.kind == "canary" else "predecessor")}
    where = ("Open trial, per side (candidate: the version on trial; baseline: the champion, "
             "for a watch its predecessor's last window), since it began, at the leader's "
             "latest look: ")
    families = {
        "outcomes": GaugeMetricFamily("lifelong_canary_outcomes", where + "users' pass/fail "
                                      "outcome verdicts (each interaction's latest).",
                                      labels=["arm"]),
        "pass_rate": GaugeMetricFamily("lifelong_canary_pass_rate", where + "share of those "
                                       "verdicts that passed.", labels=["arm"]),
        "requests": GaugeMetricFamily("lifelong_canary_requests", where + "alias requests "
                                      "routed to it (0 for a watch, which does not count "
                                      "them).", labels=["arm"]),
        "errors": GaugeMetricFamily("lifelong_canary_errors", where + "of those, failed by "
                                    "the model server.", labels=["arm"]),
    }
    for arm, summary in sides.items():
        for key, family in families.items():
            if summary and summary.get(key) is not None:
                family.add_metric([arm], float(summary[key]))
    yield from families.values()
    difference = GaugeMetricFamily(
        "lifelong_canary_pass_rate_difference", "Open trial: candidate minus baseline pass "
        "rate, its estimate and always-valid confidence bounds (valid however often looked "
        "at); absent until each side has promotion.canary.min_outcomes.", labels=["bound"])
    interval = figures.get("pass_rate")
    if interval:
        for bound in ("estimate", "lower", "upper"):
            difference.add_metric([bound], float(interval[bound]))
    yield difference


def _by_label(values: dict[str, Any], versions: VersionLabels) -> dict[str, Any]:
    merged: dict[str, Any] = defaultdict(int)
    for version, value in values.items():
        merged[versions(version)] += value
    return dict(sorted(merged.items()))


def _final_loss(metrics: dict[str, Any]) -> float | None:
    stages = metrics.get("stages") or []
    if stages and stages[-1].get("final_loss") is not None:
        return float(stages[-1]["final_loss"])
    losses = (metrics.get("history") or {}).get("loss") or []
    return float(losses[-1]) if losses else None


def _last_decision(decision: DecisionStats, suite_label: SuiteLabels) -> Iterator[Metric]:
    """The latest decision's figures, per suite: why it went the way it did."""
    decided = GaugeMetricFamily(
        "lifelong_last_gate_decision_timestamp_seconds", "When the latest gate decision was "
        "made, naming the candidate, the version it was judged against, and the result.",
        labels=["candidate", "champion", "status"])
    decided.add_metric([decision.candidate_version or BASE, decision.champion_version or BASE,
                        decision.status], decision.decided_at.timestamp())
    yield decided
    figures = {
        "difference": "candidate minus champion mean score",
        "tolerance": "largest drop the suite may show",
        "candidate_score": "candidate's mean score",
        "champion_score": "champion's mean score",
        "passed": "1 when the suite did not stand in the candidate's way (improved or held), "
                  "0 when it did",
    }
    families = {
        name: GaugeMetricFamily(f"lifelong_last_gate_suite_{name}",
                                f"Latest gate decision, per suite: {doc}.",
                                labels=["suite", "kind", "outcome"])
        for name, doc in figures.items()
    }
    merged: dict[str, dict[tuple[str, ...], list[float]]] = {name: defaultdict(list)
                                                              for name in figures}
    for suite in _suites(decision.details):
        labels = (suite_label(suite["suite"], suite["kind"]), suite["kind"], suite["outcome"])
        values = {
            "difference": suite["difference"], "tolerance": suite["tolerance"],
            "candidate_score": suite["candidate_mean"], "champion_score": suite["champion_mean"],
            "passed": 1.0 if suite["outcome"] in ("improved", "held") else 0.0,
        }
        for name, value in values.items():
            merged[name][labels].append(value)
    for name, family in families.items():
        for merged_labels, value in _means(merged[name]).items():
            family.add_metric(list(merged_labels), value)
    yield from families.values()
    checks = GaugeMetricFamily(
        "lifelong_last_gate_hard_check_passed",
        "Latest gate decision: 1 for each hard check passed, 0 for each failed.",
        labels=["check"])
    for check in decision.details.get("hard_checks") or []:
        checks.add_metric([check["name"]], 1.0 if check["passed"] else 0.0)
    yield checks
