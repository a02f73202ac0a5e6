"""The `lifelong` console script: each command's happy path and its one-line errors naming the fix."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

LIFELONG = str(Path(sys.executable).parent / "lifelong")


def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    return subprocess.run([LIFELONG, *args], capture_output=True, text=True, env=env, cwd=cwd)


def test_every_command_has_help():
    import typer

    from lifelong.daemon.cli import app

    def commands(group: object, path: list[str]) -> list[list[str]]:
        found = []
        for name, command in group.commands.items():  # type: ignore[attr-defined]
            if hasattr(command, "commands"):  # a group (typer's own click types)
                found += commands(command, [*path, name])
            else:
                found.append([*path, name])
        return found

    every = commands(typer.main.get_group(app), [])
    assert ["stop-canary"] in every and ["adapters", "show"] in every, every
    for command in every:
        done = run(*command, "--help")
        assert done.returncode == 0 and "Usage" in done.stdout, (command, done.stderr)


def test_config_show_prints_effective_settings_with_secrets_masked(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        "database:\n  url: postgresql+psycopg://u:topsecret@h/db\ngateway:\n  port: 9123\n"
    )
    done = run("config", "show", "--config", str(config), "--data-dir", str(tmp_path / "d"))
    assert done.returncode == 0, done.stderr
    shown = yaml.safe_load(done.stdout)
    assert shown["gateway"]["port"] == 9123
    assert shown["data_dir"] == str(tmp_path / "d")
    assert "topsecret" not in done.stdout and "u:***@h" in done.stdout


def test_bad_setting_stops_with_the_key_and_fix(tmp_path):
    import os

    env = {**os.environ, "LIFELONG_VLLM__PORT": "http"}
    done = run("config", "show", env=env, cwd=tmp_path)
    assert done.returncode == 2
    assert "vllm.port" in done.stderr and "LIFELONG_VLLM__PORT" in done.stderr
    assert "Traceback" not in done.stderr


def chat_model_folder(tmp_path: Path) -> Path:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "chat_template.jinja").write_text("{{ messages }}")  # a chat model's folder
    return model


def broken_suite(data_dir: Path) -> None:
    """A suite file serve refuses: its checks come after the database's, so serve stops there
    instead of starting vLLM."""
    suites = data_dir / "evals" / "regression"
    suites.mkdir(parents=True)
    (suites / "math.jsonl").write_text("{not json\n")


def revision(database: Path) -> str | None:
    from lifelong.feedback_store.database import current_revision, make_engine

    engine = make_engine(f"sqlite:///{database}")
    try:
        return current_revision(engine)
    finally:
        engine.dispose()


def test_serve_gives_a_fresh_data_dirs_sqlite_file_its_schema(tmp_path):
    from lifelong.feedback_store.database import head_revision

    config = tmp_path / "c.yaml"
    config.write_text(f"base_model:\n  path: {chat_model_folder(tmp_path)}\n")
    broken_suite(tmp_path / "d")
    done = run("serve", "--config", str(config), "--data-dir", str(tmp_path / "d"))
    assert done.returncode == 2 and "math.jsonl:1:" in done.stderr, done.stderr  # got past it
    assert "db upgrade" not in done.stderr
    assert revision(tmp_path / "d" / "lifelong.db") == head_revision()


def test_serve_refuses_a_database_at_an_older_revision_then_upgrade_fixes_it(tmp_path):
    from lifelong.feedback_store.database import make_engine, upgrade

    database = tmp_path / "d" / "lifelong.db"
    engine = make_engine(f"sqlite:///{database}")
    upgrade(engine, "0006")
    engine.dispose()
    config = tmp_path / "c.yaml"
    config.write_text(f"base_model:\n  path: {chat_model_folder(tmp_path)}\n")
    args = ["--config", str(config), "--data-dir", str(tmp_path / "d")]
    done = run("serve", *args)
    assert done.returncode == 2 and "behind" in done.stderr and "lifelong db upgrade" in done.stderr
    assert revision(database) == "0006"
    done = run("db", "upgrade", *args)
    assert done.returncode == 0 and "(was 0006)" in done.stdout


def test_serve_refuses_an_unmigrated_database_the_user_named_then_upgrade_fixes_it(tmp_path):
    # Only the embedded file is created by serve: a URL in the settings (PostgreSQL in
    # production, here a SQLite file of the user's) is theirs to migrate.
    database = tmp_path / "mine.db"
    config = tmp_path / "c.yaml"
    config.write_text(f"base_model:\n  path: {chat_model_folder(tmp_path)}\n"
                      f"database:\n  url: sqlite:///{database}\n")
    args = ["--config", str(config), "--data-dir", str(tmp_path / "d")]
    done = run("serve", *args)
    assert done.returncode == 2 and "lifelong db upgrade" in done.stderr
    assert revision(database) is None
    done = run("db", "upgrade", *args)
    assert done.returncode == 0 and "database at revision" in done.stdout


def test_the_trainer_worker_refuses_a_database_behind_the_gateways_and_never_upgrades_it(tmp_path):
    # A worker shares the gateways' database: their `lifelong db upgrade` migrates it, not it.
    from lifelong.feedback_store.database import make_engine, upgrade

    database = tmp_path / "d" / "lifelong.db"
    engine = make_engine(f"sqlite:///{database}")
    upgrade(engine, "0007")
    engine.dispose()
    config = tmp_path / "c.yaml"
    config.write_text(f"base_model:\n  path: {chat_model_folder(tmp_path)}\n"
                      "training:\n  runner: worker\n")
    done = run("trainer", "--config", str(config), "--data-dir", str(tmp_path / "d"))
    assert done.returncode == 2 and "behind" in done.stderr and "lifelong db upgrade" in done.stderr
    assert revision(database) == "0007"


def test_serve_refuses_eval_suites_with_mistakes_naming_each_file_and_line(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "chat_template.jinja").write_text("{{ messages }}")  # a chat model's folder
    suites = tmp_path / "d" / "evals" / "regression"
    suites.mkdir(parents=True)
    good = '{"prompt": "2 + 2 =", "reference": "4", "verifier": "exact_match"}'
    (suites / "math.jsonl").write_text(
        good + "\n" + '{"prompt": "3 + 3 =", "reference": "6", "verifier": "exact_macth"}\n'
        + "{not json\n")
    config = tmp_path / "c.yaml"
    config.write_text(f"base_model:\n  path: {model}\n")
    args = ["--config", str(config), "--data-dir", str(tmp_path / "d")]
    assert run("db", "upgrade", *args).returncode == 0
    done = run("serve", *args)
    assert done.returncode == 2, done.stderr
    assert "math.jsonl:2:" in done.stderr and "exact_macth" in done.stderr
    assert "math.jsonl:3:" in done.stderr and "Traceback" not in done.stderr


def test_serve_without_the_tiny_base_model_says_how_to_get_one(tmp_path):
    # (The default, SmolLM2, is imported on first use instead: test_gguf_import.py.)
    env = {**os.environ, "LIFELONG_BASE_MODEL__DEFAULT": "tiny"}
    done = run("serve", "--data-dir", str(tmp_path), env=env)
    assert done.returncode == 2 and "lifelong base build" in done.stderr


def test_serve_on_a_model_folder_without_a_chat_template_says_why(tiny_base_model, tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    for part in tiny_base_model.iterdir():
        if part.name != "chat_template.jinja":
            (folder / part.name).symlink_to(part)
    env = {**os.environ, "LIFELONG_BASE_MODEL__PATH": str(folder)}
    done = run("serve", "--data-dir", str(tmp_path / "data"), env=env)
    assert done.returncode == 2 and "no chat template" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_public_bind_without_keys_is_refused(tmp_path):
    done = run("serve", "--host", "0.0.0.0", "--data-dir", str(tmp_path))
    assert done.returncode == 2 and "api_keys" in done.stderr


def keys_hash(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([LIFELONG, "keys", "hash", *args], input=stdin, capture_output=True,
                          text=True)


@pytest.mark.parametrize("args", [(), ("-",), ("--key-file", "-")])
def test_keys_hash_prints_the_sha256_of_the_key_on_stdin(args):
    done = keys_hash(*args, stdin="sk-test\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == hashlib.sha256(b"sk-test").hexdigest()


def test_keys_hash_reads_a_key_file(tmp_path):
    (tmp_path / "key").write_text("sk-test\n")
    done = keys_hash("--key-file", str(tmp_path / "key"))
    assert done.stdout.strip() == hashlib.sha256(b"sk-test").hexdigest()


def test_a_key_on_the_command_line_is_refused_naming_the_fix():
    # argv is readable by every user (ps, /proc/<pid>/cmdline) and kept in shell history.
    done = keys_hash("sk-test")
    assert done.returncode == 2 and done.stdout == ""
    assert "--key-file" in done.stderr and "lifelong keys hash < key.txt" in done.stderr
    assert "Traceback" not in done.stderr
    done = run("status", "--key", "sk-test")
    assert done.returncode == 2 and "LIFELONG_API_KEY or use --key-file" in done.stderr


def test_keys_hash_without_a_key_says_how_to_give_one():
    done = keys_hash(stdin="")
    assert done.returncode == 2 and "no key given" in done.stderr


def test_config_show_masks_every_form_of_secret(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "database": {"url": "postgresql+psycopg://u:pw-secret@h/db"
                            "?sslpassword=ssl-secret&sslmode=require&password=query-secret"},
        "vllm": {"upstreams": ["http://vllm:upstream-secret@h:8100"],
                 "extra_args": ["--api-key", "args-secret", "--hf-token=token-secret"]},
    }))
    done = run("config", "show", "--config", str(config), "--data-dir", str(tmp_path / "d"))
    assert done.returncode == 0, done.stderr
    assert "secret" not in done.stdout
    shown = yaml.safe_load(done.stdout)
    assert shown["database"]["url"] == (
        "postgresql+psycopg://u:***@h/db?sslpassword=***&sslmode=require&password=***")
    assert shown["vllm"]["extra_args"] == ["--api-key", "***", "--hf-token=***"]


def test_the_data_dir_and_what_it_holds_are_the_owners_alone(tmp_path):
    from lifelong.daemon.cli.serve import private_data_dir

    data_dir = tmp_path / "data"
    (data_dir / "logs").mkdir(parents=True, mode=0o755)
    (data_dir / "run").mkdir(mode=0o755)
    data_dir.chmod(0o755)
    for path in (data_dir / "logs" / "vllm.log", data_dir / "run" / "trainer-settings.yaml"):
        path.write_text("x")
        path.chmod(0o644)
    umask = os.umask(0o022)
    try:
        private_data_dir(data_dir)
        (data_dir / "adapters").mkdir()  # what the daemon makes later
        (data_dir / "logs" / "trainer-1.log").write_text("x")
    finally:
        os.umask(umask)
    modes = {path.relative_to(data_dir).as_posix(): stat.S_IMODE(path.stat().st_mode)
             for path in [data_dir, *data_dir.rglob("*")]}
    assert modes == {".": 0o700, "logs": 0o700, "run": 0o700, "adapters": 0o700,
                     "logs/vllm.log": 0o600, "run/trainer-settings.yaml": 0o600,
                     "logs/trainer-1.log": 0o600}


def test_base_ask_answers_with_the_model(tiny_base_model, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(f"base_model:\n  path: {tiny_base_model}\n")
    done = run("base", "ask", "What is 12 + 34?", "--config", str(config))
    assert done.returncode == 0, done.stderr
    answer = done.stdout.strip()
    assert answer and "<|im_end|>" not in answer and "<|im_start|>" not in answer


def test_base_build_refuses_when_a_model_of_your_own_is_configured(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(f"base_model:\n  path: {tmp_path}\n")
    done = run("base", "build", "--config", str(config))
    assert done.returncode == 2 and "your own model" in done.stderr


def test_base_build_and_import_each_refuse_the_other_default_naming_the_fix(tmp_path):
    done = run("base", "build", "--data-dir", str(tmp_path))  # the default is smollm2
    assert done.returncode == 2, done.stderr
    assert "run `lifelong base import`, or set base_model.default: tiny" in done.stderr
    env = {**os.environ, "LIFELONG_BASE_MODEL__DEFAULT": "tiny"}
    done = run("base", "import", "--data-dir", str(tmp_path), env=env)
    assert done.returncode == 2, done.stderr
    assert "run `lifelong base build`, or set base_model.default: smollm2" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_base_import_of_a_file_that_is_not_gguf_is_one_line_naming_the_fix(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_text("<html>404 Not Found</html>\n")
    done = run("base", "import", "--gguf", str(bad), "--data-dir", str(tmp_path / "d"))
    assert done.returncode == 2, done.stderr
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith(f"lifelong: {bad} is not a readable GGUF file")
    assert "download it again" in error and "Traceback" not in done.stderr
    assert not (tmp_path / "d" / "base_model").exists()


def test_base_import_finds_the_default_already_imported(smollm2_base_model, tmp_path):
    (tmp_path / "base_model").symlink_to(smollm2_base_model)
    done = run("base", "import", "--data-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "already there" in done.stdout
