"""The sandbox's inside: run as a script (`python -I -B sandbox_child.py CONFIG`), never imported.

Stdlib only: it runs before, and outside, anything of ours. Past 400 lines on purpose: `python
-I` puts no folder of ours on the path, so confinement and the G/T harness cannot be split into
modules it imports. The parent (`sandbox.py`) says which
layers to apply; one it asked for that cannot be applied ends the run with exit code 125 rather
than running the code less confined.

1. Namespaces (when asked): unshare a user, mount, PID, network, IPC and UTS namespace, then
   fork: the child is the PID namespace's init (when it dies the kernel kills all it left). It
   mounts a tmpfs as the new root, binds into it read-only only the Python installation and
   system library folders, /dev/null, /dev/zero and /dev/urandom, mounts /sandbox, the only
   writable folder, as a tmpfs of the scratch size, pivot_roots into it and makes the root
   read-only: no /proc, /run, /tmp, /etc (bar ld.so.cache), home folders, data directory or
   repository exist there.
2. It reads solution.py and tests.py, then forks the graded code's process G; it stays the tests'
   process T. Both then lock themselves down: rlimits, no_new_privs, every capability dropped
   (bounding set cleared, securebits locked), Landlock (reads only beneath the same folders,
   writes only in the working folder, no TCP, no signals out of its domain) and a seccomp filter
   (no new processes, execve, sockets of any family, io_uring, ptrace, process_vm_*, signals to
   other processes, mounts or new namespaces).
3. G runs solution.py as module `solution` and then serves calls; T runs tests.py as a real
   `__main__` module whose names for the solution's callables are proxies: each call goes to G
   over a pipe, arguments and results written with ascii() and read with ast.literal_eval
   (never pickle), so nothing G sends can be more than a literal or the name of a builtin
   exception. Mutable arguments (lists, dicts, sets) are copied back, so in-place functions work.

Why the verdict cannot be forged by the graded code: only T holds the status descriptor it
writes "ok" to, and T writes it after its own checks (tests.py finished; its TestCases, with or
without unittest.main(), and its pytest-style test functions ran and passed; at least one test
or assert statement ran, counted by T itself; no call went wrong). G runs in another process whose
descriptors are its stdout/stderr and its two pipe ends; it cannot signal, ptrace or read T's
memory (seccomp; also no /proc), and T's unittest and builtins live in T's own interpreter, so
patching them in G changes nothing T sees. What G answers to a call is only data the tests judge.
"""

import ast
import builtins
import ctypes
import json
import os
import platform
import resource
import signal
import struct
import sys
import traceback
import types

SETUP_FAILED = 125
CPU_EXCEEDED = 152  # 128 + SIGXCPU, as a shell would say it: the parent names the CPU limit
WORKDIR_INSIDE = "/sandbox"

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

# Namespaces and mounts (linux/sched.h, linux/mount.h).
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
UNSHARED = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC, MS_PRIVATE, MS_RELATIME = (
    1024, 2048, 4096, 16384, 1 << 18, 1 << 21)
LOCKED_MOUNT_FLAGS = MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOATIME | MS_NODIRATIME | MS_RELATIME
MNT_DETACH = 2
DEVICES = ("/dev/null", "/dev/zero", "/dev/urandom")

# Capabilities (linux/capability.h, linux/prctl.h, linux/securebits.h).
CAP_VERSION_3, CAP_SETPCAP = 0x20080522, 8
PR_CAPBSET_DROP, PR_SET_SECUREBITS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 24, 28, 47, 4
PR_SET_PDEATHSIG = 1
SECUREBITS_LOCKED = 0xEF  # noroot, no_setuid_fixup, no_cap_ambient_raise (each locked), keep_caps locked off

# Landlock (include/uapi/linux/landlock.h).
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FS_ALL_V1 = (1 << 13) - 1
FS_REFER, FS_TRUNCATE, FS_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
FILE_ONLY_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
RULE_PATH_BENEATH = 1

