"""Loaders shared by the deployment-file tests: the files of deploy/, parsed once, and the few
rules of Compose variable interpolation the compose file relies on.

Nothing here starts a container: there is no container engine, no cluster and no GPU where these
tests run. They check the files statically, against the official schemas and against the code.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from lifelong.daemon.settings import ENV_PREFIX, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
KUBERNETES = DEPLOY / "kubernetes"
EXAMPLE_CONFIG = DEPLOY / "lifelong.example.yaml"
ENV_EXAMPLE = DEPLOY / "env.example"

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}, $NAME, and $$.
_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


class MissingVariable(Exception):
    """A `${NAME:?message}` whose variable is not set: `docker compose` stops with the message."""


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """`value` with Compose's variable interpolation applied to every string in it."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["name"] or match["bare"]
        op, arg = match["op"], match["arg"] or ""
        current = env.get(name)
        unset = current is None or (op is not None and op.startswith(":") and current == "")
        if op is not None and op.endswith("-"):
            return arg if unset else current  # type: ignore[return-value]
        if op is not None and op.endswith("?"):
            if unset:
                raise MissingVariable(f"{name}: {arg}")
            return current  # type: ignore[return-value]
        return current or ""

    return _VARIABLE.sub(substitute, value)


def env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a Compose .env file (comments and blank lines skipped)."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def yaml_documents(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def settings_key(env_name: str) -> tuple[str, ...]:
    """The settings path an environment variable names (LIFELONG_DATABASE__URL ->
    ('database', 'url')); fails the test if no such key exists. pydantic-settings silently
    ignores an unknown top-level variable (LIFELONG_DATADIR), so the check is made here."""
    assert env_name.startswith(ENV_PREFIX), env_name
    parts = tuple(env_name[len(ENV_PREFIX):].lower().split("__"))
    model: type[Any] = Settings
    for depth, part in enumerate(parts):
        fields = getattr(model, "model_fields", None)
        assert fields is not None and part in fields, (
            f"{env_name} names no settings key: {'.'.join(parts[: depth + 1])} is not one of "
            f"{sorted(fields or [])}"
        )
        model = fields[part].annotation
    return parts


def _load_with_env(config_file: Path | None, env: Mapping[str, str],
                   monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in [name for name in os.environ if name.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        settings_key(name)
        monkeypatch.setenv(name, str(value))
    return load_settings(config_file)


def lifelong_env(env: Mapping[str, Any] | list[dict[str, Any]]) -> dict[str, str]:
    """The LIFELONG_* variables of a Compose `environment` mapping or a Kubernetes `env` list
    (a secretKeyRef or a downward-API fieldRef stands for a value the test supplies: the key's
    name or the field's path in angle brackets)."""
    if isinstance(env, list):
        pairs = {}
        for item in env:
            value = item.get("value")
            if value is None:
                source = item["valueFrom"]
                if "fieldRef" in source:
                    value = f"<field {source['fieldRef']['fieldPath']}>"
                else:
                    ref = source["secretKeyRef"]
                    value = f"<secret {ref['name']}/{ref['key']}>"
            pairs[item["name"]] = value
        env = pairs
    return {name: str(value) for name, value in env.items() if name.startswith(ENV_PREFIX)}


def walk_files(folder: Path, *suffixes: str) -> Iterator[Path]:
    return (path for path in sorted(folder.rglob("*")) if path.suffix in suffixes and path.is_file())


@pytest.fixture
def deploy_settings(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path | None, Mapping[str, str]], Settings]:
    """`load(config_file, env)`: the daemon's own settings loader (`load_settings`) with exactly
    `env`'s LIFELONG_* variables set, each first checked to name a real settings key."""

    def load(config_file: Path | None, env: Mapping[str, str]) -> Settings:
        with monkeypatch.context() as patch:
            return _load_with_env(config_file, env, patch)

    return load


@pytest.fixture(scope="session")
def compose_interpolate() -> Callable[[Any, Mapping[str, str]], Any]:
    return interpolate


@pytest.fixture(scope="session")
def env_key() -> Callable[[str], tuple[str, ...]]:
    return settings_key


@pytest.fixture(scope="session")
def lifelong_env_of() -> Callable[[Any], dict[str, str]]:
    return lifelong_env


@pytest.fixture(scope="session")
def compose_raw() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="session")
def compose_env() -> dict[str, str]:
    """The variables of deploy/env.example: what a user starts from."""
    return env_file(ENV_EXAMPLE)


@pytest.fixture(scope="session")
def compose(compose_raw: dict[str, Any], compose_env: dict[str, str]) -> dict[str, Any]:
    """The compose file as `docker compose` sees it with env.example as its .env."""
    return interpolate(compose_raw, compose_env)


@pytest.fixture(scope="session")
def kubernetes_objects() -> dict[tuple[str, str], dict[str, Any]]:
    """Every Kubernetes object of deploy/kubernetes, by (kind, name)."""
    objects = {}
    for path in walk_files(KUBERNETES, ".yaml", ".yml"):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml_documents(path):
            objects[(doc["kind"], doc["metadata"]["name"])] = doc
    return objects

