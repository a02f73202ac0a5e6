"""The sandbox contains what untrusted code tries, each attempt a failed run with a reason, and
leaves the machine as it was: no process outlives a run, nothing is read outside the sandbox.

Escapes are tried at both isolation levels that confine: `full` (this machine has every layer)
and `landlock` (namespaces reported missing by the probe, as under systemd's
RestrictNamespaces=). A level whose layers are missing runs nothing (fail closed). The probe is
monkeypatched to report a layer missing; the sandbox itself is always the real one.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil
import pytest

from lifelong.evals import sandbox
from lifelong.evals.sandbox import SandboxLimits, SandboxPolicy, isolation, run_python_tests
from lifelong.evals.verifiers import InvalidVerifierOptions, check_verifier, verify

QUICK = SandboxLimits(wall_s=5)
REPO = Path(__file__).resolve().parents[2]
PG_SOCKET = "/var/run/postgresql/.s.PGSQL.5432"
ADD = "def add(a, b):\n    return a + b\n"


@pytest.fixture(autouse=True)
def no_process_outlives_a_run():
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    yield
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
        if not left:
            return
        time.sleep(0.1)
    pytest.fail(f"processes left behind: {[p.cmdline() for p in left]}")


def use(monkeypatch, level: str, **found: object) -> None:
    """Run at isolation `level`, the probe reporting the real layers with `found` replaced."""
    real = isolation()
    probed = sandbox.Isolation(**{"namespaces": real.namespaces, "landlock_abi": real.landlock_abi,
                                  "seccomp": real.seccomp, **found})
    monkeypatch.setattr(sandbox, "isolation", lambda: probed)
    monkeypatch.setattr(sandbox, "_policy", SandboxPolicy(isolation=level))  # type: ignore[arg-type]


@pytest.fixture(params=["full", "landlock"])
def level(request, monkeypatch) -> str:
    if request.param == "landlock":
        use(monkeypatch, "landlock", namespaces=False)
    return request.param


def test_this_machine_gives_every_layer():
    # The tests below prove containment by the strongest layers; on this machine all are there.
    found = isolation()
    assert found.namespaces and found.landlock_abi >= 4 and found.seccomp
    assert sandbox.describe() == {"isolation": "full", "layers": list(found.layers()),
                                  "python_tests": "on", "reason": None}


# --- fail closed ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("level_", "found", "lacking"), [
    ("full", {"namespaces": False}, "user and mount namespaces"),
    ("full", {"seccomp": False}, "seccomp"),
    ("landlock", {"namespaces": False, "landlock_abi": 3}, "Landlock ABI >= 4"),
])
def test_missing_layers_run_nothing_and_say_which_setting(monkeypatch, tmp_path, level_, found,
                                                          lacking):
    use(monkeypatch, level_, **found)
    marker = tmp_path / "ran"
    outcome = run_python_tests(f"open({str(marker)!r}, 'w').close()\n", "assert True\n")
    assert not outcome.passed and outcome.exit_code is None
    assert lacking in outcome.reason and "evals.sandbox.isolation" in outcome.reason
    assert not marker.exists()
    assert sandbox.describe()["python_tests"] == "off"
    with pytest.raises(InvalidVerifierOptions, match="evals.sandbox.isolation"):
        check_verifier("python_tests", {}, reference="assert True\n")


def test_landlock_level_runs_without_namespaces(monkeypatch):
    use(monkeypatch, "landlock", namespaces=False)
    outcome = run_python_tests(ADD, "assert add(2, 3) == 5\n")
    assert outcome.passed and "namespaces" not in outcome.layers
    check_verifier("python_tests", {}, reference="assert True\n")


def test_unconfined_runs_with_nothing_only_when_asked(monkeypatch):
    use(monkeypatch, "unconfined", namespaces=False, landlock_abi=0, seccomp=False)
    assert run_python_tests(ADD, "assert add(2, 3) == 5\n").passed


# --- what the code cannot reach --------------------------------------------------------------------

def test_correct_code_passes_its_tests(level):
    outcome = run_python_tests(ADD, "assert add(2, 3) == 5\n")
    assert outcome.passed and outcome.reason == "tests passed"


@pytest.mark.parametrize("code", [
    f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({PG_SOCKET!r})\n",
    "import socket\nsocket.socketpair()\n",
    "import socket\nsocket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n",
    "import socket\nsocket.socket(socket.AF_NETLINK, socket.SOCK_RAW)\n",
    "import socket\nsocket.create_connection(('127.0.0.1', 5432), timeout=2)\n",
])
def test_no_socket_of_any_family(level, code):
    # The first once reached PostgreSQL's Unix socket from inside the sandbox, as postgres.
    outcome = run_python_tests(code, "assert True\n", limits=QUICK)
    assert not outcome.passed and "PermissionError" in outcome.reason


IO_URING_SETUP = """\
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.syscall(425, 8, ctypes.create_string_buffer(120))  # io_uring_setup(8, &params)
print("io_uring_setup", fd, ctypes.get_errno())
"""


def test_io_uring_cannot_be_set_up(level):
    # Its IORING_OP_SOCKET made an AF_INET socket past a filter that only looked at socket().
    outcome = run_python_tests(IO_URING_SETUP, "assert True\n", limits=QUICK)
    assert outcome.passed and "io_uring_setup -1 1\n" in outcome.output


@pytest.mark.parametrize("code", [
    "import os\nos.execv('/usr/bin/true', ['true'])\n",
    "import subprocess\nsubprocess.run(['true'])\n",
    "import os\nos.kill(os.getppid(), 9)\n",  # the tests' process
    "import ctypes\nassert ctypes.CDLL(None, use_errno=True).ptrace(16, os.getppid(), 0, 0) == 0\n",
    # Without a PID namespace the daemon shares our uid: none of these may reach it.
    "import resource\nresource.prlimit(os.getppid(), resource.RLIMIT_NOFILE, (3, 3))\n",
    "os.sched_setaffinity(os.getppid(), {0})\n",
    "os.setpriority(os.PRIO_USER, 0, 19)\n",
    "import ctypes\nassert ctypes.CDLL(None).shmget(0, 4096, 0o1600) >= 0\n",  # SysV IPC
])
def test_no_new_programs_no_ptrace_no_signals_out(level, code):
    outcome = run_python_tests("import os\n" + code, "assert True\n", limits=QUICK)
    assert not outcome.passed
    assert "PermissionError" in outcome.reason or "AssertionError" in outcome.reason


@pytest.fixture
def secrets(tmp_path) -> dict[str, str]:
    """Files the daemon's user can read and the sandboxed code must not: path -> a line of it."""
    data_dir = tmp_path / "lifelong-data"
    data_dir.mkdir()
    (data_dir / "lifelong.db").write_text("every interaction")
    return {"/etc/passwd": "root:", str(REPO / "README.md"): "lifelong",
            str(data_dir / "lifelong.db"): "every interaction",
            f"/proc/{os.getpid()}/environ": "PATH="}  # the daemon's own environment


