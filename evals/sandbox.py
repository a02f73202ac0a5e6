"""A sandbox for untrusted Python: candidate code and its tests, each in a confined process.

Who submits what (README, "Threat model"): a `feedback` key can register a `python_tests` task
whose reference is test code; the model's answers are the code those tests grade. Both are
untrusted. `sandbox_child.py` is the inside (namespaces, an empty root, capabilities, Landlock,
seccomp, the graded-code/tests split that keeps the verdict out of the graded code's reach);
this module probes what the machine allows, refuses to run below the configured level, and
runs one answer: a wall-clock timeout that kills the whole process group, an output cap (the
reader stops and kills at the cap, so a flood never fills our memory), a scrubbed environment
(PATH, HOME, TMPDIR, LANG: no secrets) and a working folder removed afterwards.

Isolation levels (`SandboxPolicy.isolation`, the `evals.sandbox` settings section), each the
least python_tests may run under; a stronger layer present is always used too:

- full: user + mount + PID + network + IPC + UTS namespaces, an empty tmpfs root holding only
  the Python installation and system libraries read-only, and seccomp; Landlock where present.
- landlock: seccomp and Landlock ABI >= 4 (file access and TCP) without namespaces, for hosts
  that forbid them (systemd's RestrictNamespaces=, container runtimes' seccomp profiles).
- unconfined: runs with whatever is present, even nothing. Never the default; logged loudly.

Below its level, python_tests runs nothing: the verifier fails with the reason and registering
a python_tests task is refused (`missing()`); `describe()` is what operators are shown.
"""

from __future__ import annotations

import ast
import contextlib
import ctypes
import functools
import json
import logging
import math
import os
import platform
import selectors
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

logger = logging.getLogger(__name__)

CHILD_SCRIPT = Path(__file__).with_name("sandbox_child.py")
# sandbox_child.py's exit codes: a layer it was asked for cannot be applied; CPU limit reached.
SETUP_FAILED, CPU_EXCEEDED = 125, 152
SYS_LANDLOCK_CREATE_RULESET, LANDLOCK_CREATE_RULESET_VERSION = 444, 1
SECCOMP_ARCHES = ("x86_64", "aarch64")  # the ones sandbox_child.py has syscall numbers for
LANDLOCK_MIN_ABI = 4  # the first that also governs TCP
SETTING = "evals.sandbox"  # where the daemon's settings hold a SandboxPolicy (named in refusals)
Level = Literal["full", "landlock", "unconfined"]


@dataclass(frozen=True, slots=True)
class SandboxPolicy:
    """What the operator allows: the weakest isolation, and caps on what a task may ask for."""

    isolation: Level = "full"
    max_timeout_s: float = 60.0
    max_memory_mb: int = 2048
    scratch_mb: int = 64  # the tmpfs root: all the code may write (with namespaces)


@dataclass(frozen=True, slots=True)
class SandboxLimits:
    wall_s: float = 10.0
    cpu_s: int | None = None  # None: the wall-clock limit, rounded up
    memory_bytes: int = 512 * 2**20  # address space, per process: Python needs ~30 MiB of it
    file_bytes: int = 2**20  # largest file the code may write
    scratch_bytes: int = 64 * 2**20  # everything it may write (tmpfs size; with namespaces)
    output_bytes: int = 64 * 2**10  # stdout and stderr together; beyond, the run is stopped
    open_files: int = 64
    # Threads (RLIMIT_NPROC), set only inside a fresh user namespace, where the count starts at
    # zero; outside one it counts every process of the daemon's user.
    tasks: int = 64


@dataclass(frozen=True, slots=True)
class Isolation:
    """What this machine allows, probed once."""

    namespaces: bool  # user namespaces, and the empty root built in a mount namespace
    landlock_abi: int  # 0: none
    seccomp: bool

    def layers(self) -> tuple[str, ...]:
        names = [("namespaces", self.namespaces), ("empty-root", self.namespaces),
                 (f"landlock-v{self.landlock_abi}", self.landlock_abi > 0),
                 ("seccomp", self.seccomp)]
        return tuple(name for name, on in names if on) + (
            "no-capabilities", "rlimits", "timeout", "clean-env", "split-verdict")


