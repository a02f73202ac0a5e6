"""The metrics read from the store (`StateCollector`) and the serving counters' bounded labels,
on SQLite and PostgreSQL: what each metric says after real store writes, versions beyond the
kept ones counted as `other`, feedback counted once as it grows, the cache holding figures
between refreshes, and canaries and watches read from their rows. The exposition passes
`promtool check metrics`."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from lifelong.daemon.canary import live_arm
from lifelong.daemon.metrics import ServingMetrics, StateCollector, VersionLabels
from lifelong.evals.canary_policy import CanaryPolicy, decide_watch
from lifelong.evals.canary_policy import decide as decide_canary
from lifelong.evals.gate import Decision, GatePolicy, HardCheck, SuiteCheck
from lifelong.feedback_store import canaries, registry
from lifelong.feedback_store.canaries import Window
from lifelong.feedback_store.eval_results import record_gate_decision
from lifelong.feedback_store.feedback import add_feedback
from lifelong.feedback_store.interaction_log import InteractionLog
from lifelong.feedback_store.interactions import add_interactions
from lifelong.feedback_store.records import NewInteraction, Outcome, Rating
from lifelong.feedback_store.runs import (
    finish_training_run,
    start_eval_run,
    start_training_run,
    update_training_run,
)


def answered_by(session: Session, version: str | None, n: int = 1) -> list[str]:
    records = [
        NewInteraction(id=f"chatcmpl-{uuid.uuid4().hex}", created_at=datetime.now(UTC),
                       endpoint="chat.completions", request={"messages": []}, model="lifelong",
                       adapter_version=version, response_text="46")
        for _ in range(n)
    ]
    add_interactions(session, records=records, heldout_fraction=0.0)
    return [record.id for record in records]


MARGIN = 0.05


def register_adapters(session: Session, *versions: str) -> None:
    for version in versions:
        registry.register(session, version=version, path=f"/adapters/{version}", checksum="x")


def collector_on(engine: Engine, **kwargs) -> tuple[StateCollector, CollectorRegistry]:
    metrics_registry = CollectorRegistry()
    collector = StateCollector(sessions=sessionmaker(engine, expire_on_commit=False),
                               versions=VersionLabels(), canary_margin=MARGIN, cache_s=0,
                               **kwargs)
    metrics_registry.register(collector)
    return collector, metrics_registry


def suite(name: str, kind: str, outcome: str, candidate: float, champion: float) -> SuiteCheck:
    return SuiteCheck(suite=name, kind=kind, outcome=outcome, test="mcnemar_exact", n=200,  # type: ignore[arg-type]
                      candidate_mean=candidate, champion_mean=champion,
                      difference=candidate - champion, p_improvement=None,
                      p_improvement_adjusted=None, p_regression=0.001,
                      min_detectable_difference=0.05, tolerance=0.01)


def decide(session: Session, candidate: str, champion: str | None, status: str,
           suites: tuple[SuiteCheck, ...], hard_ok: bool = True) -> None:
    decision = Decision(status=status, reasons=(f"{status}: because",), suites=suites,  # type: ignore[arg-type]
                        hard_checks=(HardCheck("format rate not lower", hard_ok, "-"),),
                        policy=GatePolicy())
    run = start_eval_run(session, candidate_version=candidate, baseline_version=champion,
                         config={})
    record_gate_decision(session, eval_run_id=run.id, candidate_version=candidate,
                         champion_version=champion, status=status,  # type: ignore[arg-type]
                         reasons=decision.reasons, details=decision.to_json())


def test_versions_beyond_the_kept_ones_are_counted_as_other(engine: Engine):
    sessions = sessionmaker(engine, expire_on_commit=False)
    versions = [f"v{i:04d}" for i in range(1, 10)]
    with sessions.begin() as session:
        register_adapters(session, *versions)
        for version in versions[:5]:  # v0005 ends champion, v0002..v0004 the previous ones
            registry.set_champion(session, version=version, promoted_by="ops")
        for n, answerer in enumerate([None, *versions], start=1):
            ids = answered_by(session, answerer, n)
            add_feedback(session, items=[Outcome(interaction_id=i, passed=True, reward=0.5)
                                         for i in ids], principal=None, admin=True)
    collector, metrics = collector_on(engine)
    generate_latest(metrics)

    kept = {"base", "v0002", "v0003", "v0004", "v0005", "v0007", "v0008", "v0009"}
    assert collector.versions.kept == kept
    for n, version in enumerate(["base", *versions], start=1):
        value = metrics.get_sample_value("lifelong_feedback_items_total",
                                         {"kind": "outcome", "version": version})
        assert value == (n if version in kept else None), version
    # v0001 (the 2nd set: 2 items) and v0006 (7 items) share `other`
    assert metrics.get_sample_value("lifelong_feedback_items_total",
                                    {"kind": "outcome", "version": "other"}) == 2 + 7
    assert metrics.get_sample_value("lifelong_outcome_reward_sum", {"version": "other"}) == 4.5
    assert metrics.get_sample_value("lifelong_outcome_reward_count", {"version": "v0009"}) == 10


def test_learning_state_reads_runs_decisions_promotions_and_the_champion(engine: Engine):
    sessions = sessionmaker(engine, expire_on_commit=False)
    with sessions.begin() as session:
        done = start_training_run(session, method="sft", parent_version=None, config={})
        finish_training_run(session, run_id=done.id, status="succeeded", adapter_version="v0001",
                            metrics={"stages": [{"method": "sft", "final_loss": 0.25}]})
        done.started_at = done.finished_at - timedelta(seconds=42)  # type: ignore[operator]
        failed = start_training_run(session, method="sft", parent_version=None, config={})
        finish_training_run(session, run_id=failed.id, status="failed", error="boom")
        running = start_training_run(session, method="sft", parent_version=None, config={})
        update_training_run(session, run_id=running.id, metrics={
            "outcome": "running", "history": {"step": [10, 20], "loss": [1.5, 1.25]}})
        register_adapters(session, "v0001", "v0002")
        registry.set_champion(session, version="v0001", promoted_by="gate")
        decide(session, "v0001", None, "approved",
               (suite("family:echo", "target", "improved", 0.9, 0.1),))
        registry.set_champion(session, version="v0002", promoted_by="ops", forced=True)
        registry.set_champion(session, version="v0001", promoted_by="ops", kind="rollback")
        decide(session, "v0002", "v0001", "rejected",
               (suite("family:echo", "target", "not_improved", 0.92, 0.9),
                suite("retention", "retention", "regressed", 0.80, 0.95)), hard_ok=False)
    _, metrics = collector_on(engine, running_run=lambda: running.id)
    value = metrics.get_sample_value

    assert value("lifelong_training_runs_total", {"result": "succeeded"}) == 1
    assert value("lifelong_training_runs_total", {"result": "failed"}) == 1
    assert value("lifelong_training_runs_total", {"result": "skipped"}) == 0
    assert value("lifelong_training_last_run_duration_seconds") == pytest.approx(42)
    assert value("lifelong_training_last_run_loss") == 0.25
    assert value("lifelong_training_run_active") == 1
    assert value("lifelong_training_current_run_step") == 20
    assert value("lifelong_training_current_run_loss") == 1.25
    assert value("lifelong_gate_decisions_total", {"result": "approved"}) == 1
    assert value("lifelong_gate_decisions_total", {"result": "rejected"}) == 1
    assert value("lifelong_adapter_promotions_total") == 2
    assert value("lifelong_adapter_forced_promotions_total") == 1
    assert value("lifelong_adapter_rollbacks_total") == 1
    assert value("lifelong_champion_info", {"version": "v0001", "parent": "base"}) == 1
    # eval scores: each version's latest measurement (v0001's as the champion in the 2nd)
    assert value("lifelong_eval_score",
                 {"version": "v0001", "suite": "family:echo", "kind": "target"}) == 0.9
    assert value("lifelong_eval_score",
                 {"version": "v0002", "suite": "retention", "kind": "retention"}) == 0.80
    assert value("lifelong_eval_score",
                 {"version": "base", "suite": "family:echo", "kind": "target"}) == 0.1
    # why the last candidate was rejected: retention fell 0.15, beyond its 0.01 tolerance
    retention = {"suite": "retention", "kind": "retention", "outcome": "regressed"}
    assert value("lifelong_last_gate_suite_difference", retention) == pytest.approx(-0.15)
    assert value("lifelong_last_gate_suite_tolerance", retention) == 0.01
    assert value("lifelong_last_gate_suite_candidate_score", retention) == 0.80
    assert value("lifelong_last_gate_suite_champion_score", retention) == 0.95
    assert value("lifelong_last_gate_suite_passed", retention) == 0
    assert value("lifelong_last_gate_suite_passed",
                 {"suite": "family:echo", "kind": "target", "outcome": "not_improved"}) == 0
    assert value("lifelong_last_gate_hard_check_passed", {"check": "format rate not lower"}) == 0
    assert (value("lifelong_last_gate_decision_timestamp_seconds",
                  {"candidate": "v0002", "champion": "v0001", "status": "rejected"}) or 0) > 0


def test_feedback_is_counted_once_as_it_grows_and_the_cache_holds_between_refreshes(
    engine: Engine,
):
    sessions = sessionmaker(engine, expire_on_commit=False)
    with sessions.begin() as session:
        first = answered_by(session, None, 3)
        add_feedback(session, items=[Rating(interaction_id=i, score=1) for i in first],
                     principal=None, admin=True)
    collector, metrics = collector_on(engine)
    ratings = {"kind": "rating", "version": "base"}
    assert metrics.get_sample_value("lifelong_feedback_items_total", ratings) == 3
    with sessions.begin() as session:
        add_feedback(session, items=[Outcome(interaction_id=first[0], passed=False, reward=0.0),
                                     Rating(interaction_id=first[1], score=-1)],
                     principal=None, admin=True)
    assert metrics.get_sample_value("lifelong_feedback_items_total", ratings) == 4
    assert metrics.get_sample_value("lifelong_outcomes_total",
                                    {"version": "base", "result": "failed"}) == 1

    collector.cache_s = 3600
    generate_latest(metrics)  # refreshed now, then held
    with sessions.begin() as session:
        add_feedback(session, items=[Rating(interaction_id=first[2], score=1)],
                     principal=None, admin=True)
    assert metrics.get_sample_value("lifelong_feedback_items_total", ratings) == 4
    collector.cache_s = 0
    assert metrics.get_sample_value("lifelong_feedback_items_total", ratings) == 5


def test_serving_series_of_a_version_no_longer_kept_are_removed_and_its_traffic_is_other(
    engine: Engine,
):
    metrics_registry = CollectorRegistry()
    versions = VersionLabels()
    versions.kept = frozenset({"base", "v0001"})
    log = InteractionLog(engine, heldout_fraction=0.0)
    try:
        serving = ServingMetrics(metrics_registry, versions=versions, watchers=[],
                                 interaction_log=log)
        serving.request(endpoint="chat.completions", model="lifelong", version="v0001",
                        status=200, seconds=0.1)
        labels = {"endpoint": "chat.completions", "model": "lifelong", "status": "200"}
        value = metrics_registry.get_sample_value
        assert value("lifelong_requests_total", {**labels, "version": "v0001"}) == 1
        versions.kept = frozenset({"base"})
        serving.forget_versions(versions.kept)
        assert value("lifelong_requests_total", {**labels, "version": "v0001"}) is None
        serving.request(endpoint="chat.completions", model="lifelong", version="v0001",
                        status=200, seconds=0.1)
        assert value("lifelong_requests_total", {**labels, "version": "other"}) == 1
        assert value("lifelong_interaction_log_queue_depth") == 0
    finally:
        log.close(5)


def trial(session: Session, kind: str, version: str, baseline: str | None, *,
          decision: str | None = None, stats: dict | None = None, share: float = 0.1):
    """A canary or watch row as the leader leaves it: opened, its latest statistics written,
    and ended with `decision` (None: left open)."""
    row = canaries.start(session, kind=kind, version=version, baseline_version=baseline,
                         share=share if kind == "canary" else 1.0, by="gate")
    row.stats = stats
    if decision is not None:
        canaries.end(session, row, decision=decision, reason="test")
    session.flush()
    return row


def looked_at(*, candidate: tuple[int, int], baseline: tuple[int, int],
              requests: tuple[int, int] = (0, 0), errors: tuple[int, int] = (0, 0),
              watch: bool = False) -> dict:
    """The statistics the leader writes after a look at sides with (passed, outcomes) each,
    computed by the real decision rule."""
    first, second = (live_arm(Window(passes=[True] * passed + [False] * (n - passed)),
                              requests=r, errors=e)
                     for (passed, n), r, e in zip((candidate, baseline), requests, errors,
                                                  strict=True))
    rule = decide_watch if watch else decide_canary
    verdict = rule(first, second, elapsed_s=600, policy=CanaryPolicy(margin=MARGIN))
    return {**verdict.stats, "summary": verdict.reason}


def test_an_open_canary_its_sides_and_interval_and_every_ended_trial_by_decision(engine: Engine):
    sessions = sessionmaker(engine, expire_on_commit=False)
    looked = looked_at(candidate=(36, 40), baseline=(40, 50), requests=(60, 500), errors=(1, 2))
    with sessions.begin() as session:
        # The candidate is older than the 3 newest adapters: the canary keeps its name.
        register_adapters(session, *(f"v{i:04d}" for i in range(1, 7)))
        registry.set_champion(session, version="v0002", promoted_by="gate")
        trial(session, "canary", "v0003", "v0002", decision="promote")
        trial(session, "watch", "v0003", "v0002", decision="rollback")
        trial(session, "canary", "v0004", "v0002", decision="rollback")
        trial(session, "canary", "v0005", "v0002", decision="timeout")
        trial(session, "watch", "v0006", "v0002", decision="kept")
        open_row = trial(session, "canary", "v0001", "v0002", stats=looked, share=0.1)
    collector, metrics = collector_on(engine)
    value = metrics.get_sample_value

    assert value("lifelong_canary_open", {"kind": "canary"}) == 1
    assert value("lifelong_canary_open", {"kind": "watch"}) == 0
    assert value("lifelong_canary_share") == 0.1
    assert value("lifelong_canary_margin") == MARGIN
    assert "v0001" in collector.versions.kept
    assert value("lifelong_canary_started_timestamp_seconds", {
        "kind": "canary", "version": "v0001", "baseline": "v0002"},
    ) == pytest.approx(open_row.started_at.timestamp())
    assert [value("lifelong_canary_outcomes", {"arm": arm}) for arm in ("candidate", "baseline")
            ] == [40, 50]
    assert [value("lifelong_canary_pass_rate", {"arm": arm})
            for arm in ("candidate", "baseline")] == [pytest.approx(0.9), pytest.approx(0.8)]
    assert [value("lifelong_canary_requests", {"arm": arm})
            for arm in ("candidate", "baseline")] == [60, 500]
    assert [value("lifelong_canary_errors", {"arm": arm})
            for arm in ("candidate", "baseline")] == [1, 2]
    bounds = {bound: value("lifelong_canary_pass_rate_difference", {"bound": bound})
              for bound in ("estimate", "lower", "upper")}
    assert bounds["estimate"] == pytest.approx(0.1)
    assert bounds == {bound: looked["pass_rate"][bound] for bound in bounds}
    interval = looked["pass_rate"]
    assert interval["lower"] < interval["estimate"] < interval["upper"]
    decided = {(kind, decision): value("lifelong_canary_decisions_total",
                                       {"kind": kind, "decision": decision})
               for kind in ("canary", "watch")
               for decision in ("promote", "rollback", "timeout", "kept", "aborted")}
    assert {labels: n for labels, n in decided.items() if n} == {
        ("canary", "promote"): 1, ("canary", "rollback"): 1, ("canary", "timeout"): 1,
        ("watch", "rollback"): 1, ("watch", "kept"): 1}
    assert decided[("watch", "aborted")] == 0  # exported from the start, for increase()
    assert value("lifelong_canary_trials_total", {"kind": "canary"}) == 4
    assert value("lifelong_canary_trials_total", {"kind": "watch"}) == 2


def test_an_open_watch_is_read_by_the_same_sides_and_no_interval_before_its_burn_in(
    engine: Engine,
):
    sessions = sessionmaker(engine, expire_on_commit=False)
    with sessions.begin() as session:
        register_adapters(session, "v0001")
        registry.set_champion(session, version="v0001", promoted_by="canary")
        watched = trial(session, "watch", "v0001", None,
                        stats=looked_at(candidate=(3, 4), baseline=(5, 10), watch=True))
    collector, metrics = collector_on(engine)
    value = metrics.get_sample_value
    assert value("lifelong_canary_open", {"kind": "watch"}) == 1
    assert value("lifelong_canary_share") == 0  # a watch splits nobody
    assert value("lifelong_canary_started_timestamp_seconds",
                 {"kind": "watch", "version": "v0001", "baseline": "base"}) is not None
    # The new champion is the side on trial, its predecessor's last window the baseline.
    assert value("lifelong_canary_outcomes", {"arm": "candidate"}) == 4
    assert value("lifelong_canary_pass_rate", {"arm": "baseline"}) == 0.5
    assert value("lifelong_canary_requests", {"arm": "candidate"}) == 0
    assert value("lifelong_canary_pass_rate_difference", {"bound": "estimate"}) is None

    with sessions.begin() as session:
        row = session.get(type(watched), watched.id)
        canaries.end(session, row, decision="kept", reason="no drop")
    assert value("lifelong_canary_open", {"kind": "watch"}) == 0
    assert value("lifelong_canary_started_timestamp_seconds",
                 {"kind": "watch", "version": "v0001", "baseline": "base"}) is None
    assert value("lifelong_canary_outcomes", {"arm": "candidate"}) is None
    assert value("lifelong_canary_decisions_total", {"kind": "watch", "decision": "kept"}) == 1


def test_the_exposition_passes_promtool(engine: Engine, tmp_path):
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: `LIFELONG_DEV=1 scripts/setup.sh` installs Prometheus"
    sessions = sessionmaker(engine, expire_on_commit=False)
    with sessions.begin() as session:
        register_adapters(session, "v0001", "v0002")
        registry.set_champion(session, version="v0001", promoted_by="ops")
        trial(session, "canary", "v0002", "v0001",
              stats=looked_at(candidate=(30, 40), baseline=(35, 40), requests=(40, 40)))
        decide(session, "v0001", None, "approved", (suite("t", "target", "improved", 1, 0),))
        ids = answered_by(session, "v0001")
        add_feedback(session, items=[Outcome(interaction_id=ids[0], passed=True, reward=1.0)],
                     principal=None, admin=True)
    _, metrics = collector_on(engine)
    log = InteractionLog(engine, heldout_fraction=0.0)
    try:
        serving = ServingMetrics(metrics, versions=VersionLabels(), watchers=[],
                                 interaction_log=log)
        serving.request(endpoint="completions", model="pinned", version="base", status=200,
                        seconds=0.2)
        serving.first_token(endpoint="completions", version="base", seconds=0.05)
        serving.tokens(version="base", usage={"prompt_tokens": 3, "completion_tokens": 2})
        serving.feedback_received(["rating"], committed=True)
        exposition = generate_latest(metrics)
    finally:
        log.close(5)
    checked = subprocess.run([promtool, "check", "metrics"], input=exposition,
                             capture_output=True, timeout=30)
    assert checked.returncode == 0, (checked.stdout + checked.stderr).decode()
    assert checked.stdout + checked.stderr == b""


def test_suite_names_from_family_tags_are_cleaned_and_bounded_in_labels(engine: Engine, tmp_path):
    # Target suites are named by callers' `family:` tags: 25 families, one with characters a label
    # should not carry, one 200 characters long.
    odd, long = 'target:a b"{x}\n', "target:" + "y" * 200
    suites = [suite(f"target:f{i:02d}", "target", "held", 0.5, 0.5) for i in range(23)]
    suites = [replace(s, n=100 - i) for i, s in enumerate(suites)]  # f00 the largest
    suites += [replace(suite(odd, "target", "improved", 0.9, 0.1), n=200),
               replace(suite(long, "target", "held", 0.7, 0.7), n=150),
               suite("retention", "retention", "held", 0.8, 0.8)]
    suites[21] = replace(suites[21], candidate_mean=0.2)  # f18..f22 fall into `other`
    sessions = sessionmaker(engine, expire_on_commit=False)
    with sessions.begin() as session:
        register_adapters(session, "v0001")
        decide(session, "v0001", None, "approved", tuple(suites))
    _, metrics = collector_on(engine)
    exposition = generate_latest(metrics)

    labels = {sample.labels["suite"] for family in metrics.collect()
              if family.name == "lifelong_eval_score" for sample in family.samples}
    targets = {name for name in labels if name.startswith("target:")}
    assert len(targets) == 20 + 1 and "target:other" in targets
    assert "target:a_b__x__" in targets and "target:f17" in targets and "target:f18" not in targets
    assert all(len(name) <= 64 for name in labels) and "retention" in labels
    assert "target:" + "y" * 56 + "~" in targets
    value = metrics.get_sample_value
    # `other`: the mean of the suites it holds (f18..f22: 0.5 but f21's 0.2)
    assert value("lifelong_eval_score", {"version": "v0001", "suite": "target:other",
                                         "kind": "target"}) == pytest.approx(0.44)
    assert value("lifelong_last_gate_suite_candidate_score",
                 {"suite": "target:other", "kind": "target", "outcome": "held"}) == pytest.approx(0.44)
    checked = subprocess.run([shutil.which("promtool") or "promtool", "check", "metrics"],
                             input=exposition, capture_output=True, timeout=30)
    assert checked.returncode == 0, (checked.stdout + checked.stderr).decode()


def test_replicas_say_who_is_up_who_leads_and_which_server_lacks_the_champion(engine: Engine):
    import time

    from lifelong.adapters.artifact import served_name
    from lifelong.feedback_store import replicas

    sessions = sessionmaker(engine, expire_on_commit=False)
    with sessions.begin() as session:
        register_adapters(session, "v0001")
        registry.set_champion(session, version="v0001", promoted_by="ops")
        served = served_name("v0001", "x")  # as vLLM lists it
        servers = [{"url": "http://vllm-0", "ready": True, "adapters": [served, "v0001"]},
                   # Lost it; a same-named adapter of other weights does not count.
                   {"url": "http://vllm-1", "ready": True, "adapters": ["v0001"]}]
        replicas.beat(session, replica_id="gw-a", url=None, started_at=datetime.now(UTC),
                      leader=True, champion="v0001", servers=servers[:1])
        replicas.beat(session, replica_id="gw-b", url=None, started_at=datetime.now(UTC),
                      leader=False, champion="v0001", servers=servers)
        replicas.beat(session, replica_id="gw-c", url=None, started_at=datetime.now(UTC),
                      leader=True, champion="v0001", servers=servers[:1])
    time.sleep(0.6)
    with sessions.begin() as session:  # gw-c falls silent; the others beat again
        for name, served in (("gw-a", servers[:1]), ("gw-b", servers)):
            replicas.beat(session, replica_id=name, url=None, started_at=datetime.now(UTC),
                          leader=name == "gw-a", champion="v0001", servers=served)
    collector, metrics_registry = collector_on(engine, replica_stale_s=0.5)
    value = metrics_registry.get_sample_value
    assert [value("lifelong_replica_up", {"replica": r}) for r in ("gw-a", "gw-b", "gw-c")] == [
        1.0, 1.0, 0.0]
    assert [value("lifelong_replica_leader", {"replica": r}) for r in ("gw-a", "gw-c")] == [
        1.0, 0.0]  # a silent replica leads nothing
    assert value("lifelong_replica_serves_champion", {"replica": "gw-a"}) == 1.0
    assert value("lifelong_replica_serves_champion", {"replica": "gw-b"}) == 0.0
    assert value("lifelong_server_serves_champion",
                 {"replica": "gw-b", "server": "http://vllm-1"}) == 0.0
    assert value("lifelong_server_serves_champion",
                 {"replica": "gw-b", "server": "http://vllm-0"}) == 1.0