def test_files_outside_the_sandbox_cannot_be_read(level, secrets):
    for path, content in secrets.items():
        assert content in Path(path).read_text(errors="replace")  # readable out here
        outcome = run_python_tests(f"print(open({path!r}).read())\n", "assert True\n", limits=QUICK)
        assert not outcome.passed, path
        assert ("FileNotFoundError" if level == "full" else "PermissionError") in outcome.reason
        assert content not in outcome.output


def test_the_root_is_empty_but_for_python_and_its_libraries():
    paths = ["/proc", "/run", "/var/run", "/tmp", "/etc/passwd", "/home", str(REPO / "README.md"),
             "/etc/ld.so.cache", os.__file__]
    # /tmp or /home exist inside only as the way to a Python installation bound beneath them
    # (a clean clone's .venv in /tmp, say); Landlock refuses to list them.
    roots = sandbox._read_roots()
    on_the_way = [any(root.startswith(path + "/") for root in roots) for path in paths[:7]]
    code = f"import os\nprint([os.path.exists(p) for p in {paths!r}], os.getcwd())\n"
    outcome = run_python_tests(code, "assert True\n", limits=QUICK)
    assert outcome.passed, outcome.reason
    assert outcome.output == f"{on_the_way + [True, True]} /sandbox\n"