@dataclass(frozen=True, slots=True)
class SandboxOutcome:
    passed: bool
    reason: str
    exit_code: int | None  # negative: killed by that signal; None: never started
    timed_out: bool
    output: str  # stdout and stderr interleaved, cut at the output limit
    duration_s: float
    layers: tuple[str, ...] = field(default=())


_policy = SandboxPolicy()


def configure(policy: SandboxPolicy) -> None:
    """Set the process's policy (the daemon does, from settings, as each command starts). The
    machine is probed later, at the first python_tests check; a level below `full` is logged at
    WARNING now, `unconfined` loudly."""
    global _policy
    _policy = policy
    if policy.isolation == "unconfined":
        logger.warning("sandbox: %s.isolation is `unconfined`: python_tests runs untrusted code "
                       "with only the layers this machine happens to have, perhaps none", SETTING)
    elif policy.isolation == "landlock":
        logger.warning("sandbox: %s.isolation is `landlock`: no namespaces and no empty root "
                       "are required; file access may rest on Landlock alone", SETTING)


def policy() -> SandboxPolicy:
    """The policy set by `configure` (the default one until then)."""
    return _policy


def missing(level: Level | None = None, found: Isolation | None = None) -> str | None:
    """Why python_tests cannot run at `level` (default: the policy's) here, or None if it can."""
    level = level or _policy.isolation
    found = found or isolation()
    if level == "unconfined":
        return None
    lacking = [] if found.seccomp else [f"seccomp (no filter for {platform.machine()})"]
    if level == "full" and not found.namespaces:
        lacking.append("user and mount namespaces (unprivileged user namespaces off, or "
                       "forbidden, e.g. by systemd's RestrictNamespaces=)")
    if level == "landlock" and found.landlock_abi < LANDLOCK_MIN_ABI:
        lacking.append(f"Landlock ABI >= {LANDLOCK_MIN_ABI} (this kernel has "
                       f"{found.landlock_abi or 'none'})")
    if not lacking:
        return None
    return (f"the sandbox needs {' and '.join(lacking)} for isolation {level!r}; "
            f"set {SETTING}.isolation to a level this host allows (see the README's threat model)")


def describe() -> dict[str, Any]:
    """For operators: the level asked for, the layers present, and whether python_tests runs."""
    reason = missing()
    return {"isolation": _policy.isolation, "layers": list(isolation().layers()),
            "python_tests": "on" if reason is None else "off", "reason": reason}


def check_tests(source: str) -> str | None:
    """What is wrong with `source` as python_tests' test code (it must parse, and hold at
    least one `assert` or a unittest TestCase, so that something is tested), or None."""
    try:
        tree = ast.parse(source)
    except SyntaxError as error:
        return f"the test code does not parse: {error.msg} (line {error.lineno})"
    for node in ast.walk(tree):
        if isinstance(node, ast.Assert):
            return None
        if isinstance(node, ast.ClassDef) and any(
                (isinstance(base, ast.Name) and base.id == "TestCase")
                or (isinstance(base, ast.Attribute) and base.attr == "TestCase")
                for base in node.bases):
            return None
    return "the test code holds no `assert` statement and no unittest TestCase: it tests nothing"


def _landlock_abi() -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    abi = libc.syscall(SYS_LANDLOCK_CREATE_RULESET, None, 0, LANDLOCK_CREATE_RULESET_VERSION)
    return max(0, int(abi))


def _namespaces_work(found: Isolation) -> bool:
    """Whether sandbox_child.py can build its namespaces and empty root here: it tries."""
    with tempfile.TemporaryDirectory(prefix="lifelong-sandbox-probe-") as workdir:
        for name in ("solution.py", "tests.py"):
            Path(workdir, name).touch()
        config = _config(found, workdir, SandboxLimits(), status_fd=-1) | {
            "namespaces": True, "probe": True}
        try:
            done = subprocess.run(_command(config), capture_output=True, timeout=20, cwd=workdir)
        except (OSError, subprocess.TimeoutExpired):
            return False
    if done.returncode != 0:
        logger.info("sandbox: namespaces probe failed: %s", done.stderr.decode(errors="replace"))
    return done.returncode == 0


