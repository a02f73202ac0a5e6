"""What a person reads about adapters: registry rows joined with their training runs and manifests.

Plain JSON-ready dicts, so the CLI (`lifelong adapters list|show`) and the admin API show the same
facts. Reading never loads torch: manifests are checked by checksum only.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from lifelong.adapters import AdapterError, read_manifest, verify
from lifelong.feedback_store import canaries, registry
from lifelong.feedback_store.eval_results import latest_gate_decision
from lifelong.feedback_store.lineage import lineage
from lifelong.feedback_store.models import Adapter, GateDecision, TrainingRun

SPARK = "▁▂▃▄▅▆▇█"


def shown_status(status: str, gate: str | None) -> str:
    """The word a person reads for an adapter whose registry `status` is `status` and whose
    last gate decision was `gate` (None: never judged): what the gate said, for an adapter still
    waiting on it (candidate, approved, rejected) where the two differ; the status otherwise.
    A `not_enough_evidence` decision leaves the status as it was (`candidate`, or `rejected` for
    one judged again), which alone would read as if the gate had not spoken or had refused it."""
    if gate is not None and gate != status and status in ("candidate", "approved", "rejected"):
        return gate
    return status


def adapter_rows(session: Session) -> list[dict[str, Any]]:
    """Every registered adapter, oldest first, with its last gate decision (`gate`: approved,
    rejected, not_enough_evidence, or None) and its data and final losses in short."""
    rows = []
    for adapter in registry.list_adapters(session):
        run = session.get(TrainingRun, adapter.training_run_id) if adapter.training_run_id else None
        metrics = (run.metrics or {}) if run else {}
        examples = metrics.get("data", {}).get("examples", {})
        decision = latest_gate_decision(session, candidate_version=adapter.version)
        rows.append({
            **_registry_fields(adapter),
            "gate": decision.status if decision is not None else None,
            "examples": ", ".join(
                f"{method} {counts['new']}+{counts['replayed']}" for method, counts in examples.items()
            ) or "-",
            "losses": ", ".join(
                f"{stage['method']} {stage['final_loss']:.3f}" for stage in metrics.get("stages", [])
            ) or "-",
        })
    return rows


def learning_status(session: Session, *, recent: int = 5) -> dict[str, Any]:
    """The registry and the last runs in short: what `lifelong status` shows besides the
    daemon's own state (serving, cycle, schedule)."""
    champion = registry.champion(session)
    runs = session.scalars(select(TrainingRun).order_by(TrainingRun.id.desc()).limit(recent))
    decisions = session.scalars(select(GateDecision).order_by(GateDecision.id.desc()).limit(recent))
    return {
        "champion": champion.version if champion else None,
        "waiting": [adapter.version for adapter in registry.list_adapters(session)
                    if adapter.status in ("candidate", "approved")],
        "training_runs": [
            {"id": run.id, "status": run.status, "started_at": run.started_at.isoformat(),
             "adapter_version": run.adapter_version,
             "reason": (run.metrics or {}).get("reason") or run.error}
            for run in runs
        ],
        "decisions": [
            {"eval_run_id": d.eval_run_id, "candidate": d.candidate_version,
             "against": d.champion_version or "base", "status": d.status, "why": d.reasons[0]}
            for d in decisions
        ],
        "promotions": [
            {"at": p.at.isoformat(), "kind": p.kind, "from": p.from_version or "base",
             "to": p.to_version or "base", "by": p.by, "forced": p.forced}
            for p in registry.promotions(session, limit=recent)
        ],
    }


