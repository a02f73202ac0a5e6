"""The sandbox contains what untrusted code tries, each attempt a failed run with a reason, and
leaves the machine as it was: no process outlives a run, nothing is read outside the sandbox."""

from __future__ import annotations

import os
import time

import psutil
import pytest

from lifelong.evals.sandbox import SandboxLimits, isolation, run_python_tests

QUICK = SandboxLimits(wall_s=3)


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


def test_this_machine_gives_every_layer():
    # The tests below prove containment by the strongest layers; on this machine all are there.
    found = isolation()
    assert found.namespaces and found.landlock_abi >= 4 and found.seccomp


def test_correct_code_passes_its_tests():
    outcome = run_python_tests("def add(a, b):\n    return a + b\n", "assert add(2, 3) == 5\n")
    assert outcome.passed and outcome.reason == "tests passed"


def test_failing_assertion_fails_with_its_message():
    outcome = run_python_tests("def add(a, b):\n    return a - b\n",
                               "assert add(2, 3) == 5, 'add(2, 3) should be 5'\n")
    assert not outcome.passed
    assert "AssertionError: add(2, 3) should be 5" in outcome.reason


def test_unittest_main_exiting_zero_passes():
    tests = ("import unittest\n"
             "class T(unittest.TestCase):\n"
             "    def test_add(self):\n"
             "        self.assertEqual(add(1, 1), 2)\n"
             "unittest.main()\n")
    assert run_python_tests("def add(a, b):\n    return a + b\n", tests).passed


@pytest.mark.parametrize("escape", ["import sys; sys.exit(0)", "import os; os._exit(0)"])
def test_solution_that_exits_before_the_tests_fails(escape):
    outcome = run_python_tests(escape, "assert False\n")
    assert not outcome.passed and "before" in outcome.reason


def test_infinite_loop_is_stopped_at_the_wall_clock_limit():
    started = time.monotonic()
    outcome = run_python_tests("while True:\n    pass\n", "", limits=QUICK)
    assert not outcome.passed and outcome.timed_out
    assert outcome.reason == "timed out after 3 s"
    assert time.monotonic() - started < 8


def test_cpu_limit_stops_a_busy_loop_before_the_wall_clock():
    outcome = run_python_tests("while True:\n    pass\n", "",
                               limits=SandboxLimits(wall_s=20, cpu_s=1))
    assert not outcome.passed and not outcome.timed_out
    assert outcome.reason == "CPU time limit of 1 s exceeded"


def test_fork_bomb_fails_at_its_first_fork():
    before = len(psutil.pids())
    outcome = run_python_tests("import os\nwhile True:\n    os.fork()\n", "", limits=QUICK)
    assert not outcome.passed
    assert "PermissionError" in outcome.reason
    assert len(psutil.pids()) < before + 20  # the machine never saw the bomb


def test_subprocesses_cannot_be_started():
    outcome = run_python_tests("import subprocess\nsubprocess.run(['true'])\n", "", limits=QUICK)
    assert not outcome.passed and "PermissionError" in outcome.reason


def test_huge_output_is_cut_and_the_run_stopped():
    outcome = run_python_tests("while True:\n    print('x' * 1000)\n", "",
                               limits=SandboxLimits(wall_s=10, output_bytes=10_000))
    assert not outcome.passed and not outcome.timed_out
    assert outcome.reason == "output over the limit of 10000 bytes; stopped"
    assert len(outcome.output) == 10_000


def test_memory_hog_gets_a_memory_error():
    outcome = run_python_tests("block = bytearray(4 * 2**30)\n", "",
                               limits=SandboxLimits(wall_s=10, memory_bytes=256 * 2**20))
    assert not outcome.passed and "MemoryError" in outcome.reason


def test_big_file_is_refused():
    outcome = run_python_tests("open('big', 'wb').write(b'x' * 2**21)\n", "",
                               limits=SandboxLimits(wall_s=10, file_bytes=2**20))
    assert not outcome.passed and "File too large" in outcome.reason


@pytest.mark.parametrize("host", ["127.0.0.1", "1.1.1.1"])
def test_network_is_unreachable(host):
    code = f"import socket\nsocket.create_connection(({host!r}, 5432), timeout=2)\n"
    outcome = run_python_tests(code, "", limits=QUICK)
    assert not outcome.passed and "PermissionError" in outcome.reason


def test_data_directory_cannot_be_read(tmp_path):
    data_dir = tmp_path / "lifelong-data"
    data_dir.mkdir()
    (data_dir / "lifelong.db").write_text("every interaction")
    code = f"print(open({str(data_dir / 'lifelong.db')!r}).read())\n"
    outcome = run_python_tests(code, "", limits=QUICK)
    assert not outcome.passed and "Permission denied" in outcome.reason
    assert "every interaction" not in outcome.output


def test_data_directory_cannot_be_listed_or_written(tmp_path):
    code = (f"import os\nos.listdir({str(tmp_path)!r})\n")
    assert "Permission denied" in run_python_tests(code, "", limits=QUICK).reason
    code = f"open({str(tmp_path / 'planted')!r}, 'w').write('x')\n"
    assert not run_python_tests(code, "", limits=QUICK).passed
    assert not (tmp_path / "planted").exists()


def test_environment_holds_no_secrets(monkeypatch):
    monkeypatch.setenv("LIFELONG_DATABASE__URL", "postgresql://user:hunter2@db/lifelong")
    outcome = run_python_tests("import os\nprint(dict(os.environ))\n", "", limits=QUICK)
    assert outcome.passed and "hunter2" not in outcome.output
    assert os.environ["LIFELONG_DATABASE__URL"].endswith("lifelong")  # ours untouched


def test_working_directory_is_writable_and_thrown_away():
    code = ("import os\nopen('scratch.txt', 'w').write('hi')\n"
            "print('WORKDIR', os.getcwd())\n")
    outcome = run_python_tests(code, "assert open('scratch.txt').read() == 'hi'\n", limits=QUICK)
    assert outcome.passed, outcome.reason
    workdir = outcome.output.split("WORKDIR ")[1].split()[0]
    assert not os.path.exists(workdir)


def test_threads_and_the_standard_library_still_work():
    code = ("import threading, json, decimal\n"
            "box = []\nt = threading.Thread(target=lambda: box.append(1))\nt.start()\nt.join()\n")
    assert run_python_tests(code, "assert box == [1]\n", limits=QUICK).passed