# seccomp (linux/seccomp.h, linux/filter.h, linux/audit.h). Hand-assembled BPF: the stdlib has
# no seccomp binding and this runs before anything but the stdlib may be imported.
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
RET_ALLOW, RET_ERRNO, RET_KILL_PROCESS = 0x7FFF0000, 0x00050000, 0x80000000
LD_W_ABS, JEQ, JGE, JSET, RET = 0x20, 0x15, 0x35, 0x45, 0x06
EPERM, ENOSYS, CLONE_THREAD = 1, 38, 0x00010000
# Refused with EPERM. Numbers from the kernel's syscall tables (x86_64: syscall_64.tbl; aarch64:
# the generic asm-generic/unistd.h, which has no fork/vfork at all).
DENIED = ("fork", "vfork", "execve", "execveat", "socket", "socketpair", "io_uring_setup",
          "io_uring_enter", "io_uring_register", "ptrace", "process_vm_readv",
          "process_vm_writev", "kill", "tkill", "tgkill", "pidfd_open", "pidfd_send_signal",
          "pidfd_getfd", "mount", "umount2", "pivot_root", "chroot", "unshare", "setns",
          "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "bpf",
          "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key",
          "open_by_handle_at", "name_to_handle_at",
          # SysV IPC (without an IPC namespace, the host's segments), other processes' priority
          "shmget", "shmat", "shmctl", "shmdt", "semget", "semop", "semctl", "semtimedop",
          "msgget", "msgsnd", "msgrcv", "msgctl", "setpriority", "ioprio_set", "kcmp",
          "get_robust_list")
# Allowed on the calling process only (first argument 0): without a PID namespace the daemon
# shares our uid, and prlimit() on its PID would cap it.
OWN_ONLY = ("prlimit64", "sched_setaffinity", "sched_setscheduler", "sched_setparam",
            "sched_setattr", "move_pages", "migrate_pages")
_GENERIC = {"io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
            "pidfd_send_signal": 424, "open_tree": 428, "move_mount": 429, "fsopen": 430,
            "fsconfig": 431, "fsmount": 432, "fspick": 433, "pidfd_open": 434, "clone3": 435,
            "pidfd_getfd": 438}
SYSCALLS = {
    "x86_64": (0xC000003E, {
        **_GENERIC, "fork": 57, "vfork": 58, "clone": 56, "execve": 59, "execveat": 322,
        "socket": 41, "socketpair": 53, "ptrace": 101, "process_vm_readv": 310,
        "process_vm_writev": 311, "kill": 62, "tkill": 200, "tgkill": 234, "mount": 165,
        "umount2": 166, "pivot_root": 155, "chroot": 161, "unshare": 272, "setns": 308,
        "bpf": 321, "perf_event_open": 298, "userfaultfd": 323, "keyctl": 250, "add_key": 248,
        "request_key": 249, "open_by_handle_at": 304, "name_to_handle_at": 303,
        "shmget": 29, "shmat": 30, "shmctl": 31, "shmdt": 67, "semget": 64, "semop": 65,
        "semctl": 66, "semtimedop": 220, "msgget": 68, "msgsnd": 69, "msgrcv": 70, "msgctl": 71,
        "setpriority": 141, "ioprio_set": 251, "kcmp": 312, "get_robust_list": 274,
        "prlimit64": 302, "sched_setaffinity": 203, "sched_setscheduler": 144,
        "sched_setparam": 142, "sched_setattr": 314, "move_pages": 279, "migrate_pages": 256}),
    "aarch64": (0xC00000B7, {
        **_GENERIC, "clone": 220, "execve": 221, "execveat": 281, "socket": 198,
        "socketpair": 199, "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271,
        "kill": 129, "tkill": 130, "tgkill": 131, "mount": 40, "umount2": 39, "pivot_root": 41,
        "chroot": 51, "unshare": 97, "setns": 268, "bpf": 280, "perf_event_open": 241,
        "userfaultfd": 282, "keyctl": 219, "add_key": 217, "request_key": 218,
        "open_by_handle_at": 265, "name_to_handle_at": 264,
        "shmget": 194, "shmat": 196, "shmctl": 195, "shmdt": 197, "semget": 190, "semop": 193,
        "semctl": 191, "semtimedop": 192, "msgget": 186, "msgsnd": 189, "msgrcv": 188,
        "msgctl": 187, "setpriority": 140, "ioprio_set": 30, "kcmp": 272, "get_robust_list": 100,
        "prlimit64": 261, "sched_setaffinity": 122, "sched_setscheduler": 119,
        "sched_setparam": 118, "sched_setattr": 274, "move_pages": 239, "migrate_pages": 238}),
}