def adapter_detail(session: Session, *, version: str, base_model_dir: Path | None = None
                   ) -> dict[str, Any]:
    """One adapter: registry row, its training run, its manifest and a loss-curve summary.
    `base_model_dir`: also verify the folder against that base model. Raises UnknownAdapter."""
    adapter = registry.get(session, version=version)
    run = session.get(TrainingRun, adapter.training_run_id) if adapter.training_run_id else None
    detail: dict[str, Any] = {**_registry_fields(adapter), "path": adapter.path}
    try:
        if base_model_dir is not None:
            verify(Path(adapter.path), base_model_dir, checksum=adapter.checksum)
            detail["verified"] = True
        manifest = read_manifest(Path(adapter.path))
        detail["manifest"] = {
            "created_at": manifest.created_at, "base_model": manifest.base_model,
            "data_watermark": manifest.data_watermark, "data": manifest.data,
            "methods": manifest.methods, "hyperparameters": manifest.hyperparameters,
            "seed": manifest.seed, "metrics": manifest.metrics,
        }
    except AdapterError as exc:
        detail["verified"] = False
        detail["problem"] = str(exc)
    decision = latest_gate_decision(session, candidate_version=version)
    if decision is not None:
        detail["gate_decision"] = {
            "status": decision.status, "eval_run_id": decision.eval_run_id,
            "decided_at": decision.decided_at.isoformat(),
            "against": decision.champion_version or "base", "reasons": decision.reasons,
            "suites": [
                {key: suite[key] for key in ("suite", "kind", "outcome", "n", "candidate_mean",
                                             "champion_mean", "difference")}
                for suite in decision.details.get("suites", [])
            ],
        }
    found = lineage(session, version=version)  # what it learned from, and how much is deleted
    detail["data_lineage"] = {**asdict(found), "flagged": found.flagged}
    # Its live trials: canaries and watches, with their decisions and numbers.
    detail["trials"] = [
        {"id": t.id, "kind": t.kind, "against": t.baseline_version or "base", "share": t.share,
         "started_at": t.started_at.isoformat(),
         "ended_at": t.ended_at.isoformat() if t.ended_at else None, "decision": t.decision,
         "reason": t.reason, "stats": t.stats}
        for t in canaries.trials(session, version=version, limit=20)]
    if run is not None:
        metrics = run.metrics or {}
        detail["training_run"] = {
            "id": run.id, "status": run.status, "method": run.method,
            "started_at": run.started_at.isoformat(),
            "finished_at": run.finished_at.isoformat() if run.finished_at else None,
            "stages": metrics.get("stages", []), "seconds": metrics.get("seconds"),
            "tokens_per_second": metrics.get("tokens_per_second"),
            "stop_reason": metrics.get("stop_reason"),
            "loss_curves": loss_curves(metrics.get("history", {}), metrics.get("stages", [])),
        }
    return detail


def loss_curves(history: dict[str, list[float]], stages: list[dict[str, Any]]
                ) -> list[dict[str, Any]]:
    """One curve per stage (an SFT loss and a DPO loss are not on one scale), cut from the
    run's per-step history by each stage's step count."""
    losses = history.get("loss") or []
    curves, start = [], 0
    for stage in stages:
        part = losses[start : start + stage["steps"]]
        start += stage["steps"]
        if part:
            curves.append({"method": stage["method"], **loss_curve(part)})
    return curves


