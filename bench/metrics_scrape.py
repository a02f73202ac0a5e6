"""The cost of one `/metrics` scrape with the store-derived figures cached vs read every time.

A store is filled to a size a busy daemon reaches (`--interactions` answered requests with one
feedback item each, `--adapters` versions with promotions, training runs and gate decisions of
realistic shape), then the gateway's registry (`ServingMetrics` + `StateCollector`, as the app
builds them) is rendered `--scrapes` times in a row:

- `first`: the first scrape after start-up, which counts all stored feedback once;
- `uncached`: `cache_s=0`, the store read at every scrape (feedback counted incrementally);
- `cached`: `cache_s=5`, as deployed: scrapes inside the window reuse the last reading.

    .venv/bin/python bench/metrics_scrape.py --interactions 50000 --scrapes 200
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy.orm import Session, sessionmaker

from lifelong.daemon.metrics import ServingMetrics, StateCollector, VersionLabels
from lifelong.evals.gate import Decision, GatePolicy, HardCheck, SuiteCheck
from lifelong.feedback_store import registry
from lifelong.feedback_store.database import make_engine, upgrade
from lifelong.feedback_store.eval_results import record_gate_decision
from lifelong.feedback_store.feedback import add_feedback
from lifelong.feedback_store.interaction_log import InteractionLog
from lifelong.feedback_store.interactions import add_interactions
from lifelong.feedback_store.records import NewInteraction, Outcome, Rating
from lifelong.feedback_store.runs import finish_training_run, start_eval_run, start_training_run


def fill(sessions: sessionmaker[Session], *, interactions: int, adapters: int) -> None:
    versions = [f"v{i:04d}" for i in range(1, adapters + 1)]
    with sessions.begin() as session:
        for version in versions:
            run = start_training_run(session, method="sft", parent_version=None, config={})
            finish_training_run(session, run_id=run.id, status="succeeded", adapter_version=version,
                                metrics={"stages": [{"method": "sft", "final_loss": 0.3}],
                                         "history": {"loss": [1.0] * 640}})
            registry.register(session, version=version, path=f"/a/{version}", checksum="x",
                              training_run_id=run.id)
            suites = tuple(SuiteCheck(
                suite=name, kind=kind, outcome="held", test="mcnemar_exact", n=200,
                candidate_mean=0.9, champion_mean=0.88, difference=0.02, p_improvement=None,
                p_improvement_adjusted=None, p_regression=0.4, min_detectable_difference=0.05,
                tolerance=0.01) for name, kind in (("family:echo", "target"),
                                                   ("regression", "regression"),
                                                   ("retention", "retention")))
            decision = Decision("approved", ("approved",), suites,
                                (HardCheck("format rate not lower", True, "-"),), GatePolicy())
            eval_run = start_eval_run(session, candidate_version=version, baseline_version=None,
                                      config={})
            record_gate_decision(session, eval_run_id=eval_run.id, candidate_version=version,
                                 champion_version=None, status="approved",
                                 reasons=decision.reasons, details=decision.to_json())
            registry.set_champion(session, version=version, promoted_by="gate")
    now = datetime.now(UTC)
    batch = 1000  # feedback.MAX_BATCH
    for start in range(0, interactions, batch):
        records = [
            NewInteraction(id=f"chatcmpl-{uuid.uuid4().hex}", created_at=now - timedelta(seconds=i),
                           endpoint="chat.completions", request={"messages": []}, model="lifelong",
                           adapter_version=versions[i % len(versions)], response_text="46")
            for i in range(start, min(start + batch, interactions))
        ]
        with sessions.begin() as session:
            add_interactions(session, records=records, heldout_fraction=0.0)
            items = [Outcome(interaction_id=r.id, passed=n % 2 == 0, reward=1.0) if n % 3 else
                     Rating(interaction_id=r.id, score=1) for n, r in enumerate(records)]
            add_feedback(session, items=items, principal=None, admin=True)


def scrape_ms(metrics: CollectorRegistry, scrapes: int) -> list[float]:
    times = []
    for _ in range(scrapes):
        started = time.perf_counter()
        generate_latest(metrics)
        times.append((time.perf_counter() - started) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interactions", type=int, default=50_000)
    parser.add_argument("--adapters", type=int, default=30)
    parser.add_argument("--scrapes", type=int, default=200)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(f"sqlite:///{Path(tmp) / 'lifelong.db'}")
        upgrade(engine)
        sessions = sessionmaker(engine, expire_on_commit=False)
        filled = time.perf_counter()
        fill(sessions, interactions=args.interactions, adapters=args.adapters)
        print(f"store: {args.interactions} interactions with feedback, {args.adapters} adapters "
              f"(filled in {time.perf_counter() - filled:.0f} s), SQLite\n")

        log = InteractionLog(engine, heldout_fraction=0.0)
        # a throwaway reading first, so both sides find the file in the page cache
        StateCollector(sessions=sessions, versions=VersionLabels()).refresh()
        results = {}
        for name, cache_s in (("uncached", 0.0), ("cached", 5.0)):
            metrics = CollectorRegistry()
            versions = VersionLabels()
            serving = ServingMetrics(metrics, versions=versions, watchers=[], interaction_log=log)
            for version in ("base", f"v{args.adapters:04d}"):
                serving.request(endpoint="chat.completions", model="lifelong", version=version,
                                status=200, seconds=0.05)
            metrics.register(StateCollector(sessions=sessions, versions=versions,
                                            on_versions=serving.forget_versions, cache_s=cache_s))
            first = scrape_ms(metrics, 1)[0]
            times = scrape_ms(metrics, args.scrapes)
            results[name] = (first, statistics.mean(times), statistics.median(times),
                             max(times), len(generate_latest(metrics)))
        log.close(5)
        engine.dispose()

    print(f"{'':<24}{'uncached':>12}{'cached':>12}{'ratio':>10}")
    labels = ("first scrape (ms)", "mean scrape (ms)", "median scrape (ms)", "max scrape (ms)")
    for i, label in enumerate(labels):
        uncached, cached = results["uncached"][i], results["cached"][i]
        print(f"{label:<24}{uncached:>12.2f}{cached:>12.2f}{uncached / cached:>9.1f}x")
    print(f"{'exposition (bytes)':<24}{results['uncached'][4]:>12}{results['cached'][4]:>12}")


if __name__ == "__main__":
    main()