def fail(message: str) -> None:
    sys.stderr.write(f"sandbox setup failed: {message}\n")
    sys.stderr.flush()
    os._exit(SETUP_FAILED)


def check(result: int, what: str) -> None:
    if result < 0:
        fail(f"{what}: {os.strerror(ctypes.get_errno())}")


def cpu_exceeded(signum: int, frame: object) -> None:
    os.write(2, b"CPU time limit exceeded\n")
    os._exit(CPU_EXCEEDED)


# --- 1. namespaces and the new root ----------------------------------------------------------

def enter_namespaces() -> None:
    """Unshare, map ourselves to root inside, fork; only the child (the new PID 1) returns. The
    parent half waits and exits as it did, so the sandbox's parent sees the code's exit."""
    uid, gid = os.getuid(), os.getgid()
    check(libc.unshare(UNSHARED), "unshare")
    for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
        with open(f"/proc/self/{name}", "w") as file:
            file.write(text)
    pid = os.fork()
    if pid == 0:
        return
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
        os.kill(os.getpid(), os.WTERMSIG(status))
    os._exit(os.waitstatus_to_exitcode(status))


def mount(source: str | None, target: str, fstype: str | None, flags: int,
          data: str | None = None) -> None:
    def raw(text: str | None) -> bytes | None:
        return None if text is None else text.encode()
    check(libc.mount(raw(source), raw(target), raw(fstype), ctypes.c_ulong(flags), raw(data)),
          f"mount {source} on {target}")


def bind_read_only(source: str, target: str) -> None:
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()
    mount(source, target, None, MS_BIND)
    # A remount must keep the flags the source mount has locked (nosuid, nodev, ...) in a user
    # namespace; statvfs's ST_* bits are the MS_* bits.
    kept = os.statvfs(target).f_flag & LOCKED_MOUNT_FLAGS
    mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | kept)


def build_root(workdir: str, read_roots: list[str], scratch_bytes: int) -> None:
    """Mount the new root (a tmpfs, read-only once filled) over `workdir`/root, with the
    working folder a tmpfs of `scratch_bytes` in it, and pivot into it."""
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount propagates to the host
    root = os.path.join(workdir, "root")
    os.mkdir(root)
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    bound: list[str] = []
    for path in sorted({os.path.realpath(p) for p in read_roots if os.path.exists(p)}, key=len):
        if not any(path == b or path.startswith(b.rstrip("/") + "/") for b in bound):
            bind_read_only(path, root + path)
            bound.append(path)
    for path in read_roots:  # e.g. /lib -> usr/lib: the same link inside
        if os.path.islink(path) and not os.path.lexists(root + path):
            os.makedirs(os.path.dirname(root + path), exist_ok=True)
            os.symlink(os.readlink(path), root + path)
    for device in DEVICES:
        os.makedirs(root + "/dev", exist_ok=True)
        open(root + device, "a").close()
        mount(device, root + device, None, MS_BIND)
    os.mkdir(root + WORKDIR_INSIDE)
    mount("tmpfs", root + WORKDIR_INSIDE, "tmpfs", MS_NOSUID | MS_NODEV,
          f"size={scratch_bytes},mode=0755")
    for name in ("solution.py", "tests.py"):
        with open(os.path.join(workdir, name), "rb") as src, \
                open(os.path.join(root + WORKDIR_INSIDE, name), "wb") as dst:
            dst.write(src.read())
    os.chdir(root)
    # pivot_root(".", "."): the old root ends up under the new one, and is detached at once.
    machine = platform.machine()
    check(libc.syscall(155 if machine == "x86_64" else 41, b".", b"."), "pivot_root")
    check(libc.umount2(b".", MNT_DETACH), "umount old root")
    # Read-only: nothing planted beside the bound folders (a path on sys.path that a .pth names
    # but this root lacks, say) can be imported by the tests' process later.
    mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    os.chdir("/")