def test_only_the_working_folder_is_writable_even_without_landlock(monkeypatch):
    # A folder made beside the bound ones (say one a .pth file names) could be imported from.
    use(monkeypatch, "full", landlock_abi=0)
    outcome = run_python_tests(f"import os\nos.makedirs({str(REPO / 'planted')!r})\n",
                               "assert True\n", limits=QUICK)
    assert not outcome.passed and "Read-only file system" in outcome.reason


def test_data_directory_cannot_be_listed_or_written(level, tmp_path):
    code = f"import os\nos.listdir({str(tmp_path)!r})\n"
    assert not run_python_tests(code, "assert True\n", limits=QUICK).passed
    code = f"open({str(tmp_path / 'planted')!r}, 'w').write('x')\n"
    assert not run_python_tests(code, "assert True\n", limits=QUICK).passed
    assert not (tmp_path / "planted").exists()


def test_every_capability_is_dropped(level):
    code = ("import ctypes, struct\nlibc = ctypes.CDLL(None)\n"
            "head = ctypes.create_string_buffer(struct.pack('=Ii', 0x20080522, 0))\n"
            "data = ctypes.create_string_buffer(24)\nlibc.capget(head, data)\n"
            "print('caps', struct.unpack('=6I', data.raw))\n")
    outcome = run_python_tests(code, "assert True\n", limits=QUICK)
    assert outcome.passed and "caps (0, 0, 0, 0, 0, 0)" in outcome.output


def test_writing_beyond_the_scratch_cap_fails():
    code = "for n in range(8):\n    open(f'f{n}', 'wb').write(b'x' * (2**20 - 4096))\n"
    outcome = run_python_tests(code, "assert True\n",
                               limits=SandboxLimits(wall_s=5, scratch_bytes=4 * 2**20))
    assert not outcome.passed and "No space left on device" in outcome.reason


def test_environment_holds_no_secrets(level, monkeypatch):
    monkeypatch.setenv("LIFELONG_DATABASE__URL", "postgresql://user:hunter2@db/lifelong")
    outcome = run_python_tests("import os\nprint(dict(os.environ))\n", "assert True\n",
                               limits=QUICK)
    assert outcome.passed and "hunter2" not in outcome.output


def test_working_directory_is_writable_and_thrown_away(level):
    code = ("import os\nopen('scratch.txt', 'w').write('hi')\n"
            "def scratch():\n    return open('scratch.txt').read()\n")
    before = set(os.listdir("/tmp"))
    outcome = run_python_tests(code, "assert scratch() == 'hi'\n", limits=QUICK)
    assert outcome.passed, outcome.reason
    assert {name for name in set(os.listdir("/tmp")) - before if "sandbox" in name} == set()


def test_threads_and_the_standard_library_still_work(level):
    code = ("import threading, json, decimal, resource, os, tempfile\n"
            "box = []\nt = threading.Thread(target=lambda: box.append(1))\nt.start()\nt.join()\n"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (32, 32))\n"  # its own limits, lowered
            "os.sched_setaffinity(0, os.sched_getaffinity(0))\n"
            "tempfile.NamedTemporaryFile().write(b'x')\n"
            "def got():\n    return box\n")
    outcome = run_python_tests(code, "assert got() == [1]\n", limits=QUICK)
    assert outcome.passed, outcome.output


# --- limits -------------------------------------------------------------------------------------

def test_infinite_loop_is_stopped_at_the_wall_clock_limit():
    outcome = run_python_tests("while True:\n    pass\n", "assert True\n",
                               limits=SandboxLimits(wall_s=2))
    assert not outcome.passed and outcome.timed_out
    assert outcome.reason == "timed out after 2 s"


def test_cpu_limit_stops_a_busy_loop_before_the_wall_clock():
    outcome = run_python_tests("while True:\n    pass\n", "assert True\n",
                               limits=SandboxLimits(wall_s=20, cpu_s=1))
    assert not outcome.passed and not outcome.timed_out
    assert outcome.reason == "CPU time limit of 1 s exceeded"


def test_fork_bomb_fails_at_its_first_fork(level):
    before = len(psutil.pids())
    outcome = run_python_tests("import os\nwhile True:\n    os.fork()\n", "assert True\n",
                               limits=QUICK)
    assert not outcome.passed
    assert "PermissionError" in outcome.reason
    assert len(psutil.pids()) < before + 20  # the machine never saw the bomb


