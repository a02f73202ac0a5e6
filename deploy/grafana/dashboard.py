"""Builds the Grafana dashboard "lifelong — adapter promotions" as code and writes
`deploy/grafana/dashboards/lifelong.json` (which Grafana's provisioning loads).

    .venv/bin/python deploy/grafana/dashboard.py          # rewrite the JSON
    .venv/bin/python deploy/grafana/dashboard.py --check  # exit 1 if the JSON is stale

Built with Grafana's own typed builders (grafana-foundation-sdk, in the dev extras). Every query
reads the gateway's metrics (`daemon/metrics.py`); `tests/daemon/test_metrics.py` runs each one
against a real Prometheus scraping a real daemon and fails on any that returns nothing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import common, dashboard, prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import GraphDrawStyle, GraphTresholdsStyleMode
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    DynamicConfigValue,
    Threshold,
    ThresholdsMode,
)
from grafana_foundation_sdk.models.dashboard import DataTransformerConfig as Transformation
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

OUTPUT = Path(__file__).parent / "dashboards" / "lifelong.json"
UID = "lifelong-promotions"
TITLE = "lifelong — adapter promotions"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="prometheus")  # provisioning's uid
QUALITY_WINDOW = "1h"  # feedback is sparse: pass rate and reward over the last hour


def query(expr: str, legend: str = "", *, ref: str = "A", instant: bool = False
          ) -> prometheus.Dataquery:
    built = prometheus.Dataquery().expr(expr).ref_id(ref).datasource(DATASOURCE)
    if instant:
        return built.instant().format(PromQueryFormat.TABLE)
    return built.range().legend_format(legend or "__auto")


def graph(title: str, description: str, *queries: prometheus.Dataquery, unit: str = "short",
          span: int = 12, bars: bool = False) -> timeseries.Panel:
    panel = (timeseries.Panel().title(title).description(description).datasource(DATASOURCE)
             .unit(unit).span(span).height(8).targets(list(queries)))
    if bars:
        panel = panel.draw_style(GraphDrawStyle.BARS).fill_opacity(80)
    return panel


def figure(title: str, description: str, expr: str, *, unit: str = "short", span: int = 4
           ) -> stat.Panel:
    return (stat.Panel().title(title).description(description).datasource(DATASOURCE)
            .unit(unit).span(span).height(4).targets([query(expr, ref="A")]))


def facts(title: str, description: str, *queries: prometheus.Dataquery, span: int = 12,
          merge: bool = True) -> table.Panel:
    panel = (table.Panel().title(title).description(description).datasource(DATASOURCE)
             .span(span).height(8).targets(list(queries)))
    if merge:  # one row per suite, one column per query
        panel = panel.with_transformation(Transformation(id_val="merge", options={}))
    return panel.with_transformation(Transformation(
        id_val="organize", options={"excludeByName": {"Time": True, "__name__": True,
                                                      "instance": True, "job": True}}))


def annotation(name: str, expr: str, color: str) -> dashboard.AnnotationQuery:
    return (dashboard.AnnotationQuery().name(name).datasource(DATASOURCE).enable(True)
            .icon_color(color).expr(expr))


def build() -> dashboard.Dashboard:
    rate_of = "[$__rate_interval]"
    board = (
        dashboard.Dashboard(TITLE).uid(UID).tags(["lifelong"]).refresh("30s")
        .time("now-24h", "now").timezone("browser").tooltip(DashboardCursorSync.CROSSHAIR)
        .annotation(annotation(
            "promotions", f"increase(lifelong_adapter_promotions_total{rate_of}) > 0", "green"))
        .annotation(annotation(
            "rollbacks", f"increase(lifelong_adapter_rollbacks_total{rate_of}) > 0", "orange"))
        .annotation(annotation(
            "rejections", f'increase(lifelong_gate_decisions_total{{result="rejected"}}{rate_of})'
                          " > 0", "red"))
        .annotation(annotation(
            "canary starts", f'increase(lifelong_canary_trials_total{{kind="canary"}}{rate_of})'
                             " > 0", "blue"))
        .annotation(annotation(
            "canary promotions", "increase(lifelong_canary_decisions_total"
                                 f'{{kind="canary",decision="promote"}}{rate_of}) > 0',
            "dark-green"))
        .annotation(annotation(
            # a canary's or a watch's own rollback: a person's is `aborted`
            "automatic rollbacks", "sum(increase(lifelong_canary_decisions_total"
                                   f'{{decision="rollback"}}{rate_of})) > 0', "purple"))
    )

    board = board.with_row(dashboard.Row("Promotions: who is champion, and every change"))
    board = board.with_panel(graph(
        "Champion over time",
        "The version the public alias served (1 while it was champion), and its parent. The "
        "dashboard's annotations mark promotions (green), rollbacks (orange), rejections (red).",
        query("lifelong_champion_info", "{{version}} (parent {{parent}})"), span=12))
    board = board.with_panel(figure(
        "Promotions in range", "Adapters made champion, forced ones included.",
        "increase(lifelong_adapter_promotions_total[$__range])"))
    board = board.with_panel(figure(
        "Forced promotions in range", "Promotions that skipped the gate (`promote --force`).",
        "increase(lifelong_adapter_forced_promotions_total[$__range])"))
    board = board.with_panel(figure(
        "Rollbacks in range", "Back to a previous champion or the base model.",
        "increase(lifelong_adapter_rollbacks_total[$__range])"))
    board = board.with_panel(graph(
        "Gate decisions", "Candidates judged, by the gate's result.",
        query(f"sum by (result) (increase(lifelong_gate_decisions_total{rate_of}))",
              "{{result}}"), bars=True))

    board = board.with_row(dashboard.Row("Candidate vs champion: the last decision and why"))
    board = board.with_panel(facts(
        "Last gate decision",
        "The latest candidate, the version it was judged against, and the result.",
        query("lifelong_last_gate_decision_timestamp_seconds * 1000", instant=True),
        span=24, merge=False))
    board = board.with_panel(facts(
        "Per suite: why (difference = candidate - champion)",
        "The latest decision, one row per suite. A suite stands in the candidate's way "
        "(passed 0) when it regressed beyond its tolerance, or is a target suite that did not "
        "improve by evals.gate.min_improvement; `outcome` says which.",
        query("lifelong_last_gate_suite_difference", ref="A", instant=True),
        query("lifelong_last_gate_suite_tolerance", ref="B", instant=True),
        query("lifelong_last_gate_suite_candidate_score", ref="C", instant=True),
        query("lifelong_last_gate_suite_champion_score", ref="D", instant=True),
        query("lifelong_last_gate_suite_passed", ref="E", instant=True), span=16))
    board = board.with_panel(facts(
        "Hard checks", "The latest decision's hard checks (1 passed, 0 failed: rejects).",
        query("lifelong_last_gate_hard_check_passed", instant=True), span=8, merge=False))
    board = board.with_panel(graph(
        "Eval scores by version and suite",
        "Each kept version's mean score per suite, from the latest gate decision that measured "
        "it (as candidate or as champion).",
        query("lifelong_eval_score", "{{version}} {{suite}}"), unit="percentunit"))

    board = board.with_row(dashboard.Row("Canary: is the candidate safe for users?"))
    board = board.with_panel(graph(
        "Canary state", "1 while a canary (an approved candidate on a share of the alias's "
        "users) or a watch (a new champion against its predecessor's last window) is open; the "
        "share of users sent to the canary's candidate. Annotations mark canary starts (blue), "
        "promotions by a canary (dark green) and automatic rollbacks (purple).",
        query("lifelong_canary_open", "{{kind}} open", ref="A"),
        query("lifelong_canary_share", "share to the candidate", ref="B"), span=8)
        .override_by_query("B", [DynamicConfigValue(id_val="unit", value="percentunit")]))
    board = board.with_panel(facts(
        "Open trial", "The version on trial and the one it is compared with (a watch: the new "
        "champion and its predecessor), and when it began.",
        query("lifelong_canary_started_timestamp_seconds * 1000", instant=True),
        span=16, merge=False))
    board = board.with_panel(graph(
        "Live pass rate per side", "Open trial, since it began, at the leader's latest look "
        "(every promotion.canary.check_every_s): the share of users' outcome verdicts that "
        "passed, for the candidate and the baseline (a watch: the new champion and its "
        "predecessor's last window).",
        query("lifelong_canary_pass_rate", "{{arm}}"), unit="percentunit", span=12))
    board = board.with_panel(facts(
        "Per side now: outcomes, pass rate, requests, errors",
        "Open trial, one row per side: outcome verdicts counted, their pass rate, alias "
        "requests routed to it and those the model server failed (a watch counts no requests).",
        query("lifelong_canary_outcomes", ref="A", instant=True),
        query("lifelong_canary_pass_rate", ref="B", instant=True),
        query("lifelong_canary_requests", ref="C", instant=True),
        query("lifelong_canary_errors", ref="D", instant=True), span=12))
    board = board.with_panel(graph(
        "Pass-rate difference (candidate - baseline) and its always-valid bounds",
        "The estimate and its confidence bounds, valid however often they are looked at (absent "
        "until each side has promotion.canary.min_outcomes). A canary may promote once the "
        "lower bound is above -margin (the \"promote above\" series), and rolls back once the "
        "upper bound is below 0 (the red line); a watch rolls back on the same.",
        query("lifelong_canary_pass_rate_difference", "{{bound}}", ref="A"),
        query("-lifelong_canary_margin", "promote above (-margin)", ref="B"),
        span=16).thresholds(dashboard.ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps([
            Threshold(value=None, color="transparent"), Threshold(value=0, color="red")]))
        .thresholds_style(common.GraphThresholdsStyleConfig().mode(GraphTresholdsStyleMode.LINE)))
    board = board.with_panel(graph(
        "Trial decisions", "Canaries and watches ended, by kind and decision (rollback: the "
        "trial's own; aborted: stopped by a person, superseded, or unservable).",
        query(f"sum by (kind, decision) (increase(lifelong_canary_decisions_total{rate_of}))",
              "{{kind}} {{decision}}"), bars=True, span=8))

    board = board.with_row(dashboard.Row("Live quality by version (outcome feedback)"))
    board = board.with_panel(graph(
        "Pass rate by version", f"Passed / all outcome verdicts over the last {QUALITY_WINDOW}.",
        query(f'sum by (version) (increase(lifelong_outcomes_total{{result="passed"}}'
              f"[{QUALITY_WINDOW}])) / sum by (version) (increase(lifelong_outcomes_total"
              f"[{QUALITY_WINDOW}]))", "{{version}}"), unit="percentunit", span=8))
    board = board.with_panel(graph(
        "Outcome verdicts by version", f"Outcome verdicts over the last {QUALITY_WINDOW}: how "
        "many the pass rate beside it is of.",
        query(f"sum by (version) (increase(lifelong_outcomes_total[{QUALITY_WINDOW}]))",
              "{{version}}"), span=8))
    board = board.with_panel(graph(
        "Mean reward by version", f"Mean outcome reward over the last {QUALITY_WINDOW}.",
        query(f"sum by (version) (increase(lifelong_outcome_reward_sum[{QUALITY_WINDOW}])) / "
              f"sum by (version) (increase(lifelong_outcome_reward_count[{QUALITY_WINDOW}]))",
              "{{version}}"), span=8))

    board = board.with_row(dashboard.Row("Feedback volume"))
    board = board.with_panel(graph(
        "Feedback by kind", "Feedback items stored per second, by kind.",
        query(f"sum by (kind) (rate(lifelong_feedback_items_total{rate_of}))", "{{kind}}"),
        unit="reqps", span=8))
    board = board.with_panel(graph(
        "Feedback by version", "Feedback items stored per second, by the version that answered.",
        query(f"sum by (version) (rate(lifelong_feedback_items_total{rate_of}))", "{{version}}"),
        unit="reqps", span=8))
    board = board.with_panel(graph(
        "Feedback refused", "Items the API refused (unknown or foreign interaction, out of "
        "range, malformed), by kind.",
        query(f'sum by (kind) (rate(lifelong_feedback_received_total{{result="refused"}}'
              f"{rate_of}))", "{{kind}}"), unit="reqps", span=8))

    board = board.with_row(dashboard.Row("Training"))
    board = board.with_panel(graph(
        "Training runs", "Runs that ended, by result.",
        query(f"sum by (result) (increase(lifelong_training_runs_total{rate_of}))", "{{result}}"),
        bars=True, span=8))
    board = board.with_panel(graph(
        "Loss", "Final loss of the last successful run, and the latest loss of the run going "
        "on.", query("lifelong_training_last_run_loss", "last run", ref="A"),
        query("lifelong_training_current_run_loss", "current run", ref="B"), span=8))
    board = board.with_panel(graph(
        "Current run progress", "Optimizer steps done by the run going on (0: none).",
        query("lifelong_training_current_run_step", "step"), span=4))
    board = board.with_panel(figure(
        "Last run took", "Wall time of the last successful training run.",
        "lifelong_training_last_run_duration_seconds", unit="s", span=4))

    board = board.with_row(dashboard.Row("Practice (GRPO on verifiable tasks)"))
    board = board.with_panel(graph(
        "Rollouts", "Practice samples graded per second, by the verifier's result.",
        query(f"sum by (result) (rate(lifelong_rollouts_total{rate_of}))", "{{result}}"),
        unit="reqps", span=8))
    board = board.with_panel(graph(
        "Practice pass rate and reward", "Share of the rollouts passed, and their mean reward.",
        query(f'sum(rate(lifelong_rollouts_total{{result="passed"}}{rate_of})) / '
              f"sum(rate(lifelong_rollouts_total{rate_of}))", "pass rate", ref="A"),
        query(f"sum(rate(lifelong_rollout_reward_total{rate_of})) / "
              f"sum(rate(lifelong_rollouts_total{rate_of}))", "mean reward", ref="B"), span=8))
    board = board.with_panel(graph(
        "Latest GRPO run by round", "The practice pass rate of each round of the latest GRPO "
        "run (round 0 samples the weights it started from).",
        query("lifelong_practice_round_pass_rate", "round {{round}}"), unit="percentunit",
        span=8))
    board = board.with_panel(graph(
        "Making way for users", "1 while a GRPO run waits for users to be quiet; pauses per "
        "second.", query("lifelong_practice_paused", "paused", ref="A"),
        query(f"rate(lifelong_practice_pauses_total{rate_of})", "pauses/s", ref="B"), span=8))

    board = board.with_row(dashboard.Row(
        "Replicas: does every gateway and vLLM server serve the champion?"))
    board = board.with_panel(facts(
        "Gateway replicas", "Each gateway replica by its heartbeat: up, leading the learning "
        "loop, and routing the alias to the registry's champion with every vLLM server it "
        "talks to serving it (0: out of step; that server is out of its routing).",
        query("max by (replica) (lifelong_replica_up)", ref="A", instant=True),
        query("max by (replica) (lifelong_replica_leader)", ref="B", instant=True),
        query("max by (replica) (lifelong_replica_serves_champion)", ref="C", instant=True),
        span=12))
    board = board.with_panel(graph(
        "vLLM servers serving the champion", "Per replica and server: 1 while the server is "
        "ready and lists the champion. A dip after a promotion is the load and warm-up; one "
        "that stays at 0 is a server the replica took out of routing.",
        query("max by (replica, server) (lifelong_server_serves_champion)",
              "{{replica}} {{server}}"), span=12))

    board = board.with_row(dashboard.Row("Serving health"))
    board = board.with_panel(graph(
        "Requests", "Completion requests per second, by endpoint and version.",
        query(f"sum by (endpoint, version) (rate(lifelong_requests_total{rate_of}))",
              "{{endpoint}} {{version}}"), unit="reqps", span=8))
    board = board.with_panel(graph(
        "Errors", "Requests answered with an error, by HTTP status.",
        query(f'sum by (status) (rate(lifelong_requests_total{{status!="200"}}{rate_of}))',
              "{{status}}"), unit="reqps", span=8))
    board = board.with_panel(graph(
        "Latency p50 / p99", "Gateway time per completion request, to the last byte.",
        *quantiles("lifelong_request_duration_seconds", rate_of),
        unit="s", span=8))
    board = board.with_panel(graph(
        "Time to first token p50 / p99", "Streamed requests: time to the first content chunk.",
        *quantiles("lifelong_time_to_first_token_seconds", rate_of),
        unit="s", span=8))
    board = board.with_panel(graph(
        "Tokens", "Prompt and completion tokens per second.",
        query(f"sum(rate(lifelong_prompt_tokens_total{rate_of}))", "prompt", ref="A"),
        query(f"sum(rate(lifelong_completion_tokens_total{rate_of}))", "completion", ref="B"),
        span=8))
    board = board.with_panel(graph(
        "vLLM servers", "1 while a vLLM server takes traffic; restarts by the supervisor; "
        "planned replacements, and the adapters the server holds (vLLM frees none).",
        query("lifelong_upstream_ready", "ready {{upstream}}", ref="A"),
        query("lifelong_upstream_restarts_total", "restarts {{upstream}}", ref="B"),
        query("lifelong_upstream_replacements_total", "replacements {{upstream}}", ref="C"),
        query("lifelong_upstream_adapters_registered", "adapters {{upstream}}", ref="D"),
        span=8))
    board = board.with_panel(graph(
        "Interaction log", "Interactions waiting to be written, and those never logged "
        "(queue full, refused, lost) per second.",
        query("lifelong_interaction_log_queue_depth", "queued", ref="A"),
        query(f"rate(lifelong_interaction_log_dropped_total{rate_of})", "dropped/s", ref="B"),
        span=12))
    return board


def render() -> str:
    built = build().build()
    for number, panel in enumerate(built.panels or [], start=1):
        panel.id_val = number  # unique ids: Grafana links, alerts and panel views refer to them
    return json.dumps(built, cls=JSONEncoder, indent=2, ensure_ascii=False) + "\n"


def quantiles(histogram: str, rate_of: str) -> list[prometheus.Dataquery]:
    """p50 and p99 of a histogram over all its series."""
    return [query(f"histogram_quantile({q}, sum by (le) (rate({histogram}_bucket{rate_of})))",
                  name, ref=ref) for q, name, ref in ((0.5, "p50", "A"), (0.99, "p99", "B"))]


def main(argv: list[str]) -> int:
    text = render()
    if argv[1:] == ["--check"]:
        if OUTPUT.read_text() != text:
            print(f"{OUTPUT} is stale: run python {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