# --- 2. locking a process down -----------------------------------------------------------------

def set_limits(limits: dict) -> None:
    for name, value in limits.items():
        # CPU: SIGXCPU at the soft limit (handled: a clear exit code), SIGKILL a second later.
        hard = value + 1 if name == "RLIMIT_CPU" else value
        resource.setrlimit(getattr(resource, name), (value, hard))
    signal.signal(signal.SIGXCPU, cpu_exceeded)


def drop_capabilities() -> None:
    header = ctypes.create_string_buffer(struct.pack("=Ii", CAP_VERSION_3, 0))
    data = ctypes.create_string_buffer(24)  # two {effective, permitted, inheritable} words
    check(libc.capget(header, data), "capget")
    permitted_low = struct.unpack("=6I", data.raw)[1]
    if permitted_low >> CAP_SETPCAP & 1:  # without CAP_SETPCAP there is nothing to give up here
        cap = 0
        while libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) == 0:
            cap += 1
        if cap == 0:
            fail(f"dropping the bounding set: {os.strerror(ctypes.get_errno())}")
        check(libc.prctl(PR_SET_SECUREBITS, SECUREBITS_LOCKED, 0, 0, 0), "securebits")
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)  # EINVAL before 4.3: none then
    check(libc.capset(header, bytes(24)), "capset")


def landlock(abi: int, workdir: str, read_roots: list[str]) -> None:
    handled_fs = FS_ALL_V1 | (FS_REFER if abi >= 2 else 0) | (FS_TRUNCATE if abi >= 3 else 0)
    handled_fs |= FS_IOCTL_DEV if abi >= 5 else 0
    handled_net = NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0
    attr = struct.pack("=QQQ", handled_fs, handled_net, scoped)
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    ruleset = libc.syscall(SYS_LANDLOCK_CREATE_RULESET, attr[:size], size, 0)
    check(ruleset, "landlock_create_ruleset")
    read = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR
    rules = [(path, read) for path in read_roots] + [(workdir, handled_fs)]
    rules += [(device, FS_READ_FILE | FS_WRITE_FILE) for device in DEVICES]
    for path, rights in rules:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except FileNotFoundError:
            continue  # e.g. no /lib64 here: nothing to allow
        if not os.path.isdir(path):
            rights &= FILE_ONLY_RIGHTS
        rule = struct.pack("=Qi", rights & handled_fs, fd)
        check(libc.syscall(SYS_LANDLOCK_ADD_RULE, ruleset, RULE_PATH_BENEATH, rule, 0),
              f"landlock_add_rule {path}")
        os.close(fd)
    check(libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0), "landlock_restrict_self")
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
    program.append((JEQ, numbers["clone3"], "enosys", None))  # libc falls back to clone
    program += [(JEQ, numbers[name], "eperm", None) for name in DENIED if name in numbers]
    program += [(JEQ, numbers[name], "own", None) for name in OWN_ONLY]
    program += [(JEQ, numbers["clone"], "clone", None), (RET, RET_ALLOW, None, None)]
    labels = {"clone": len(program)}
    program += [(LD_W_ABS, 16, None, None), (JSET, CLONE_THREAD, "allow", "eperm")]  # args[0]
    labels["own"] = len(program)
    program += [(LD_W_ABS, 16, None, None), (JEQ, 0, "allow", "eperm")]  # a pid_t: low word
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
    check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, fprog, 0, 0), "seccomp")


def lock_down(config: dict, workdir: str) -> None:
    try:
        set_limits(config["limits"])
        check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
        drop_capabilities()
        if config["landlock_abi"]:
            landlock(config["landlock_abi"], workdir, config["read_roots"])
        if config["seccomp"]:
            seccomp()
    except Exception as error:  # never run the code less confined than asked
        fail(f"{type(error).__name__}: {error}")


