"""Starts a real `lifelong serve` (with its own vLLM child) for the benchmarks in this folder."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
    log = (workdir / "daemon.log").open("wb")
    process = subprocess.Popen([lifelong, "serve", "--config", str(config)], stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    gateway = f"http://127.0.0.1:{gateway_port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{gateway}/readyz", timeout=2).status_code == 200:
                return process, gateway, f"http://127.0.0.1:{vllm_port}"
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    sys.exit(f"daemon did not start; see {workdir / 'daemon.log'}")
