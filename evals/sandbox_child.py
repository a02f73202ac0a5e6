"""The sandbox's inside: run as a script (`python -I sandbox_child.py ...`), never imported by us.

Given a working directory holding `solution.py` and `tests.py`, it locks itself down and then runs
the two, in that order, in one namespace:

1. resource limits (address space, CPU seconds, file size, open files; processes only inside
   a fresh user namespace, where the count starts at zero: outside one, RLIMIT_NPROC counts every
   process of the real user and would break unrelated work);
2. Landlock (unprivileged LSM): reads only beneath the Python installation and the system
   library folders, writes only in the working directory, no TCP bind/connect, no signals or
   abstract sockets beyond its own domain. The daemon's data directory is simply not on the list;
3. seccomp: no new processes (fork, vfork, clone without CLONE_THREAD; clone3 answers ENOSYS so
   libc falls back to clone for threads) and no sockets but AF_UNIX. This is what stops a fork
   bomb when the parent runs as root, where RLIMIT_NPROC never applies.

The parent (`sandbox.py`) says which layers to apply; a layer it asked for that cannot be applied
ends the run with exit code 125 rather than running the code less confined. Stdlib only: it runs
before, and outside, anything of ours.

Passing needs more than exit code 0: after the code (candidate then tests) finishes, the script
writes "ok" to the status descriptor, so code that exits early (`sys.exit(0)` before the tests)
does not pass. This guards against mistakes, not against code that goes looking for the harness.
"""

import ctypes
import json
import os
import platform
import resource
import signal
import struct
import sys
import traceback

SETUP_FAILED = 125
CPU_EXCEEDED = 152  # 128 + SIGXCPU, as a shell would say it; reported as an exit code because
# `unshare --fork` cannot pass a child's death by signal on (it exits 1 instead)

# Landlock (include/uapi/linux/landlock.h).
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FS_ALL_V1 = (1 << 13) - 1
FS_REFER, FS_TRUNCATE, FS_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
FILE_ONLY_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
RULE_PATH_BENEATH = 1

# seccomp (linux/seccomp.h, linux/filter.h, linux/audit.h).
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
RET_ALLOW, RET_ERRNO, RET_KILL_PROCESS = 0x7FFF0000, 0x00050000, 0x80000000
LD_W_ABS, JEQ, JGE, JSET, RET = 0x20, 0x15, 0x35, 0x45, 0x06
EPERM, ENOSYS, AF_UNIX, CLONE_THREAD = 1, 38, 1, 0x00010000
# arch: (AUDIT_ARCH, {syscall: number}); aarch64 has no fork/vfork syscalls at all.
SYSCALLS = {
    "x86_64": (0xC000003E, {"fork": 57, "vfork": 58, "clone": 56, "clone3": 435, "socket": 41}),
    "aarch64": (0xC00000B7, {"clone": 220, "clone3": 435, "socket": 198}),
}

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def fail(message: str) -> None:
    sys.stderr.write(f"sandbox setup failed: {message}\n")
    sys.stderr.flush()
    os._exit(SETUP_FAILED)


def cpu_exceeded(signum: int, frame: object) -> None:
    os.write(2, b"CPU time limit exceeded\n")
    os._exit(CPU_EXCEEDED)


def set_limits(limits: dict) -> None:
    for name, value in limits.items():
        # CPU: SIGXCPU at the soft limit (handled: a clear exit code), SIGKILL a second later.
        hard = value + 1 if name == "RLIMIT_CPU" else value
        resource.setrlimit(getattr(resource, name), (value, hard))
    signal.signal(signal.SIGXCPU, cpu_exceeded)


def landlock(abi: int, workdir: str, read_roots: list[str]) -> None:
    handled_fs = FS_ALL_V1 | (FS_REFER if abi >= 2 else 0) | (FS_TRUNCATE if abi >= 3 else 0)
    handled_fs |= FS_IOCTL_DEV if abi >= 5 else 0
    handled_net = NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0
    attr = struct.pack("=QQQ", handled_fs, handled_net, scoped)
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    ruleset = libc.syscall(SYS_LANDLOCK_CREATE_RULESET, attr[:size], size, 0)
    if ruleset < 0:
        fail(f"landlock_create_ruleset: {os.strerror(ctypes.get_errno())}")
    read = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR
    rules = [(path, read) for path in read_roots] + [(workdir, handled_fs)]
    rules.append(("/dev/null", FS_READ_FILE | FS_WRITE_FILE))
    for path, rights in rules:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except FileNotFoundError:
            continue  # e.g. no /lib64 here: nothing to allow
        if not os.path.isdir(path):
            rights &= FILE_ONLY_RIGHTS
        rule = struct.pack("=Qi", rights & handled_fs, fd)
        if libc.syscall(SYS_LANDLOCK_ADD_RULE, ruleset, RULE_PATH_BENEATH, rule, 0) < 0:
            fail(f"landlock_add_rule {path}: {os.strerror(ctypes.get_errno())}")
        os.close(fd)
    if libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0) < 0:
        fail(f"landlock_restrict_self: {os.strerror(ctypes.get_errno())}")
    os.close(ruleset)


