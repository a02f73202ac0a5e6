"""The demo's parts that need no daemon: its settings overlay, its test-set split, its report.
(The loop it shows runs end to end in test_learning_loop.py; `make demo` runs the demo itself.)"""

from __future__ import annotations

from pathlib import Path

from lifelong.daemon import demo
from lifelong.daemon.judge import retention_source
from lifelong.daemon.settings import Settings


def test_the_demo_settings_overlay_the_users_and_keep_the_embedded_model(tmp_path: Path):
    mine = Settings(data_dir=tmp_path / "data", gateway={"port": 8123})
    (tmp_path / "data" / "base_model").mkdir(parents=True)
    where = demo.fresh_dir(tmp_path / "data" / "demo")
    settings, path = demo.demo_settings(mine, where)
    assert path.stat().st_mode & 0o777 == 0o600
    assert settings.data_dir == where and settings.gateway.port == 8123  # the user's own values
    assert settings.schedule.enabled and settings.schedule.min_new_feedback == 600
    assert settings.training.recipe == ["sft"] and settings.evals.gate.min_items == 30
    # Still the embedded model (through a link), so the judge freezes its retention suite.
    assert settings.base_model.path is None
    assert settings.base_model_path.resolve() == (tmp_path / "data" / "base_model").resolve()
    assert retention_source(settings)


def test_the_users_never_ask_a_test_set_number():
    assert len(demo.TEST_NUMBERS) == 30
    assert not set(demo.TEST_NUMBERS) & set(demo.ASKED_NUMBERS)
    assert set(demo.TEST_NUMBERS) | set(demo.ASKED_NUMBERS) == set(range(10, 100))
    assert demo.repeat(47) == ("Repeat 47.", "47")


def test_the_report_is_a_table_and_a_png(tmp_path: Path):
    rows = [demo.VersionRow("base", "base", 0.0, 1.0, at=0.0),
            demo.VersionRow("v0001", "promoted", 0.9, 0.99, why="approved: improved", at=200.0)]
    seen = [demo.Observation(at=float(n), skill=demo.NEW_SKILL, version="base", passed=n > 50)
            for n in range(100)]
    lines = demo.table(rows).splitlines()
    assert lines[2].split()[:4] == ["base", "base", "0.0%", "100.0%"]
    assert lines[3].split()[:4] == ["v0001", "promoted", "90.0%", "99.0%"]
    png = demo.plot(rows, seen, tmp_path / "curve.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
