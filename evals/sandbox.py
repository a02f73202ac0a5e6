"""A sandbox for untrusted Python: candidate code plus its tests, in a confined child process.

Layers, strongest first; each is used where this machine allows it, and a missing one is logged
once at WARNING (see `isolation()`):

- namespaces (util-linux `unshare`, unprivileged through a user namespace): a new network
  namespace (no interfaces but a down loopback: nothing reachable), a new PID namespace (the
  child is its init: when it dies, or we kill it, the kernel kills every process it left), new
  mount, IPC and UTS namespaces;
- Landlock (`sandbox_child.py`): reads only beneath the Python installation and system libraries,
  writes only in a throw-away working directory, no TCP, no signals outside. The daemon's data
  directory, the repository and home folders are not readable;
- seccomp (`sandbox_child.py`): no new processes and no non-Unix sockets, so a fork bomb fails at
  its first fork whoever we run as (RLIMIT_NPROC never binds root, and outside a user namespace it
  counts every process of the real user, so it is set only inside one);
- always: rlimits (address space, CPU seconds, file size, open files), a wall-clock timeout that
  kills the whole process group, an output cap (the reader stops and kills at the cap, so a flood
  never fills our memory), a scrubbed environment (PATH, HOME and TMPDIR only: no secrets), and
  a fresh working directory removed afterwards.

Without Landlock the code could read whatever the daemon's user can: run the daemon as its own
user, with a data directory no one else can read, or on a kernel with Landlock (5.13+).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import logging
import math
import os
import platform
import selectors
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

CHILD_SCRIPT = Path(__file__).with_name("sandbox_child.py")
# sandbox_child.py's exit codes: a layer it was asked for cannot be applied; CPU limit reached.
SETUP_FAILED, CPU_EXCEEDED = 125, 152
SYS_LANDLOCK_CREATE_RULESET, LANDLOCK_CREATE_RULESET_VERSION = 444, 1
SECCOMP_ARCHES = ("x86_64", "aarch64")  # the ones sandbox_child.py has syscall numbers for
UNSHARE_FLAGS = ["--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child",
                 "--mount", "--ipc", "--uts"]


@dataclass(frozen=True, slots=True)
class SandboxLimits:
    wall_s: float = 10.0
    cpu_s: int | None = None  # None: the wall-clock limit, rounded up
    memory_bytes: int = 512 * 2**20  # address space: Python itself needs ~30 MiB of it
    file_bytes: int = 2**20  # largest file the code may write
    output_bytes: int = 64 * 2**10  # stdout and stderr together; beyond, the run is stopped
    open_files: int = 64
    tasks: int = 64  # threads and processes, inside a user namespace only (see module doc)


@dataclass(frozen=True, slots=True)
class Isolation:
    """What this machine allows, probed once."""

    namespaces: bool
    landlock_abi: int  # 0: none
    seccomp: bool

    def layers(self) -> tuple[str, ...]:
        names = [("namespaces", self.namespaces), (f"landlock-v{self.landlock_abi}",
                 self.landlock_abi > 0), ("seccomp", self.seccomp)]
        return tuple(name for name, on in names if on) + ("rlimits", "timeout", "clean-env")


@dataclass(frozen=True, slots=True)
class SandboxOutcome:
    passed: bool
    reason: str
    exit_code: int | None  # negative: killed by that signal
    timed_out: bool
    output: str  # stdout and stderr interleaved, cut at the output limit
    duration_s: float
    layers: tuple[str, ...]


def _landlock_abi() -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    abi = libc.syscall(SYS_LANDLOCK_CREATE_RULESET, None, 0, LANDLOCK_CREATE_RULESET_VERSION)
    return max(0, int(abi))


def _namespaces_work(unshare: str | None) -> bool:
    if unshare is None:
        return False
    try:
        done = subprocess.run([unshare, *UNSHARE_FLAGS, "true"], capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@functools.cache
def isolation() -> Isolation:
    """Probe (once per process) which layers work here; log at WARNING the ones that do not."""
    found = Isolation(
        namespaces=_namespaces_work(shutil.which("unshare")),
        landlock_abi=_landlock_abi() if sys.platform == "linux" else 0,
        seccomp=sys.platform == "linux" and platform.machine() in SECCOMP_ARCHES,
    )
    if not found.namespaces:
        logger.warning("sandbox: no unprivileged user namespaces (or no `unshare`): sandboxed code "
                       "keeps the host network namespace; seccomp still refuses non-Unix sockets")
    if not found.landlock_abi:
        logger.warning("sandbox: no Landlock: sandboxed code can read any file the daemon's user "
                       "can; give the daemon its own user and an unreadable data directory")
    if not found.seccomp:
        logger.warning("sandbox: no seccomp filter for %s: process creation is limited only by "
                       "the timeout", platform.machine())
    return found


def _read_roots() -> list[str]:
    """Where the interpreter and its libraries live: all the sandboxed code may read."""
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             str(Path(sys.executable).resolve().parent), sysconfig.get_paths()["stdlib"],
             "/usr", "/lib", "/lib64", "/etc/ld.so.cache"}
    return sorted(roots)


def _command(found: Isolation, config: dict[str, object]) -> list[str]:
    # -I: ignore PYTHON* variables and the user's site folder; -B: write no .pyc anywhere.
    python = [sys.executable, "-I", "-B", str(CHILD_SCRIPT), json.dumps(config)]
    if found.namespaces:
        return [str(shutil.which("unshare")), *UNSHARE_FLAGS, *python]
    return python


def _reason(code: int | None, status_ok: bool, output: str, limits: SandboxLimits,
            cpu_s: int) -> str:
    if code == 0 and status_ok:
        return "tests passed"
    if code is not None and code < 0:
        sig = signal.Signals(-code)
        if sig == signal.SIGXCPU:
            return f"CPU time limit of {cpu_s} s exceeded"
        if sig == signal.SIGXFSZ:
            return f"file size limit of {limits.file_bytes} bytes exceeded"
        return f"killed by {sig.name}"
    if code == CPU_EXCEEDED:
        return f"CPU time limit of {cpu_s} s exceeded"
    if "unshare: sigprocmask" in output:  # how `unshare --fork` reports a child killed by a signal
        return "killed by a signal (CPU hard limit or out of memory)"
    if code == SETUP_FAILED and "sandbox setup failed" in output:
        return output.strip().splitlines()[-1]
    if code == 0:
        return "exited 0 before its tests finished"
    last = [line for line in output.strip().splitlines() if line.strip()]
    return f"tests failed (exit {code}): {last[-1][:200] if last else 'no output'}"


def run_python_tests(solution: str, tests: str, *, limits: SandboxLimits | None = None) -> SandboxOutcome:
    """Run `solution` then `tests` (Python source) in the sandbox; passed = tests ran to the end.

    Never raises for anything the code does; every way it can fail is a reason.
    """
    limits = limits or SandboxLimits()
    found = isolation()
    cpu_s = limits.cpu_s or math.ceil(limits.wall_s)
    rlimits = {"RLIMIT_AS": limits.memory_bytes, "RLIMIT_CPU": cpu_s,
               "RLIMIT_FSIZE": limits.file_bytes, "RLIMIT_NOFILE": limits.open_files,
               "RLIMIT_CORE": 0}
    if found.namespaces:
        rlimits["RLIMIT_NPROC"] = limits.tasks
    with tempfile.TemporaryDirectory(prefix="lifelong-sandbox-") as workdir:
        Path(workdir, "solution.py").write_text(solution, encoding="utf-8")
        Path(workdir, "tests.py").write_text(tests, encoding="utf-8")
        status_read, status_write = os.pipe()
        config = {"workdir": workdir, "status_fd": status_write, "limits": rlimits,
                  "landlock_abi": found.landlock_abi, "seccomp": found.seccomp,
                  "read_roots": _read_roots()}
        env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8"}
        started = time.monotonic()
        try:
            process = subprocess.Popen(
                _command(found, config), cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, pass_fds=(status_write,),
                start_new_session=True,  # its own process group: one killpg reaches all of it
            )
        finally:
            os.close(status_write)
        try:
            output, truncated, timed_out = _collect(process, limits, started)
        finally:
            _kill_group(process)  # whatever happened, nothing of it outlives this call
        code = process.returncode
        os.set_blocking(status_read, False)
        try:
            status_ok = os.read(status_read, 2) == b"ok"
        except BlockingIOError:
            status_ok = False
        finally:
            os.close(status_read)
    duration = time.monotonic() - started
    text = output.decode("utf-8", errors="replace")
    if timed_out:
        reason = f"timed out after {limits.wall_s:g} s"
    elif truncated:
        reason = f"output over the limit of {limits.output_bytes} bytes; stopped"
    else:
        reason = _reason(code, status_ok, text, limits, cpu_s)
    return SandboxOutcome(
        passed=reason == "tests passed", reason=reason, exit_code=code,
        timed_out=timed_out, output=text, duration_s=duration, layers=found.layers(),
    )


def _collect(process: subprocess.Popen[bytes], limits: SandboxLimits,
             started: float) -> tuple[bytes, bool, bool]:
    """(output, truncated, timed_out): read until EOF, the output cap or the deadline."""
    assert process.stdout is not None
    deadline = started + limits.wall_s
    chunks: list[bytes] = []
    size = 0
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                _kill_group(process)
                return b"".join(chunks), False, True
            if not selector.select(timeout=left):
                continue
            chunk = os.read(process.stdout.fileno(), 65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > limits.output_bytes:
                _kill_group(process)
                return b"".join(chunks)[: limits.output_bytes], True, False
    try:
        process.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        _kill_group(process)
        return b"".join(chunks), False, True
    return b"".join(chunks), False, False


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    # The group holds unshare and the namespace's init; killing init takes the namespace with it.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    if process.stdout is not None:
        process.stdout.close()