# --- 3. the graded code (G) and its tests (T) --------------------------------------------------

def send(fd: int, message: tuple) -> None:
    sys.stdout.flush()  # what the code printed so far comes before whatever follows this
    sys.stderr.flush()
    data = (ascii(message) + "\n").encode()  # ascii(): one line, whatever the strings hold
    while data:
        data = data[os.write(fd, data):]


def receive(stream) -> object:
    """One message, or None at end of file. Raises ValueError for anything but a literal."""
    line = stream.readline()
    return ast.literal_eval(line.decode("ascii")) if line else None


def is_literal(value: object) -> bool:
    try:
        return ast.literal_eval(ascii(value)) == value
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False


def builtin_exception(error: BaseException) -> str:
    for cls in type(error).__mro__:  # the nearest builtin: T can raise only builtin types
        if getattr(builtins, cls.__name__, None) is cls:
            return cls.__name__
    return "Exception"


def last_line(error: BaseException) -> str:
    return traceback.format_exception_only(type(error), error)[-1].strip()


def graded_process(source: str, requests: int, answers: int) -> None:
    """G: run solution.py, say what it defined, then answer calls until T hangs up."""
    module = types.ModuleType("solution")
    module.__file__ = "solution.py"
    sys.modules["solution"] = module
    sys.argv = ["solution.py"]
    try:
        exec(compile(source, "solution.py", "exec"), module.__dict__)
    except SystemExit as exit_:
        send(answers, ("exited", f"the solution exited (code {exit_.code}) before its tests ran"))
        os._exit(0)
    except BaseException as error:
        traceback.print_exc(limit=-3)
        sys.stderr.flush()
        send(answers, ("exited", f"the solution failed before its tests ran: {last_line(error)}"))
        os._exit(0)
    names: list[tuple[str, str, object]] = []
    for name, value in list(module.__dict__.items()):
        if name.startswith("__"):
            continue
        if isinstance(value, types.ModuleType):
            names.append((name, "module", value.__name__))
        elif callable(value):
            names.append((name, "callable", None))
        elif is_literal(value):
            names.append((name, "value", value))
    send(answers, ("ready", names))
    calls = os.fdopen(requests, "rb")
    while True:
        try:
            request = receive(calls)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            send(answers, ("refused", "the arguments are not Python literals"))
            continue
        if request is None:
            os._exit(0)
        if not (isinstance(request, tuple) and len(request) == 3):
            send(answers, ("refused", "the call is not (name, args, kwargs)"))
            continue
        name, args, kwargs = request
        try:
            result = module.__dict__[name](*args, **kwargs)
        except SystemExit as exit_:
            send(answers, ("exited", f"the solution exited (code {exit_.code}) in {name}()"))
            os._exit(0)
        except Exception as error:
            send(answers, ("raise", builtin_exception(error), str(error)))
            continue
        if not is_literal(result) or not is_literal(args) or not is_literal(kwargs):
            what = result if not is_literal(result) else args
            send(answers, ("refused", f"{name}() gave a {type(what).__name__}, which is not a "
                           "Python literal (python_tests passes only literals between the "
                           "solution and its tests)"))
            continue
        send(answers, ("return", result, args, kwargs))


# What G may send, by kind: the types of the parts after the kind. Anything else ends the run,
# so no message of G's makes T do more than return a literal or raise a builtin Exception.
SHAPES: dict[str, tuple[type, ...]] = {"ready": (list,), "exited": (str,), "refused": (str,),
                                       "raise": (str, str), "return": (object, tuple, dict)}


def well_formed(message: object) -> bool:
    if not (isinstance(message, tuple) and message and message[0] in SHAPES):
        return False
    shape = SHAPES[message[0]]
    return len(message) == 1 + len(shape) and all(
        isinstance(part, cls) for part, cls in zip(message[1:], shape, strict=True))


def importable(name: object) -> bool:
    """A module G names that T may import too: the standard library's, no `__main__`."""
    return isinstance(name, str) and name.split(".")[0] in sys.stdlib_module_names \
        and "__main__" not in name


