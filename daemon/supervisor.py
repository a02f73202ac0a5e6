"""Keeps vLLM servers usable: launches the local one as a child, restarts it when it dies, and
re-applies the adapter state after every (re)start before the gateway sends it traffic.

`Supervisor` owns a child process (one `vllm serve`, in its own process group so its engine
workers go with it). `HealthWatch` does the same readiness dance for a server managed elsewhere.
Both call `on_ready(upstream)` (load the champion adapter) before marking the upstream ready, so a
restarted server never silently answers with the bare base model.

vLLM frees nothing when an adapter is unloaded (measured on 0.32), so every version a server has
registered stays in its memory. Past `replace_after` registrations the supervisor replaces its
child: a fresh server starts beside it on the other port, takes the champion and the versions
kept for rollback, and new requests move to it; requests in flight finish on the old one, which
is stopped once they have. No request fails, at the price of a second server's memory for a
minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path

from lifelong.daemon.upstream import HttpUpstream, Upstream

logger = logging.getLogger(__name__)

OnReady = Callable[[Upstream], Awaitable[None]]
Exclusive = Callable[[], AbstractAsyncContextManager[None]]
HEALTH_INTERVAL_S = 2.0
UNHEALTHY_KILL_AFTER = 15  # consecutive failed /health probes (~30 s) before a hung server is killed


# What a vLLM server may take from the daemon's environment: locale, paths, and the knobs of
# vLLM, OpenMP, CUDA/ROCm, torch and the Hugging Face libraries (offline flags, caches). Nothing
# else: the daemon's environment holds the database URL (LIFELONG_DATABASE__URL) and may hold
# cloud or Hugging Face credentials, which a server answering model requests has no use for.
CHILD_ENV_NAMES = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM",
    "PYTHONPATH", "PYTHONHASHSEED", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "VIRTUAL_ENV",
    "LD_LIBRARY_PATH", "LD_PRELOAD", "CC", "CXX",
    "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_RUNTIME_DIR",
    "HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
    "HF_HUB_DISABLE_TELEMETRY", "TRANSFORMERS_OFFLINE", "TRANSFORMERS_CACHE",
})
CHILD_ENV_PREFIXES = (
    "LC_", "VLLM_", "OMP_", "KMP_", "MKL_", "CUDA_", "NVIDIA_", "NCCL_", "HIP_", "ROCR_", "HSA_",
    "TORCH_", "TORCHINDUCTOR_", "PYTORCH_", "TRITON_",
)


def child_environment(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The part of `environ` a vLLM child gets (CHILD_ENV_NAMES and CHILD_ENV_PREFIXES)."""
    return {name: value for name, value in environ.items()
            if name in CHILD_ENV_NAMES or name.startswith(CHILD_ENV_PREFIXES)}


class StartupFailed(Exception):
    """vLLM did not become healthy; the message carries the end of its log."""