def test_huge_output_is_cut_and_the_run_stopped():
    outcome = run_python_tests("while True:\n    print('x' * 1000)\n", "assert True\n",
                               limits=SandboxLimits(wall_s=10, output_bytes=10_000))
    assert not outcome.passed and not outcome.timed_out
    assert outcome.reason == "output over the limit of 10000 bytes; stopped"
    assert len(outcome.output) == 10_000


def test_memory_hog_gets_a_memory_error():
    outcome = run_python_tests("block = bytearray(4 * 2**30)\n", "assert True\n",
                               limits=SandboxLimits(wall_s=10, memory_bytes=256 * 2**20))
    assert not outcome.passed and "MemoryError" in outcome.reason


def test_big_file_is_refused():
    outcome = run_python_tests("open('big', 'wb').write(b'x' * 2**21)\n", "assert True\n",
                               limits=SandboxLimits(wall_s=10, file_bytes=2**20))
    assert not outcome.passed and "File too large" in outcome.reason


# --- how tests run, and a verdict the graded code cannot write ----------------------------------

def test_failing_assertion_fails_with_its_message():
    outcome = run_python_tests("def add(a, b):\n    return a - b\n",
                               "assert add(2, 3) == 5, 'add(2, 3) should be 5'\n")
    assert not outcome.passed
    assert "AssertionError: add(2, 3) should be 5" in outcome.reason


def unittest_file(body: str, *, main: bool = True) -> str:
    return ("import unittest\nclass T(unittest.TestCase):\n" + body
            + ("unittest.main()\n" if main else ""))


@pytest.mark.parametrize("main", [True, False])
def test_unittest_test_cases_run_with_or_without_unittest_main(main):
    # On Python 3.11 unittest.main() in a dict namespace found nothing: "Ran 0 tests ... OK".
    good = unittest_file("    def test_add(self):\n        self.assertEqual(add(2, 3), 5)\n",
                         main=main)
    assert run_python_tests(ADD, good).passed
    outcome = run_python_tests("def add(a, b):\n    return a - b\n", good)
    assert not outcome.passed and outcome.reason.endswith("1 of 1 tests failed")
    assert "AssertionError: -1 != 5" in outcome.output


def test_test_cases_that_run_zero_tests_fail():
    outcome = run_python_tests(ADD, unittest_file("    def helper(self):\n        pass\n"))
    assert not outcome.passed and "the tests ran zero tests" in outcome.reason


CHECK = "def check(candidate):\n    assert candidate(2, 3) == 5\n"  # HumanEval's shape


@pytest.mark.parametrize("tests", [
    "def test_add():\n    assert add(2, 3) == 5\n",  # pytest's shape: called by the sandbox
    CHECK + "check(add)\n",
])
def test_test_functions_and_helpers_run(tests):
    assert run_python_tests(ADD, tests).passed
    outcome = run_python_tests("def add(a, b):\n    return a - b\n", tests)
    assert not outcome.passed and "AssertionError" in outcome.reason


def test_asserts_that_never_run_are_zero_tests():
    outcome = run_python_tests("def add(a, b):\n    return a - b\n", CHECK)  # check() uncalled
    assert not outcome.passed and "ran zero tests" in outcome.reason


def test_test_code_that_tests_nothing_is_refused_at_registration_and_fails():
    with pytest.raises(InvalidVerifierOptions, match="holds no `assert`"):
        check_verifier("python_tests", {}, reference="print(add(2, 3))\n")
    with pytest.raises(InvalidVerifierOptions, match="does not parse"):
        check_verifier("python_tests", {}, reference="assert (\n")
    check_verifier("python_tests", {}, reference=unittest_file("    def test_x(self): pass\n"))
    assert "holds no `assert`" in verify("python_tests", ADD, "print(add(1, 2))\n", {}).reason


@pytest.mark.parametrize("escape", ["import sys; sys.exit(0)", "import os; os._exit(0)"])
def test_solution_that_exits_before_the_tests_fails(escape):
    outcome = run_python_tests(escape, "assert False\n")
    assert not outcome.passed and "before its tests" in outcome.reason


