"""The admin commands' typed client (daemon/cli/admin_client.py) and status text: they read what
the real gateway answers, and fail in one line naming the fix; `lifelong demo` without its extra
says how to install it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lifelong.daemon.cli.admin_client import AdminClient, AdminError, DaemonStatus, Promoted
from lifelong.daemon.cli.status import describe_status
from lifelong.daemon.gateway.admin.protocol import PromotedOut
from lifelong.daemon.serve_process import free_port

LIFELONG = str(Path(sys.executable).parent / "lifelong")


def test_the_status_of_a_fresh_gateway_reads_as_typed_fields_and_text(
    in_process_gateway, tmp_path: Path, migrated_sqlite_file: Path
):
    import shutil

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    shutil.copy(migrated_sqlite_file, data_dir / "lifelong.db")
    for client in in_process_gateway(data_dir, {"ops": "sk-ops"}, scopes=("admin",)):
        document = client.get("/admin/status").json()
    found = DaemonStatus.model_validate(document)
    assert (found.serving, found.champion, found.waiting) == ("base", None, [])
    assert not found.cycle.running and found.cycle.last is None
    assert found.sandbox is not None and found.practice is not None
    lines = describe_status(found).splitlines()
    assert lines[:4] == ["serving:    base (champion in the registry: base)",
                         "waiting:    no candidates", "cycle:      idle",
                         "schedule:   off; 0 new feedback items"]
    assert lines[-6:] == ["training runs:", "  none", "gate decisions:", "  none",
                          "promotions:", "  none"]


def test_status_text_names_runs_decisions_and_promotions():
    found = DaemonStatus.model_validate({
        "serving": "v0002", "champion": "v0002", "waiting": ["v0003"],
        "cycle": {"running": True, "training_run": 4,
                  "last": {"trigger": "data", "started_at": "2026-01-02T03:04:05.678+00:00",
                           "outcome": "promoted", "reason": None, "steps": []}},
        "schedule": {"enabled": True, "next_run": "2026-01-02T04:00:00+00:00",
                     "min_new_feedback": 200, "new_feedback": 17},
        "practice": {"enabled": True, "paused": True, "pauses": 2, "run_waiting": False,
                     "last_check": None},
        "training_runs": [{"id": 4, "status": "running", "started_at": "2026-01-02T03:05:00",
                           "adapter_version": None, "reason": None}],
        "decisions": [{"eval_run_id": 1, "candidate": "v0002", "against": "base",
                       "status": "approved", "why": "approved: improved"}],
        "promotions": [{"at": "2026-01-02T03:09:00+00:00", "kind": "promote", "from": "base",
                        "to": "v0002", "by": "gate", "forced": True}],
    })
    text = describe_status(found)
    assert "cycle:      running (training run 4)" in text
    assert ("schedule:   next 2026-01-02T04:00:00+00:00; 17 new feedback items "
            "(data trigger at 200)") in text
    assert "practice:   paused for users, 2 pauses; due at the next idle check" in text
    assert "last cycle: promoted (data, 2026-01-02T03:04:05)" in text
    assert "     4  running     2026-01-02T03:05:00  -" in text
    assert "  v0002 vs base: approved: improved" in text
    assert "  2026-01-02T03:09:00  promote  base -> v0002 by gate (forced)" in text


def test_the_promotion_answer_has_the_fields_the_gateway_sends():
    assert set(Promoted.model_fields) == set(PromotedOut.model_fields)


def test_an_unreachable_daemon_is_one_line_naming_the_fix(tmp_path: Path):
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(AdminError, match="is `lifelong serve` running"):
        AdminClient(url, None, timeout_s=5).status()
    done = subprocess.run([LIFELONG, "status", "--url", url, "--data-dir", str(tmp_path)],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "is `lifelong serve` running? (--url)" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_demo_without_its_extra_says_how_to_install_it(tmp_path: Path):
    # As if matplotlib were not installed (a None in sys.modules hides it from find_spec).
    code = ("import sys; sys.modules['matplotlib'] = None; "
            f"sys.argv = ['lifelong', 'demo', '--data-dir', {str(tmp_path)!r}]; "
            "from lifelong.daemon.cli import main; main()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert "matplotlib" in done.stderr and "pip install 'lifelong[demo]'" in done.stderr
    assert list(tmp_path.iterdir()) == []  # nothing started, nothing written