def seccomp_program() -> bytes:
    arch, numbers = SYSCALLS[platform.machine()]
    # (code, k, jump-if-true label, jump-if-false label); labels resolve to relative offsets.
    program: list[tuple[int, int, str | None, str | None]] = [
        (LD_W_ABS, 4, None, None),  # seccomp_data.arch
        (JEQ, arch, None, "kill"),
        (LD_W_ABS, 0, None, None),  # seccomp_data.nr
    ]
    if arch == SYSCALLS["x86_64"][0]:
        program.append((JGE, 0x40000000, "kill", None))  # x32 numbers would dodge the table
    program.append((JEQ, numbers["clone3"], "enosys", None))
    program += [(JEQ, numbers[name], "eperm", None) for name in ("fork", "vfork") if name in numbers]
    program += [
        (JEQ, numbers["clone"], "clone", None),
        (JEQ, numbers["socket"], "socket", None),
        (RET, RET_ALLOW, None, None),
    ]
    labels = {"clone": len(program)}
    program += [(LD_W_ABS, 16, None, None), (JSET, CLONE_THREAD, "allow", "eperm")]  # args[0], low word
    labels["socket"] = len(program)
    program += [(LD_W_ABS, 16, None, None), (JEQ, AF_UNIX, "allow", "eperm")]
    for label, value in (("allow", RET_ALLOW), ("eperm", RET_ERRNO | EPERM),
                         ("enosys", RET_ERRNO | ENOSYS), ("kill", RET_KILL_PROCESS)):
        labels[label] = len(program)
        program.append((RET, value, None, None))
    out = b""
    for index, (code, k, jt, jf) in enumerate(program):
        offset = [labels[label] - index - 1 if label else 0 for label in (jt, jf)]
        out += struct.pack("=HBBI", code, offset[0], offset[1], k)
    return out


def seccomp() -> None:
    program = seccomp_program()
    buffer = ctypes.create_string_buffer(program)
    fprog = struct.pack("@HP", len(program) // 8, ctypes.addressof(buffer))  # native: padded
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, fprog, 0, 0) != 0:
        fail(f"seccomp: {os.strerror(ctypes.get_errno())}")


def run(path: str, namespace: dict) -> None:
    with open(path, encoding="utf-8") as file:
        exec(compile(file.read(), path, "exec"), namespace)


def main() -> None:
    config = json.loads(sys.argv[1])
    status_fd = config["status_fd"]
    os.chdir(config["workdir"])
    try:
        set_limits(config["limits"])
        # Required by both Landlock and seccomp for an unprivileged process; harmless otherwise.
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            fail(f"no_new_privs: {os.strerror(ctypes.get_errno())}")
        if config["landlock_abi"]:
            landlock(config["landlock_abi"], config["workdir"], config["read_roots"])
        if config["seccomp"]:
            seccomp()
    except Exception as error:  # never run the code less confined than asked
        fail(f"{type(error).__name__}: {error}")
    sys.argv = ["solution.py"]
    namespace = {"__name__": "__main__"}
    # The solution and its tests run as two units in one namespace, so an exit(0) inside the
    # solution (tests never ran) fails, while one from the tests (unittest.main()) passes.
    try:
        run("solution.py", namespace)
    except SystemExit as exit_:
        if exit_.code not in (None, 0):
            raise
        sys.stderr.write("the solution exited before its tests ran\n")
        os._exit(1)
    except BaseException:
        traceback.print_exc(limit=-3)
        sys.stderr.flush()
        os._exit(1)
    try:
        run("tests.py", namespace)
    except SystemExit as exit_:
        if exit_.code not in (None, 0):
            raise
    except BaseException:
        traceback.print_exc(limit=-3)
        sys.stderr.flush()
        os._exit(1)
    sys.stdout.flush()
    os.write(status_fd, b"ok")


if __name__ == "__main__":
    main()