class Harness:
    """T's side of the pipes, and what went wrong in a way the tests might have swallowed."""

    def __init__(self, requests: int, answers: int, graded_pid: int) -> None:
        self.requests, self.answers = requests, os.fdopen(answers, "rb")
        self.graded_pid = graded_pid
        self.problems: list[str] = []

    def receive(self) -> tuple:
        try:
            message = receive(self.answers)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            message = ("exited", "the solution sent something that is not a Python literal")
        if message is None:
            self.graded_ended()
        if not well_formed(message):
            self.stop("the solution's process sent a malformed answer")
        return message  # type: ignore[return-value]

    def graded_ended(self) -> None:
        """G is gone without a word: say how (its CPU limit keeps its own exit code)."""
        _, status = os.waitpid(self.graded_pid, 0)
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == CPU_EXCEEDED:
            os._exit(CPU_EXCEEDED)
        how = (f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
               if os.WIFSIGNALED(status) else f"exited with code {os.WEXITSTATUS(status)}")
        self.stop(f"the solution {how} before its tests finished")

    def stop(self, reason: str) -> None:
        sys.stdout.flush()
        sys.stderr.write(reason + "\n")
        sys.stderr.flush()
        os._exit(1)

    def proxy(self, name: str):
        def call(*args, **kwargs):
            send(self.requests, (name, args, kwargs))
            message = self.receive()
            kind = message[0]
            if kind == "exited":
                self.stop(message[1])
            if kind == "refused":
                self.problems.append(message[1])
                raise TypeError(message[1])
            if kind == "raise":
                cls = getattr(builtins, message[1], None)  # a builtin Exception, nothing else
                if not (isinstance(cls, type) and issubclass(cls, Exception)):
                    cls = Exception
                raise cls(message[2])
            if kind != "return" or len(message[2]) != len(args):
                self.stop("the solution's process sent a malformed answer")
            _, result, new_args, _ = message
            for old, new in zip(args, new_args, strict=True):  # in-place changes come back
                if isinstance(old, list | dict | set) and type(old) is type(new) and old != new:
                    old.clear()
                    (old.extend if isinstance(old, list) else old.update)(new)
            return result
        call.__name__ = call.__qualname__ = name
        return call


ASSERT_COUNTER = "__lifelong_assert_ran__"


def count_asserts(source: str) -> ast.Module:
    """tests.py with a call to ASSERT_COUNTER before each assert statement."""
    class Counter(ast.NodeTransformer):
        def visit_Assert(self, node: ast.Assert) -> list[ast.stmt]:
            call = ast.Expr(ast.Call(ast.Name(ASSERT_COUNTER, ast.Load()), [], []))
            return [ast.copy_location(call, node), node]

    return ast.fix_missing_locations(Counter().visit(ast.parse(source, "tests.py")))