def loss_curve(losses: list[float], *, width: int = 40) -> dict[str, Any]:
    """Per-step losses in short: first, lowest, last (mean of the last ten) and a sparkline of
    at most `width` buckets (each the mean of its steps)."""
    per = max(1, -(-len(losses) // width))
    buckets = [sum(chunk) / len(chunk) for chunk in
               (losses[i : i + per] for i in range(0, len(losses), per))]
    low, high = min(buckets), max(buckets)
    scale = (len(SPARK) - 1) / (high - low) if high > low else 0.0
    tail = losses[-10:]
    return {
        "steps": len(losses), "first": losses[0], "lowest": min(losses),
        "last": sum(tail) / len(tail),
        "sparkline": "".join(SPARK[round((value - low) * scale)] for value in buckets),
    }


def describe_detail(detail: dict[str, Any]) -> str:
    """`adapter_detail` as text for a terminal."""
    decision = detail.get("gate_decision")
    shown = shown_status(detail["status"], decision["status"] if decision else None)
    lines = [
        f"adapter {detail['version']}: {shown}"
        + (f" (status {detail['status']})" if shown != detail["status"] else "")
        + (" (forced)" if detail["forced"] else ""),
        f"  parent:      {detail['parent_version'] or 'the base model'}",
        f"  created:     {detail['created_at']}",
        f"  path:        {detail['path']}",
    ]
    if detail["promoted_at"]:
        lines.append(f"  promoted:    {detail['promoted_at']} by {detail['promoted_by']}")
    if "problem" in detail:
        lines.append(f"  PROBLEM:     {detail['problem']}")
    manifest = detail.get("manifest")
    if manifest:
        data = manifest["data"]
        lines.append(f"  data:        feedback ids {data['since']} < id <= {data['watermark']}, "
                     f"{data.get('feedback_ids', '?')} feedback items")
        for method, counts in data["examples"].items():
            lines.append(f"    {method:<5} {counts['new']} new + {counts['replayed']} replayed")
        hp = manifest["hyperparameters"]
        lines.append(f"  lora:        rank {hp['rank']}, alpha {hp['alpha']}, lr {hp['learning_rate']}, "
                     f"batch {hp['batch_size']}, seed {manifest['seed']}")
        lines.append(f"  base model:  {manifest['base_model'].get('path')}")
    run = detail.get("training_run")
    if run:
        lines.append(f"  training:    run {run['id']} {run['status']}, "
                     f"{(run['seconds'] or 0):.0f} s, stopped by {run['stop_reason']}")
        for stage in run["stages"]:
            lines.append(f"    {stage['method']:<5} {stage['steps']} steps on {stage['examples']} "
                         f"examples, loss {stage['first_loss']:.3f} -> {stage['final_loss']:.3f}")
        for curve in run["loss_curves"]:
            lines.append(f"  {curve['method']} loss:    {curve['sparkline']}  ({curve['steps']} "
                         f"steps: {curve['first']:.3f} first, {curve['lowest']:.3f} lowest, "
                         f"{curve['last']:.3f} last)")
    if decision:
        lines.append(f"  gate:        {decision['status']} against {decision['against']} "
                     f"(eval run {decision['eval_run_id']}, {decision['decided_at'][:19]})")
        lines += [f"    - {reason}" for reason in decision["reasons"]]
    if "data_lineage" in detail:
        lines.append(_describe_lineage(detail["data_lineage"]))
    for trial in detail.get("trials", []):  # its canaries and watches on live users
        what = f"{trial['kind']:<6} against {trial['against']}" + (
            f" on {trial['share']:.0%} of users" if trial["kind"] == "canary" else "")
        lines.append(f"  live:        {what}, {trial['started_at'][:19]}: "
                     f"{trial['decision'] or 'open'}")
        if trial["reason"] or (trial["stats"] or {}).get("summary"):
            lines.append(f"    - {trial['reason'] or trial['stats']['summary']}")
    return "\n".join(lines)


def _registry_fields(adapter: Adapter) -> dict[str, Any]:
    return {
        "version": adapter.version, "status": adapter.status,
        "parent_version": adapter.parent_version, "created_at": adapter.created_at.isoformat(),
        "promoted_at": adapter.promoted_at.isoformat() if adapter.promoted_at else None,
        "promoted_by": adapter.promoted_by, "forced": adapter.forced,
        "training_run_id": adapter.training_run_id,
    }


def _describe_lineage(found: dict[str, Any]) -> str:
    """The data lineage in lines, with the way out when some of it has been deleted."""
    lines = [f"  deleted:     {found['deleted']} of the {found['trained']} feedback rows it "
             f"learned from; {found['chain_deleted']} of {found['chain_trained']} with its "
             f"ancestors ({' <- '.join(found['chain'])})"]
    if found["unrecorded"]:
        lines.append(f"    not recorded for {', '.join(found['unrecorded'])} (GRPO alone, or "
                     "trained before lineage was kept)")
    if found["flagged"]:
        lines.append("    it learned from data deleted since; retrain without it: "
                     "`lifelong train --now --fresh` (or POST /admin/train with fresh and now), a "
                     "candidate the gate judges as usual")
    return "\n".join(lines)
