"""`lifelong serve` as a child (daemon/serve_process.py): a daemon that cannot start is reported
with its log's end; the integration tests' daemons (conftest.py) start and stop with it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lifelong.daemon.serve_process import DaemonNotReady, ServeProcess, free_port


def test_a_daemon_that_exits_at_start_up_is_reported_with_its_log(tmp_path: Path):
    port = free_port()
    config = tmp_path / "lifelong.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"),
                                      "gateway": {"port": port}, "vllm": {"port": "http"}}))
    server = ServeProcess(config, f"http://127.0.0.1:{port}", tmp_path / "logs" / "daemon.log")
    with pytest.raises(DaemonNotReady, match=r"exited with status 2(.|\n)*vllm\.port"):
        server.start(timeout_s=120)
    assert server.stop() == 2