@functools.cache
def isolation() -> Isolation:
    """Probe (once per process) which layers work here; log at WARNING the ones that do not."""
    found = Isolation(
        namespaces=False,
        landlock_abi=_landlock_abi() if sys.platform == "linux" else 0,
        seccomp=sys.platform == "linux" and platform.machine() in SECCOMP_ARCHES,
    )
    if sys.platform == "linux":
        found = Isolation(namespaces=_namespaces_work(found), landlock_abi=found.landlock_abi,
                          seccomp=found.seccomp)
    for name, on in (("user and mount namespaces", found.namespaces),
                     ("Landlock", found.landlock_abi > 0), ("seccomp", found.seccomp)):
        if not on:
            logger.warning("sandbox: no %s on this machine", name)
    return found


def _read_roots() -> list[str]:
    """Where the interpreter and its libraries live: all the sandboxed code may read."""
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             str(Path(sys.executable).resolve().parent), sysconfig.get_paths()["stdlib"],
             "/usr", "/lib", "/lib64", "/etc/ld.so.cache"}
    return sorted(roots)


def _command(config: dict[str, object]) -> list[str]:
    # -I: ignore PYTHON* variables and the user's site folder; -B: write no .pyc anywhere.
    return [sys.executable, "-I", "-B", str(CHILD_SCRIPT), json.dumps(config)]


def _config(found: Isolation, workdir: str, limits: SandboxLimits, *,
            status_fd: int) -> dict[str, object]:
    cpu_s = limits.cpu_s or math.ceil(limits.wall_s)
    rlimits = {"RLIMIT_AS": limits.memory_bytes, "RLIMIT_CPU": cpu_s,
               "RLIMIT_FSIZE": limits.file_bytes, "RLIMIT_NOFILE": limits.open_files,
               "RLIMIT_CORE": 0}
    if found.namespaces:
        rlimits["RLIMIT_NPROC"] = limits.tasks
    return {"workdir": workdir, "status_fd": status_fd, "limits": rlimits,
            "namespaces": found.namespaces, "scratch_bytes": limits.scratch_bytes,
            "landlock_abi": found.landlock_abi, "seccomp": found.seccomp,
            "read_roots": _read_roots()}


def _reason(code: int | None, status_ok: bool, output: str, limits: SandboxLimits,
            cpu_s: int) -> str:
    if code == 0 and status_ok:
        return "tests passed"
    if code is not None and code < 0:
        sig = signal.Signals(-code)
        if sig == signal.SIGXCPU:
            return f"CPU time limit of {cpu_s} s exceeded"
        return f"killed by {sig.name}"
    if code == CPU_EXCEEDED:
        return f"CPU time limit of {cpu_s} s exceeded"
    if code == SETUP_FAILED and "sandbox setup failed" in output:
        return output.strip().splitlines()[-1]
    if code == 0:
        return "exited 0 without the tests' verdict"
    last = [line for line in output.strip().splitlines() if line.strip()]
    return f"tests failed (exit {code}): {last[-1][:200] if last else 'no output'}"


def run_python_tests(solution: str, tests: str, *, limits: SandboxLimits | None = None) -> SandboxOutcome:
    """Run `solution` and, against it, `tests` (Python source) in the sandbox; passed = the
    tests' process says every test it found ran and passed (see sandbox_child.py).

    Never raises for anything the code does; every way it can fail is a reason. Below the
    policy's isolation level nothing runs: the outcome is a failure saying what is missing.
    """
    limits = limits or SandboxLimits()
    found = isolation()
    if (refused := missing(found=found)) is not None:
        return SandboxOutcome(passed=False, reason=refused, exit_code=None, timed_out=False,
                              output="", duration_s=0.0, layers=found.layers())
    cpu_s = limits.cpu_s or math.ceil(limits.wall_s)
    with tempfile.TemporaryDirectory(prefix="lifelong-sandbox-") as workdir:
        Path(workdir, "solution.py").write_text(solution, encoding="utf-8")
        Path(workdir, "tests.py").write_text(tests, encoding="utf-8")
        status_read, status_write = os.pipe()
        config = _config(found, workdir, limits, status_fd=status_write)
        env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8"}
        started = time.monotonic()
        try:
            process = subprocess.Popen(
                _command(config), cwd=workdir, env=env, stdin=subprocess.DEVNULL,
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

