"""Every file of deploy/ parses, and the gateway image (deploy/Dockerfile) is built from enough
of the repository: the package builds from exactly the files it copies past the ignore file.
Prometheus' configuration is checked with `promtool` where it is installed.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = DEPLOY / "Dockerfile.dockerignore"  # BuildKit reads <Dockerfile>.dockerignore


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined."""
    joined = text.replace("\\\n", " ")
    result = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            result.append((word.upper(), " ".join(rest.split())))
    return result


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches decides; `!` re-includes."""
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if pattern == "**" or any(fnmatch.fnmatch(p, pattern) for p in prefixes) or (
            pattern.startswith("**/") and any(fnmatch.fnmatch(part, pattern[3:]) for part in parts)
        ):
            excluded = not negate
    return excluded


def ignore_patterns() -> list[str]:
    lines = (line.strip() for line in DOCKERIGNORE.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def copied_sources() -> list[str]:
    sources = []
    for word, args in instructions(DOCKERFILE.read_text()):
        if word == "COPY":
            *srcs, _dest = args.split()
            sources += [src for src in srcs if not src.startswith("--")]
    return sources


@pytest.mark.parametrize("path", sorted(p.relative_to(DEPLOY).as_posix() for p in DEPLOY.rglob("*")
                                        if p.suffix in (".yml", ".yaml", ".json")))
def test_every_deploy_file_parses(path: str) -> None:
    text = (DEPLOY / path).read_text()
    documents = [json.loads(text)] if path.endswith(".json") else list(yaml.safe_load_all(text))
    assert [doc for doc in documents if doc is not None], f"{path} is empty"


def test_dockerfile_copies_every_package_the_project_installs() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_roots = {folder.split("/")[0] for folder in project["tool"]["setuptools"]["package-dir"].values()}
    sources = copied_sources()
    assert package_roots | {"pyproject.toml", project["project"]["readme"]} <= set(sources)
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not ignored(source, ignore_patterns()), f"{source} is copied but .dockerignore drops it"


def test_dockerignore_keeps_the_local_environment_out() -> None:
    for path in (".venv/bin/python", "lifelong-data/lifelong.db", "build/lib/x.py",
                 "daemon/__pycache__/cli.cpython-312.pyc", ".git/HEAD", "tests/conftest.py"):
        assert ignored(path, ignore_patterns()), path
    assert not ignored("daemon/gateway/app.py", ignore_patterns())


def test_gateway_image_installs_lifelong_without_vllm_and_serves() -> None:
    steps = instructions(DOCKERFILE.read_text())
    assert steps[0] == ("FROM", "python:3.12-slim")
    installs = [args for word, args in steps if word == "RUN" and "pip install" in args]
    assert any("pip install . " in args for args in installs)
    assert not any("[cuda]" in args or "[cpu]" in args or "vllm" in args for args in installs)
    assert ("USER", "lifelong") in steps
    assert ("CMD", '["lifelong", "serve", "--config", "/etc/lifelong/lifelong.yaml"]') in steps


def test_the_package_builds_from_only_what_the_image_copies(tmp_path: Path) -> None:
    context = tmp_path / "context"
    context.mkdir()
    for source in copied_sources():
        origin = ROOT / source
        if origin.is_dir():
            shutil.copytree(origin, context / source,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(origin, context / source)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
         "--wheel-dir", str(tmp_path / "wheels"), str(context)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = (tmp_path / "wheels").glob("lifelong-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"lifelong/daemon/cli/__init__.py", "lifelong/daemon/gateway/app.py",
            "lifelong/feedback_store/migrations/script.py.mako"} <= names


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian: prometheus) is not installed")
def test_promtool_accepts_the_prometheus_config() -> None:
    result = subprocess.run(["promtool", "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
