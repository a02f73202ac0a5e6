"""Starts a real `lifelong serve` (with its own vLLM child) for the benchmarks in this folder: their
settings file, then lifelong.daemon.serve_process (the demo's and the tests' way to start one)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from lifelong.daemon.serve_process import DaemonNotReady, ServeProcess, free_port


def start_daemon(model: Path, workdir: Path, *, sections: dict[str, dict] | None = None,
                 **vllm: object) -> tuple[subprocess.Popen, str, str]:
    """(process, gateway URL, vLLM URL) once the gateway is ready; exits with a message if not.
    `vllm`: further vllm settings; `sections`: further settings sections (training, ...)."""
    vllm_port, gateway_port = free_port(), free_port()
    config = workdir / "lifelong.yaml"
    config.write_text(yaml.safe_dump({
        "data_dir": str(workdir / "data"),
        "base_model": {"path": str(model.resolve())},
        "vllm": {"port": vllm_port, **vllm},
        "gateway": {"port": gateway_port},
        "schedule": {"enabled": False},  # a benchmark measures one thing; no learning cycles
        **(sections or {}),
    }))
    lifelong = str(Path(sys.executable).parent / "lifelong")
    subprocess.run([lifelong, "db", "upgrade", "--config", str(config)], check=True,
                   stdout=subprocess.DEVNULL)
    server = ServeProcess(config, f"http://127.0.0.1:{gateway_port}", workdir / "daemon.log")
    try:
        server.start(timeout_s=300)
    except DaemonNotReady as exc:
        sys.exit(f"daemon did not start: {exc}")
    assert server.process is not None
    return server.process, server.url, f"http://127.0.0.1:{vllm_port}"
