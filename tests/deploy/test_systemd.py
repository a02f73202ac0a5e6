"""deploy/systemd/lifelong.service and deploy/lifelong.example.yaml: the unit passes
`systemd-analyze verify` (no warning either: a misspelt key is only a warning there), runs
`lifelong serve` with the example's settings, stops it gracefully, and keeps the hardening that
vLLM survives; the example settings are accepted by the real CLI.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lifelong.daemon.settings import Settings
from lifelong.evals import sandbox_child

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
UNIT = DEPLOY / "systemd" / "lifelong.service"
EXAMPLE_CONFIG = DEPLOY / "lifelong.example.yaml"
INSTALLED_VENV = "/opt/lifelong/.venv"
SHUTDOWN_AFTER_DRAIN_S = 2 * 30 + 10  # log + feedback writer flush, trainer and vLLM stop (app.py)
CONFIG = "--config /etc/lifelong/lifelong.yaml"
Unit = dict[str, dict[str, list[str]]]


def unit_entries(text: str) -> Unit:
    """Section -> key -> values (systemd keys such as Environment= may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        assert current is not None, f"key outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"not key=value: {line}"
        current.setdefault(key, []).append(value)
    return sections


@pytest.fixture(scope="module")
def unit() -> Unit:
    return unit_entries(UNIT.read_text())


@pytest.fixture
def example_settings(deploy_settings: Any) -> Settings:
    return deploy_settings(EXAMPLE_CONFIG, {})


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verifies_the_unit_without_a_warning(tmp_path: Path) -> None:
    # verify checks that ExecStart's program exists: point it at this checkout's venv.
    local = tmp_path / UNIT.name
    local.write_text(UNIT.read_text().replace(INSTALLED_VENV, str(Path(sys.prefix))))
    result = subprocess.run(["systemd-analyze", "verify", str(local)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "" and result.stdout.strip() == "", result.stderr + result.stdout


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_catches_a_misspelt_key(tmp_path: Path) -> None:
    local = tmp_path / UNIT.name
    local.write_text(UNIT.read_text().replace(INSTALLED_VENV, str(Path(sys.prefix)))
                     .replace("KillMode=mixed", "KillMod=mixed"))
    result = subprocess.run(["systemd-analyze", "verify", str(local)], capture_output=True,
                            text=True, timeout=60)
    assert "Unknown key 'KillMod'" in result.stderr


def test_unit_serves_with_the_config_file_as_a_dedicated_user(unit: Unit) -> None:
    service = unit["Service"]
    assert service["ExecStart"] == [f"{INSTALLED_VENV}/bin/lifelong serve {CONFIG}"]
    assert service["ExecStartPre"] == [f"{INSTALLED_VENV}/bin/lifelong db upgrade {CONFIG}"]
    assert service["User"] == ["lifelong"] and service["Group"] == ["lifelong"]
    assert service["Restart"] == ["on-failure"]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_unit_stops_the_gateway_first_and_waits_for_its_drain(unit: Unit, example_settings: Settings) -> None:
    service = unit["Service"]
    # mixed: SIGTERM to the gateway alone (it stops vLLM and the trainer in order), SIGKILL to
    # every process left after the timeout.
    assert service["KillMode"] == ["mixed"] and service["KillSignal"] == ["SIGTERM"]
    timeout = int(service["TimeoutStopSec"][0])
    assert timeout > example_settings.gateway.drain_timeout_s + SHUTDOWN_AFTER_DRAIN_S


def test_unit_can_write_the_data_dir_and_nothing_else(unit: Unit, example_settings: Settings) -> None:
    service = unit["Service"]
    assert service["ProtectSystem"] == ["strict"] and service["NoNewPrivileges"] == ["yes"]
    data_dir = str(example_settings.data_dir)
    assert service["ReadWritePaths"] == [data_dir]
    assert f"/var/lib/{service['StateDirectory'][0]}" == data_dir
    assert f"HOME={data_dir}" in service["Environment"]


def test_unit_leaves_out_the_hardening_that_breaks_cuda(unit: Unit) -> None:
    service = unit["Service"]
    for key in ("PrivateDevices", "MemoryDenyWriteExecute", "ProcSubset", "SystemCallFilter",
                "DevicePolicy"):
        assert key not in service, f"{key} breaks vLLM on a GPU (see the unit's comment)"


def test_unit_lets_the_sandbox_build_its_namespaces_and_no_others(unit: Unit) -> None:
    # RestrictNamespaces=yes turned python_tests off on every systemd host: the sandbox needs these.
    flags = {"user": sandbox_child.CLONE_NEWUSER, "mnt": sandbox_child.CLONE_NEWNS,
             "pid": sandbox_child.CLONE_NEWPID, "net": sandbox_child.CLONE_NEWNET,
             "ipc": sandbox_child.CLONE_NEWIPC, "uts": sandbox_child.CLONE_NEWUTS}
    allowed = unit["Service"]["RestrictNamespaces"][0].split()
    assert sum(flags[name] for name in set(allowed)) == sandbox_child.UNSHARED


def test_lifelong_config_show_accepts_the_example(tmp_path: Path) -> None:
    env = {"PATH": str(Path(sys.prefix) / "bin"), "HOME": str(tmp_path)}  # no LIFELONG_* leaks in
    result = subprocess.run(
        [str(Path(sys.prefix) / "bin" / "lifelong"), "config", "show", "--config", str(EXAMPLE_CONFIG)],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "data_dir: /var/lib/lifelong" in result.stdout
    assert "sha256: '***'" in result.stdout  # the placeholder hashes validate, and are masked


def test_example_placeholder_keys_open_nothing(example_settings: Settings) -> None:
    # The example must be safe to start as it is: its hashes are not sha256 of any known key.
    hashes = {key.sha256.get_secret_value() for key in example_settings.gateway.api_keys}
    assert hashes == {"0" * 64, "1" * 64}
    assert example_settings.database.url is None  # the URL comes from the environment file
