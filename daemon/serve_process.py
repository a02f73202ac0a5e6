"""`lifelong serve` as a child process, for whoever needs a whole daemon: the demo, the
benchmarks and the integration tests. Started on a settings file, awaited on `/readyz`, stopped
with SIGTERM (the daemon drains and stops its own vLLM), then SIGKILL to its process group if
it has not stopped in time. `free_port` picks the ports such a settings file names."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx

from lifelong.daemon.supervisor import new_group_dying_with_parent, tail


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the kernel's pick)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class DaemonNotReady(RuntimeError):
    """The daemon exited, or did not answer `/readyz` in time; the message ends with its log."""


class ServeProcess:
    """`python -m lifelong.daemon.cli serve --config CONFIG`, its output appended to `log`, in a
    process group of its own (Ctrl-C in a terminal reaches only its parent, which stops it in
    order) that dies with its parent. `env`: its environment (None: this process's)."""

    def __init__(self, config: Path, url: str, log: Path, *,
                 env: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.url = url
        self.log = log
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 300.0) -> None:
        """Start it and return once `/readyz` says 200. Raises DaemonNotReady (the process
        stopped) if it exits first or is not ready within `timeout_s`."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "lifelong.daemon.cli", "serve", "--config", str(self.config)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=None if self.env is None else dict(self.env),
                preexec_fn=new_group_dying_with_parent,
            )
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise DaemonNotReady(f"the daemon exited with status {self.process.returncode}; "
                                     f"its log ({self.log}) ends with:\n{tail(self.log, 40)}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            if time.monotonic() > deadline:
                self.stop(signal.SIGKILL)
                raise DaemonNotReady(f"the daemon was not ready after {timeout_s:.0f} s; "
                                     f"its log ({self.log}) ends with:\n{tail(self.log, 40)}")
            time.sleep(0.5)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 120.0) -> int | None:
        """Send `sig` to the daemon, then SIGKILL to its whole group after `timeout_s`; its exit
        status (None if it never started)."""
        process = self.process
        if process is None or process.poll() is not None:
            return process.returncode if process else None
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
        try:
            return process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            return process.wait()


@contextlib.contextmanager
def serving(config: Path, url: str, log: Path, *, env: Mapping[str, str] | None = None,
            timeout_s: float = 300.0) -> Iterator[ServeProcess]:
    """A started daemon for the `with` block, stopped at its end whatever happens."""
    daemon = ServeProcess(config, url, log, env=env)
    try:
        daemon.start(timeout_s)
        yield daemon
    finally:
        daemon.stop()