FORGERIES = {
    # The status descriptor's number was once readable in sys.orig_argv; here every one is tried.
    "status fd": "import os\nfor fd in range(3, 256):\n    try:\n        os.write(fd, b'ok')\n"
                 "    except OSError:\n        pass\nos._exit(0)\n",
    "unittest patched": "import unittest\nunittest.TestCase.assertEqual = lambda *a, **k: None\n"
                        "def add(a, b):\n    return a - b\n",
    "builtins patched": "import builtins\nbuiltins.all = lambda *a: True\n"
                        "def add(a, b):\n    return a - b\n",
    "always equal": "class Anything:\n    def __eq__(self, other):\n        return True\n"
                    "def add(a, b):\n    return Anything()\n",
    "shadowed builtin": "def all(*args):\n    return True\ndef add(a, b):\n    return a - b\n",
    # Writes the tests' side of the pipe itself: an answer that would make the tests' process
    # call exec() with code writing "ok" everywhere, if it took any builtin name as an exception.
    "forged answers": r"""
import os, time
payload = "import os\nfor fd in range(3, 256):\n    try:\n        os.write(fd, b'ok')\n" \
          "    except OSError:\n        pass\nos._exit(0)\n"
lines = ascii(("ready", [("add", "callable", None)])) + "\n" + ascii(("raise", "exec", payload))
for fd in range(3, 64):
    try:
        os.write(fd, (lines + "\n").encode())
    except OSError:
        pass
time.sleep(30)
""",
}
FORGED_TESTS = unittest_file("    def test_add(self):\n        self.assertEqual(add(2, 3), 5)\n"
                             "        assert all([add(2, 3) == 5])\n")


@pytest.mark.parametrize("forgery", FORGERIES)
def test_the_graded_code_cannot_forge_the_verdict(level, forgery):
    outcome = run_python_tests(FORGERIES[forgery], FORGED_TESTS, limits=QUICK)
    assert not outcome.passed, outcome.output
    outcome = run_python_tests(FORGERIES[forgery], "assert all([add(2, 3) == 5])\n", limits=QUICK)
    assert not outcome.passed, outcome.output


def test_the_solution_is_called_across_processes_like_a_module():
    solution = ("import math\nLIMIT = 3\nclass Invalid(ValueError):\n    pass\n"
                "def push(items, item):\n    items.append(item)\n"
                "def root(x):\n    if x < 0:\n        raise Invalid(f'{x} < 0')\n"
                "    return math.sqrt(x)\n")
    tests = ("from solution import root\nitems = [1]\npush(items, 2)\nassert items == [1, 2]\n"
             "assert root(9) == 3.0 and LIMIT == 3 and math.pi > 3\n"
             "try:\n    root(-1)\nexcept ValueError as error:\n    assert str(error) == '-1 < 0'\n"
             "else:\n    raise AssertionError('no error')\n")
    outcome = run_python_tests(solution, tests, limits=QUICK)
    assert outcome.passed, outcome.output


def test_a_result_that_is_no_literal_fails_with_a_reason():
    solution = "def pair():\n    return object()\n"
    outcome = run_python_tests(solution, "try:\n    pair()\nexcept TypeError:\n    pass\n"
                               "assert True\n", limits=QUICK)
    assert not outcome.passed and "not a Python literal" in outcome.reason


# --- caps from settings -----------------------------------------------------------------------

def test_task_limits_are_capped_by_the_policy(monkeypatch):
    monkeypatch.setattr(sandbox, "_policy", SandboxPolicy(max_timeout_s=1, max_memory_mb=256))
    with pytest.raises(InvalidVerifierOptions, match=r"\(0, 1\] \(evals.sandbox.max_timeout_s\)"):
        check_verifier("python_tests", {"timeout_s": 30})
    with pytest.raises(InvalidVerifierOptions, match=r"evals.sandbox.max_memory_mb"):
        check_verifier("python_tests", {"memory_mb": 512})
    check_verifier("python_tests", {"timeout_s": 1, "memory_mb": 256})
    # A task registered under looser caps runs within today's.
    result = verify("python_tests", "while True:\n    pass\n", "assert True\n", {"timeout_s": 30})
    assert not result.passed and result.reason == "timed out after 1 s"
