"""`lifelong status` as text: the daemon's status (admin_client.DaemonStatus) in a few lines."""

from __future__ import annotations

from typing import Any

from lifelong.daemon.cli.admin_client import DaemonStatus


def describe_status(found: DaemonStatus) -> str:
    """Serving, waiting candidates, the cycle, the schedule (practice and sandbox when they
    say something), then the recent training runs, gate decisions and promotions."""
    cycle, schedule = found.cycle, found.schedule
    running = f"running (training run {cycle.training_run})" if cycle.running else "idle"
    lines = [
        f"serving:    {found.serving} (champion in the registry: {found.champion or 'base'})",
        f"waiting:    {', '.join(found.waiting) or 'no candidates'}",
        f"cycle:      {running}",
        f"schedule:   {'next ' + str(schedule.next_run) if schedule.enabled else 'off'}; "
        f"{schedule.new_feedback} new feedback items"
        + (f" (data trigger at {schedule.min_new_feedback})" if schedule.enabled else ""),
    ]
    practice = found.practice
    if practice is not None and (practice.enabled or practice.pauses):
        lines.append(f"practice:   {'paused for users' if practice.paused else 'on'}, "
                     f"{practice.pauses} pauses; "
                     f"{practice.last_check or 'due at the next idle check'}")
    if canary := found.canary:
        if trial := canary.open:
            lines.append(f"{trial.kind + ':':<11} {trial.version} vs {trial.baseline}"
                         + (f" on {trial.share:.0%} of users" if trial.kind == "canary" else "")
                         + f" since {trial.started_at[:19]}; {_trial_numbers(trial.stats)}")
        if trial := canary.last:
            lines.append(f"last trial: {trial.kind} of {trial.version}: {trial.decision} "
                         f"({(trial.ended_at or '')[:19]}): {trial.reason}")
    if box := found.sandbox:
        lines.append(f"sandbox:    {box.isolation}, python_tests {box.python_tests} "
                     f"({', '.join(box.layers)})" + (f": {box.reason}" if box.reason else ""))
    if cluster := found.cluster:
        leader = cluster.leader
        where = f" at {leader.url}" if leader and leader.url else ""
        lines.append(f"leader:     {leader.replica + where if leader else 'none now'} "
                     f"(this gateway: {cluster.replica})")
        lines.append("replicas:")
        for r in cluster.replicas:
            state = ("" if r.agrees else "  DISAGREES") if r.alive else \
                f"  gone ({r.seen_s_ago:.0f} s silent)"
            lines.append(f"  {r.replica}{' (leader)' if r.leader else ''}: alias -> "
                         f"{r.champion}{state}")
            lines += [f"    {s.url}: {'ready' if s.ready else 'OUT OF ROUTING'}, serves "
                      f"{', '.join(s.adapters) or 'the base model only'}"
                      + (f" ({s.error})" if s.error else "") for s in r.servers]
    if last := cycle.last:
        lines.append(f"last cycle: {last.outcome} ({last.trigger}, {last.started_at[:19]})"
                     + (f": {last.reason}" if last.reason else ""))
    lines.append("training runs:")
    lines += [f"  {r.id:>4}  {r.status:<11} {r.started_at[:19]}  "
              f"{r.adapter_version or '-'}  {r.reason or ''}".rstrip()
              for r in found.training_runs] or ["  none"]
    lines.append("gate decisions:")
    lines += [f"  {d.candidate} vs {d.against}: {d.why}" for d in found.decisions] or ["  none"]
    lines.append("promotions:")
    lines += [f"  {p.at[:19]}  {p.kind:<8} {p.from_version} -> {p.to} by {p.by}"
              + (" (forced)" if p.forced else "") for p in found.promotions] or ["  none"]
    return "\n".join(lines)


def _trial_numbers(stats: dict[str, Any] | None) -> str:
    """The live pass rates and the difference's always-valid interval, as the trial last
    counted them."""
    if not stats:
        return "not counted yet"
    return stats.get("summary") or "counted"