def new_group_dying_with_parent() -> None:
    # Runs in the child before exec: its own process group (killed as a whole at stop), and
    # SIGTERM from the kernel if the daemon dies without a chance to stop it (no orphans).
    os.setsid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class Supervisor:
    """One local vLLM child process, restarted with backoff up to `max_restarts` per window, and
    replaced by a fresh one (no request failing) once it has registered `replace_after` adapters.

    `command(port)` is the server's command line and `env(port)` its environment; the port
    alternates between the two `ports`.
    `on_replacement(upstream)` readies a replacement (champion and kept versions loaded) and
    `on_replaced()` runs right after the switch; both run inside `exclusive()`, which holds off
    promotions and evals so the adapter state cannot change under them.
    """

    def __init__(
        self,
        *,
        command: Callable[[int], Sequence[str]],
        ports: tuple[int, int],
        env: Callable[[int], dict[str, str]],
        upstream: HttpUpstream,
        log_path: Path,
        on_ready: OnReady,
        startup_timeout_s: float,
        max_restarts: int,
        restart_window_s: float,
        on_give_up: Callable[[str], None],
        replace_after: int | None = None,
        on_replacement: OnReady | None = None,
        on_replaced: Callable[[], None] = lambda: None,
        exclusive: Exclusive = contextlib.nullcontext,  # type: ignore[assignment]
    ) -> None:
        self.command = command
        self.ports = ports
        self.port = ports[0]
        self.env = env
        self.upstream = upstream
        self.log_path = log_path
        self.on_ready = on_ready
        self.startup_timeout_s = startup_timeout_s
        self.max_restarts = max_restarts
        self.restart_window_s = restart_window_s
        self.on_give_up = on_give_up
        self.replace_after = replace_after
        self.on_replacement = on_replacement or on_ready
        self.on_replaced = on_replaced
        self.exclusive = exclusive
        self.restarts = 0
        self.replacements = 0
        self.state = "stopped"  # stopped | starting | ready | restarting | failed
        self.last_error: str | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._recent_restarts: deque[float] = deque()
        self._next_replacement_try = 0.0

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    async def start(self) -> None:
        """Launch vLLM and wait until it is healthy and its adapters are loaded.

        Raises StartupFailed (with the end of vLLM's log) if it exits or times out first.
        """
        await self._launch_until_ready()
        self._task = asyncio.create_task(self._watch(), name="vllm-supervisor")

    async def _launch(self) -> None:
        self._process = await self._spawn(self.port)

    async def _spawn(self, port: int) -> asyncio.subprocess.Process:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log_file:
            log_file.write(
                f"\n==== lifelong: starting vLLM on port {port} at {time.ctime()} ====\n".encode())
            log_file.flush()
            process = await asyncio.create_subprocess_exec(
                *self.command(port),
                env=self.env(port),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
                preexec_fn=new_group_dying_with_parent,
            )
        logger.info("vLLM starting", extra={"pid": process.pid, "port": port,
                                            "log": str(self.log_path)})
        return process

    async def _launch_until_ready(self) -> None:
        self.state = "starting"
        await self._launch()
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout_s
        while not await self.upstream.health():
            if self._process.returncode is not None:
                raise StartupFailed(
                    f"vLLM exited with status {self._process.returncode} during start-up; "
                    f"its log ({self.log_path}) ends with:\n{tail(self.log_path)}"
                )
            if time.monotonic() > deadline:
                await self._kill()
                raise StartupFailed(
                    f"vLLM was not healthy after {self.startup_timeout_s:.0f} s "
                    f"(vllm.startup_timeout_s); its log ends with:\n{tail(self.log_path)}"
                )
            await asyncio.sleep(0.5)
        self.upstream.adapters_registered = 0  # a fresh server
        await self.on_ready(self.upstream)
        self.upstream.ready = True
        self.state = "ready"
        self.last_error = None
        logger.info("vLLM ready", extra={"pid": self._process.pid, "restarts": self.restarts})

    async def _watch(self) -> None:
        while not self._stopping:
            assert self._process is not None
            exited = asyncio.ensure_future(self._process.wait())
            failed_probes = 0
            replaced = False
            while not exited.done():
                await asyncio.wait({exited}, timeout=HEALTH_INTERVAL_S)
                if exited.done() or self._stopping:
                    break
                healthy = await self.upstream.health()
                failed_probes = 0 if healthy else failed_probes + 1
                self.upstream.ready = healthy and self.state == "ready"
                if failed_probes >= UNHEALTHY_KILL_AFTER:
                    logger.error("vLLM stopped answering /health; killing it")
                    await self._kill()
                elif healthy and self._replacement_due():
                    replaced = await self._replace()
                    if replaced:
                        break  # watch the replacement
            if replaced:
                exited.cancel()
                continue
            if self._stopping:
                exited.cancel()
                return
            self.upstream.ready = False
            # The API server is gone; its engine workers may not be. Clear the whole group.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
            self.last_error = f"vLLM exited with status {self._process.returncode}"
            logger.error("vLLM died", extra={"status": self._process.returncode})
            if not await self._restart():
                return

    def _replacement_due(self) -> bool:
        return (self.replace_after is not None and self.state == "ready"
                and self.upstream.adapters_registered >= self.replace_after
                and time.monotonic() >= self._next_replacement_try)

    async def _replace(self) -> bool:
        """Start a fresh server on the other port, ready it, move new requests to it, stop the
        old one once its requests are done. False (the old one keeps serving) if it fails."""
        old_process, port = self._process, self.ports[1] if self.port == self.ports[0] \
            else self.ports[0]
        assert old_process is not None
        url = self.upstream.base_url.rsplit(":", 1)[0] + f":{port}"
        logger.info("replacing vLLM: it has registered many adapters and frees none",
                    extra={"adapters": self.upstream.adapters_registered, "port": port})
        new = HttpUpstream(url, timeout_s=60)
        process = await self._spawn(port)
        try:
            deadline = time.monotonic() + self.startup_timeout_s
            while not await new.health():
                if process.returncode is not None or time.monotonic() > deadline:
                    raise StartupFailed(f"the replacement vLLM did not become healthy; its log "
                                        f"({self.log_path}) ends with:\n{tail(self.log_path)}")
                await asyncio.sleep(0.5)
            async with self.exclusive():
                await self.on_replacement(new)
                drained = self.upstream.retarget(url)
                self.upstream.adapters_registered = new.adapters_registered
                self._process, self.port = process, port
                self.on_replaced()
        except BaseException as exc:  # the old server keeps serving; tried again later
            await asyncio.shield(self._kill_process(process))
            if not isinstance(exc, Exception):
                raise  # cancelled: the daemon is stopping
            self.last_error = f"replacing vLLM failed: {exc}"
            logger.error("replacing vLLM failed", extra={"error": str(exc)[:2000]})
            self._next_replacement_try = time.monotonic() + 600
            return False
        finally:
            await new.aclose()
        self.replacements += 1
        try:
            await drained()
        finally:
            await asyncio.shield(self._kill_process(old_process))
        logger.info("vLLM replaced", extra={"pid": process.pid, "port": port,
                                            "replacements": self.replacements})
        return True

    async def _restart(self) -> bool:
        """Relaunch with exponential backoff; False once the restart budget is spent."""
        attempt = 0
        while not self._stopping:
            now = time.monotonic()
            while self._recent_restarts and now - self._recent_restarts[0] > self.restart_window_s:
                self._recent_restarts.popleft()
            if len(self._recent_restarts) >= self.max_restarts:
                self.state = "failed"
                reason = (
                    f"vLLM failed {len(self._recent_restarts)} times within "
                    f"{self.restart_window_s:.0f} s; giving up (log: {self.log_path})"
                )
                self.last_error = reason
                logger.error(reason)
                self.on_give_up(reason)
                return False
            self._recent_restarts.append(now)
            self.state = "restarting"
            await asyncio.sleep(min(30.0, 2.0**attempt))
            attempt += 1
            self.restarts += 1
            try:
                await self._launch_until_ready()
                return True
            except Exception as exc:  # a failed restart is retried, never fatal to the gateway
                self.last_error = str(exc)
                logger.error("vLLM restart failed", extra={"error": str(exc)[:2000]})
                await self._kill()
        return False

    async def _kill(self, grace_s: float = 20.0) -> None:
        if self._process is not None:
            await self._kill_process(self._process, grace_s)

    @staticmethod
    async def _kill_process(process: asyncio.subprocess.Process, grace_s: float = 20.0) -> None:
        if process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), grace_s)
        except TimeoutError:
            logger.warning("vLLM ignored SIGTERM; killing its process group")
        # The engine workers share the group; make sure none outlives the API server.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()

    async def stop(self) -> None:
        """Stop watching and terminate vLLM and everything it started."""
        self._stopping = True
        self.upstream.ready = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._kill()
        self.state = "stopped"
        logger.info("vLLM stopped")


class HealthWatch:
    """Readiness for a vLLM server managed elsewhere: polls /health, re-applies adapters on return."""

    def __init__(self, *, upstream: Upstream, on_ready: OnReady) -> None:
        self.upstream = upstream
        self.on_ready = on_ready
        self.restarts = 0  # the server is managed elsewhere: never restarted from here
        self.state = "starting"
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._probe()
        self._task = asyncio.create_task(self._watch(), name=f"health-{self.upstream.base_url}")

    async def _probe(self) -> None:
        healthy = await self.upstream.health()
        if healthy and not self.upstream.ready:
            try:
                await self.on_ready(self.upstream)
            except Exception as exc:  # retried at the next probe
                self.last_error = str(exc)
                logger.error("upstream adapter sync failed", extra={"error": str(exc)})
                return
            self.upstream.ready = True
            self.state = "ready"
        elif not healthy:
            self.upstream.ready = False
            self.state = "unreachable"

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_INTERVAL_S)
            await self._probe()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