def tests_process(source: str, harness: Harness, status_fd: int) -> None:
    """T: tests.py as a real __main__ module; "ok" only when its tests really ran and passed."""
    import importlib

    hello = harness.receive()
    if hello[0] == "exited":
        harness.stop(hello[1])
    module = types.ModuleType("__main__")
    module.__file__ = "tests.py"
    if hello[0] != "ready":
        harness.stop("the solution's process sent a malformed answer")
    for entry in hello[1]:
        if not (isinstance(entry, tuple) and len(entry) == 3 and isinstance(entry[0], str)):
            harness.stop("the solution's process sent a malformed answer")
        name, kind, value = entry
        # A solution's `all` or `len` must not stand in for the builtin the tests call.
        if name.startswith("__") or hasattr(builtins, name):
            continue
        if kind == "module" and importable(value):
            try:
                module.__dict__[name] = importlib.import_module(value)
            except ImportError:
                continue
        elif kind in ("callable", "value"):
            module.__dict__[name] = harness.proxy(name) if kind == "callable" else value
    solution = types.ModuleType("solution")  # `from solution import f` gets the same proxies
    solution.__dict__.update({k: v for k, v in module.__dict__.items() if k != "__file__"})
    sys.modules["__main__"], sys.modules["solution"] = module, solution
    sys.argv = ["tests.py"]
    results: list = []
    if "unittest" in source:  # importing it costs half a run: only for tests that use it
        import unittest

        class Main(unittest.TestProgram):
            # unittest.main() runs here without exiting, so the checks below still happen.
            def __init__(self, *args, **kwargs) -> None:
                kwargs["exit"] = False
                super().__init__(*args, **kwargs)
                results.append(self.result)

        unittest.main = Main  # type: ignore[misc]
    asserts = [0]  # assert statements run, counted by a call put before each one
    module.__dict__[ASSERT_COUNTER] = lambda: asserts.__setitem__(0, asserts[0] + 1)
    try:
        exec(compile(count_asserts(source), "tests.py", "exec"), module.__dict__)
    except SystemExit as exit_:
        if exit_.code not in (None, 0):
            harness.stop(f"the tests exited with code {exit_.code}")
    except BaseException as error:
        traceback.print_exc(limit=-3)
        harness.stop(last_line(error))
    loaded = sys.modules.get("unittest")  # not imported: no TestCase can exist
    cases = [] if loaded is None else [
        value for value in module.__dict__.values() if isinstance(value, type)
        and issubclass(value, loaded.TestCase) and value.__module__ == "__main__"]
    if loaded is not None and cases and not results:  # TestCases without unittest.main()
        suite = loaded.defaultTestLoader.loadTestsFromModule(module)
        results.append(loaded.TextTestRunner(stream=sys.stderr).run(suite))
    # pytest-style functions (defined in tests.py, named test*, no parameters) are called too.
    functions = [value for name, value in module.__dict__.items() if name.startswith("test")
                 and isinstance(value, types.FunctionType)
                 and value.__code__.co_filename == "tests.py" and value.__code__.co_argcount == 0]
    for function in functions:
        try:
            function()
        except BaseException as error:
            traceback.print_exc(limit=-3)
            harness.stop(f"{function.__name__}: {last_line(error)}")
    if harness.problems:
        harness.stop(harness.problems[0])
    ran = sum(result.testsRun for result in results)
    bad = sum(len(r.failures) + len(r.errors) + len(r.unexpectedSuccesses) for r in results)
    if bad:
        harness.stop(f"{bad} of {ran} tests failed")
    if ran + len(functions) + asserts[0] == 0:
        harness.stop("the tests ran zero tests (no TestCase test, test function or assert ran)")
    sys.stdout.flush()
    sys.stderr.flush()
    os.write(status_fd, b"ok")
    os._exit(0)


def main() -> None:
    config = json.loads(sys.argv[1])
    workdir = config["workdir"]
    try:
        if config["namespaces"]:
            enter_namespaces()
            build_root(workdir, config["read_roots"], config["scratch_bytes"])
            workdir = WORKDIR_INSIDE
            os.environ.update(HOME=workdir, TMPDIR=workdir)
        os.chdir(workdir)
        if config.get("probe"):  # the parent asks once whether all of the above works here
            lock_down(config, workdir)
            os._exit(0)
        with open("solution.py", encoding="utf-8") as file:
            solution = file.read()
        with open("tests.py", encoding="utf-8") as file:
            tests = file.read()
        requests_r, requests_w = os.pipe()
        answers_r, answers_w = os.pipe()
    except Exception as error:
        fail(f"{type(error).__name__}: {error}")
    status_fd, tests_pid = config["status_fd"], os.getpid()
    graded_pid = os.fork()
    if graded_pid == 0:
        # Dies with T; and T's status descriptor and pipe ends are closed before any code runs.
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != tests_pid:
            os._exit(1)
        for fd in (status_fd, requests_w, answers_r):
            os.close(fd)
        lock_down(config, workdir)
        graded_process(solution, requests_r, answers_w)
    os.close(requests_r)
    os.close(answers_w)
    lock_down(config, workdir)
    tests_process(tests, Harness(requests_w, answers_r, graded_pid), status_fd)


if __name__ == "__main__":
    main()
