"""Packaging: our folders install under `lifelong.*` and never shadow PyPI's `daemon`/`adapters`."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIBRARIES = ("feedback_store", "adapters", "evals", "base_model")


def run_python(code: str, cwd: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_installed_names_are_under_lifelong(tmp_path):
    out = run_python(
        "import lifelong.daemon, lifelong.adapters, lifelong.feedback_store, lifelong.evals;"
        "print(lifelong.daemon.__file__)",
        cwd=tmp_path,
    )
    assert Path(out) == REPO / "daemon" / "__init__.py"


def test_python_daemon_keeps_its_bare_name(tmp_path):
    # python-daemon is installed beside us (dev extra); `import daemon` must still be theirs.
    out = run_python("import daemon, daemon.daemon; print(daemon.__file__)", cwd=tmp_path)
    assert "site-packages" in out and Path(out).parent != REPO / "daemon"
    assert run_python("import importlib.util as u; print(u.find_spec('adapters'))", tmp_path) == (
        "None"
    )


def test_wheel_holds_only_the_lifelong_namespace(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(REPO)],
        check=True, capture_output=True,
    )
    (wheel,) = tmp_path.glob("lifelong-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"lifelong"}
    assert "lifelong/feedback_store/migrations/script.py.mako" in names
    modules = {
        f"lifelong/{path.relative_to(REPO)}"
        for folder in ("daemon", "adapters", "feedback_store", "evals", "base_model")
        for path in (REPO / folder).rglob("*.py")
    }
    assert modules - set(names) == set(), "modules the wheel would leave out"


def test_console_script_runs():
    done = subprocess.run(
        [str(Path(sys.executable).parent / "lifelong"), "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0 and "config" in done.stdout


@pytest.mark.parametrize("library", LIBRARIES)
def test_libraries_never_import_the_daemon(library):
    # The wiring imports the libraries, never the reverse (torchtune's recipe-import rule).
    offenders = [
        str(path.relative_to(REPO))
        for path in (REPO / library).rglob("*.py")
        if "lifelong.daemon" in path.read_text()
    ]
    assert offenders == []


def test_feedback_store_imports_none_of_ours():
    offenders = [
        str(path.relative_to(REPO))
        for path in (REPO / "feedback_store").rglob("*.py")
        for other in ("lifelong.adapters", "lifelong.evals", "lifelong.base_model")
        if other in path.read_text()
    ]
    assert offenders == []


def test_the_daemon_core_never_imports_the_gateway():
    # The HTTP layer imports the core (catalog, promotion, metrics), never the reverse; only the
    # command line, which builds the app, reaches into the gateway package.
    offenders = [
        str(path.relative_to(REPO))
        for path in (REPO / "daemon").rglob("*.py")
        if path.relative_to(REPO / "daemon").parts[0] not in ("gateway", "cli", "cli.py")
        and "lifelong.daemon.gateway" in path.read_text()
    ]
    assert offenders == []
