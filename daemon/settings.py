"""The daemon's one typed settings tree: YAML file + `LIFELONG_*` environment, validated at start-up.

Precedence (highest first): explicit overrides (CLI flags) > environment > YAML file > defaults.
Nested keys use `__` in the environment: `LIFELONG_DATABASE__URL`, `LIFELONG_GATEWAY__PORT`.
Built once in `main` and passed down; components never read settings themselves.

The hyperparameters of training, practice and the gate are not defined here: those fields are
the component configs' (`LoraTrainingConfig`, `GrpoConfig`, `GatePolicy`), default, help and
bounds read by `config_field`, and each section builds its config (`lora_config()`, ...).
Past 400 lines because it is one tree, the one `lifelong config show` prints: a section per
concern, every field with its bounds and help.
"""

from __future__ import annotations

import contextvars
import dataclasses
import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)
from pydantic_settings import (
    SettingsError as PydanticSettingsError,
)

from lifelong.adapters.grpo_config import GrpoConfig
from lifelong.adapters.lora_config import BOUNDS, LoraTrainingConfig, Precision
from lifelong.adapters.recipe import DEFAULT_RECIPE, Method, check_recipe
from lifelong.evals.canary_policy import CanaryPolicy
from lifelong.evals.gate_policy import GatePolicy
from lifelong.evals.sandbox import SandboxPolicy
from lifelong.evals.verifiers import MAX_PATTERN_CHARS

_SANDBOX = SandboxPolicy()  # the defaults live with the sandbox

ENV_PREFIX = "LIFELONG_"
# `evals`: may register what the gate judges on (held-out tasks, `family:` tags); admin may too.
Scope = Literal["infer", "feedback", "evals", "admin"]

_yaml_file: contextvars.ContextVar[Path | None] = contextvars.ContextVar("yaml_file", default=None)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def config_field(config: type[Any], name: str) -> Any:
    """A settings field that is the component config's field `name`: its default, help and
    bounds, read from the dataclass (TRL's way: the config is the schema), so the two cannot
    drift apart."""
    (spec,) = [f for f in dataclasses.fields(config) if f.name == name]
    bounds = {key: value for key, value in spec.metadata.items() if key in BOUNDS}
    if spec.default_factory is not dataclasses.MISSING:
        return Field(default_factory=spec.default_factory, description=spec.metadata["help"],
                     **bounds)
    if isinstance(spec.default, tuple):  # a list in YAML and JSON
        return Field(default_factory=lambda: list(spec.default),
                     description=spec.metadata["help"], **bounds)
    return Field(default=spec.default, description=spec.metadata["help"], **bounds)


# training.<key> -> LoraTrainingConfig.<field>, where the names differ (users' files use these).
LORA_KEYS = {"lora_rank": "rank", "lora_alpha": "alpha", "lora_dropout": "dropout",
             "max_seq_len": "max_length"}


class BaseModelSettings(Section):
    """The base model vLLM serves and adapters are trained on."""

    path: Path | None = Field(
        default=None,
        description="A Hugging Face model folder. Empty: the embedded default (see `default`) "
        "in <data_dir>/base_model.",
    )
    default: Literal["smollm2", "tiny"] = Field(
        default="smollm2",
        description="The embedded default that fills <data_dir>/base_model when path is empty: "
        "smollm2 is SmolLM2-135M-Instruct, imported from the pinned GGUF file by `lifelong base "
        "import` (serve and train import it when it is missing); tiny is the 2.4M-parameter "
        "Llama that does two-digit sums, trained from scratch by `lifelong base build` (the "
        "demo's and the tests' model).",
    )
    gguf: Path | None = Field(
        default=None,
        description="With default smollm2: import this GGUF file instead of the pinned "
        "SmolLM2 (a Llama-architecture instruct model with a chat template).",
    )
    seed: int = Field(default=0, description="Seed for building the tiny embedded default.")
    build_steps: int = Field(
        default=700, ge=1, description="Training steps when building the tiny embedded default."
    )

    @property
    def embedded_tiny(self) -> bool:
        """The model is the tiny one `lifelong base build` makes, whose skills we know."""
        return self.path is None and self.default == "tiny"


class DatabaseSettings(Section):
    url: SecretStr | None = Field(
        default=None,
        description="SQLAlchemy URL, e.g. postgresql+psycopg://user:pw@host/db. "
        "Empty: SQLite at <data_dir>/lifelong.db.",
    )
    sqlite_synchronous: Literal["FULL", "NORMAL"] = Field(
        default="FULL",
        description="FULL survives power loss as well as a killed process; NORMAL only the latter.",
    )
    heldout_fraction: float = Field(
        default=0.1,
        ge=0.0,
        lt=1.0,
        description="Share of interactions and tasks kept out of training, for evaluation.",
    )
    max_text_chars: int = Field(
        default=200_000, ge=1, description="Longest request/response/feedback text accepted."
    )
    rating_min: float = Field(default=-1.0, description="Lowest rating score accepted.")
    rating_max: float = Field(default=1.0, description="Highest rating score accepted.")
    connect_timeout_s: float = Field(
        default=5.0, ge=1, le=300,
        description="Longest wait for a database connection (psycopg's own default is ~130 s "
        "on a server that accepts and never answers); then feedback and reads get 503.",
    )
    statement_timeout_s: float = Field(
        default=30.0, ge=1, le=3600,
        description="Longest one statement of the gateway may run or wait for a lock "
        "(PostgreSQL statement_timeout, SQLite busy timeout); migrations are not limited.",
    )

    @model_validator(mode="after")
    def _rating_range(self) -> DatabaseSettings:
        if self.rating_min >= self.rating_max:
            raise ValueError(
                f"rating_min ({self.rating_min}) must be below rating_max ({self.rating_max})"
            )
        return self


class VLLMSettings(Section):
    """How the daemon launches and talks to vLLM's OpenAI server."""

    port: int = Field(
        default=8100, ge=1, le=65534,
        description="Internal port, bound to 127.0.0.1; a replacement server uses port + 1.",
    )
    upstreams: list[str] = Field(
        default_factory=list,
        description="Base URLs of vLLM servers managed elsewhere. Empty: one is started locally.",
    )
    max_lora_rank: int = Field(default=16, ge=1, le=512)
    max_loras: int = Field(default=4, ge=1, description="Adapters resident in one batch.")
    max_model_len: int = Field(default=512, ge=16)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto",
        description="`--dtype` of the local vLLM. 'auto': vLLM's own choice, except with the CPU "
        "build on a CPU without bfloat16 instructions (no avx512_bf16 or amx_bf16), where it "
        "is float32: vLLM's bfloat16 is emulated there, and float32 served SmolLM2 3-4x faster "
        "(bench/vllm_dtype.py). A --dtype in extra_args wins.",
    )
    cpu_kvcache_space_gib: int = Field(
        default=1, ge=1, description="VLLM_CPU_KVCACHE_SPACE for the CPU build."
    )
    cpu_cores: Literal["halves", "auto"] = Field(
        default="halves",
        description="CPU build: the cores each local vLLM's OpenMP threads are bound to. "
        "'halves': the server on `port` gets the first half of this process's CPUs and one on "
        "port + 1 the second, so a replacement never starts on the cores the serving one spins "
        "on (vLLM's worker busy-waits 1 s after each request: bound to the same core, a "
        "replacement took 3 minutes to start on 2 cores instead of 30 s). 'auto': vLLM's own "
        "choice (all cores but one, for both servers): more throughput on a many-core host, "
        "slow replacements under traffic. VLLM_CPU_OMP_THREADS_BIND in the environment wins "
        "(set it, or 'auto', for tensor parallelism on CPU). Ignored by the CUDA build.",
    )
    extra_args: list[str] = Field(
        default_factory=list, description="Further `vllm serve` arguments, passed as given."
    )
    startup_timeout_s: float = Field(default=300.0, gt=0)
    request_timeout_s: float = Field(
        default=120.0, gt=0, description="Longest wait for one upstream answer (then 504)."
    )
    max_restarts: int = Field(
        default=5, ge=0, description="Restarts allowed within restart_window_s before giving up."
    )
    restart_window_s: float = Field(default=600.0, gt=0)
    replace_after_adapters: int | None = Field(
        default=32, ge=1,
        description="Replace the local vLLM with a fresh one (no request fails) once it has "
        "registered this many adapters: vLLM frees none, so memory grows with each. Null: never.",
    )
    keep_adapters: int = Field(
        default=3, ge=0,
        description="Former champions kept loaded across a replacement (instant rollback).",
    )

    @model_validator(mode="after")
    def _room_after_replacement(self) -> VLLMSettings:
        limit = self.replace_after_adapters
        if limit is not None and limit < self.keep_adapters + 2:
            raise ValueError(
                f"replace_after_adapters ({limit}) must exceed keep_adapters + 1 "
                f"({self.keep_adapters + 1}): a replacement starts with the champion and the kept "
                "versions, and must have room for a new one")
        return self


class ApiKey(Section):
    principal: str = Field(min_length=1, description="Who holds the key; stored with their data.")
    sha256: SecretStr = Field(description="Hex sha256 of the key (`lifelong keys hash`).")
    scopes: list[Scope] = Field(min_length=1)

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: SecretStr) -> SecretStr:
        if not re.fullmatch(r"[0-9a-f]{64}", value.get_secret_value()):
            raise ValueError("must be a 64-character lower-case hex sha256 of the key")
        return value


class GatewaySettings(Section):
    host: str = Field(default="127.0.0.1")
    port: int = Field(default=8000, ge=1, le=65535)
    public_alias: str = Field(
        default="lifelong", min_length=1, description="Model name that means the current champion."
    )
    api_keys: list[ApiKey] = Field(default_factory=list)
    max_request_bytes: int = Field(
        default=4 * 1024 * 1024, ge=1024, description="Larger request bodies get 413."
    )
    drain_timeout_s: float = Field(
        default=30.0, ge=0, description="On SIGTERM, how long in-flight requests may finish."
    )
    log_queue_size: int = Field(
        default=10_000, ge=1, description="Interactions waiting for the database before drops."
    )
    feedback_wait_s: float = Field(
        default=5.0, ge=0,
        description="How long feedback waits for its interaction to leave the log queue.",
    )
    metrics_cache_s: float = Field(
        default=5.0, ge=0,
        description="How long /metrics reuses what it read from the store (scrapes stay cheap).",
    )

    @model_validator(mode="after")
    def _no_open_public_bind(self) -> GatewaySettings:
        if not self.api_keys and self.host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(
                f"host {self.host!r} without api_keys would expose the API unauthenticated; "
                "configure gateway.api_keys or bind to 127.0.0.1"
            )
        return self


class LimitsSettings(Section):
    """What one inference request may ask for, and how much each API key may ask per minute.

    A request over a cap gets 400 naming the field and the cap; a key over its rate gets 429
    with Retry-After. The rates are off by default: a fair number depends on the host (the tiny
    model on a CPU answers tens of tokens a second, a GPU thousands) and on how many keys share
    it, while the caps already bound what any one request costs.
    """

    max_tokens: int = Field(
        default=4096, ge=1,
        description="Largest max_tokens / max_completion_tokens a request may ask (vLLM also "
        "refuses more than vllm.max_model_len). A chat request that names neither is held to "
        "it where it is below vllm.max_model_len (vLLM would run to the end of the context).",
    )
    max_choices: int = Field(
        default=16, ge=1,
        description="Most answers one request may ask for: n, times the prompts of a batched "
        "text completion.",
    )
    max_logprobs: int = Field(
        default=20, ge=0,
        description="Largest top_logprobs (chat) or logprobs (text completions); OpenAI's is 20.",
    )
    max_stop: int = Field(default=4, ge=0, description="Most stop sequences; OpenAI's is 4.")
    max_stop_chars: int = Field(default=256, ge=1, description="Longest stop sequence.")
    max_logit_bias: int = Field(default=300, ge=0, description="Most logit_bias entries.")
    requests_per_minute: int | None = Field(
        default=None, ge=1,
        description="Inference requests each API key may send per minute (a burst of this many, "
        "then one every 60/N s), per gateway process. Null: no limit.",
    )
    tokens_per_minute: int | None = Field(
        default=None, ge=1,
        description="Prompt plus completion tokens each API key may use per minute, per gateway "
        "process, counted once vLLM has answered: a key past it waits until it is back under. "
        "Null: no limit.",
    )


class GrpoSettings(Section):
    """GRPO: practice on the store's train-split tasks through vLLM, learning from verifier
    rewards (a recipe's last method, or alone: ["grpo"]). The LoRA shape, max_seq_len, seed,
    device and max_seconds are training's; the learning rate is its own. The hyperparameters are
    `GrpoConfig`'s fields (`grpo_config()`); the rest is how the daemon runs practice."""

    learning_rate: float = config_field(GrpoConfig, "learning_rate")
    group_size: int = config_field(GrpoConfig, "group_size")
    rounds: int = config_field(GrpoConfig, "rounds")
    prompts_per_round: int = config_field(GrpoConfig, "prompts_per_round")
    temperature: float = config_field(GrpoConfig, "temperature")
    max_new_tokens: int = config_field(GrpoConfig, "max_new_tokens")
    clip_eps: float = config_field(GrpoConfig, "clip_eps")
    kl_beta: float = config_field(GrpoConfig, "kl_beta")
    updates_per_round: int = config_field(GrpoConfig, "updates_per_round")
    batch_size: int = config_field(GrpoConfig, "batch_size")
    concurrency: int = config_field(GrpoConfig, "concurrency")
    task_tag: str | None = Field(
        default=None, description="Practise only on tasks with this tag (e.g. family:add2)."
    )
    yield_to_users: bool = Field(
        default=True, description="A GRPO run the daemon starts pauses at its next rollout "
        "request or optimizer step while user requests are in flight, and resumes once users "
        "have been quiet for quiet_ms.",
    )
    quiet_ms: float = Field(
        default=1000.0, ge=0, description="How long users must be quiet before practice "
        "resumes (bench/practice_latency.py: 1000 kept user p50 within 1.04x of idle, 250 "
        "let it rise to 1.3x but practised 3x faster).",
    )
    nice: int = Field(
        default=19, ge=0, le=19, description="CPU niceness of the daemon's GRPO process: on a "
        "CPU host vLLM and the gateway come first.",
    )

    def grpo_config(self) -> GrpoConfig:
        """The GRPO hyperparameters these settings give a run."""
        return GrpoConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(GrpoConfig)})


class TrainingSettings(Section):
    """How adapters are learned from feedback (`lifelong train`, or the daemon's trainer)."""

    recipe: list[Method] = Field(
        default_factory=lambda: list(DEFAULT_RECIPE), min_length=1,
        description="Methods in order; one with no examples is left out. grpo comes last "
        "(it practises on what the feedback methods taught) or alone.",
    )
    grpo: GrpoSettings = Field(default_factory=GrpoSettings)
    fresh: bool = Field(
        default=False,
        description="Start each adapter from zero instead of the champion's weights.",
    )
    # The LoRA hyperparameters: `LoraTrainingConfig`'s fields (`lora_config()`), under the
    # names these settings have always had.
    lora_rank: int = config_field(LoraTrainingConfig, "rank")
    lora_alpha: int = config_field(LoraTrainingConfig, "alpha")
    lora_dropout: float = config_field(LoraTrainingConfig, "dropout")
    target_modules: list[str] = config_field(LoraTrainingConfig, "target_modules")
    learning_rate: float = config_field(LoraTrainingConfig, "learning_rate")
    warmup_steps: int = config_field(LoraTrainingConfig, "warmup_steps")
    epochs: int = config_field(LoraTrainingConfig, "epochs")
    max_steps: int | None = config_field(LoraTrainingConfig, "max_steps")
    batch_size: int = config_field(LoraTrainingConfig, "batch_size")
    max_seq_len: int = config_field(LoraTrainingConfig, "max_length")
    precision: Precision = config_field(LoraTrainingConfig, "precision")
    beta: float = config_field(LoraTrainingConfig, "beta")
    seed: int = 0
    replay_fraction: float = Field(
        default=0.25, ge=0.0, le=1.0,
        description="Older examples mixed in, as a share of the new ones, against forgetting.",
    )
    min_new_examples: int = Field(
        default=20, ge=1, description="Fewer new examples than this: the run is skipped."
    )
    min_rating: float = Field(
        default=1.0, description="Rated answers at or above this score are SFT examples."
    )
    anchor_fraction: float = Field(
        default=0.5, ge=0.0, lt=1.0,
        description="Share of the SFT stage given to the base model's own answers to everyday "
        "prompts (the general prompts' anchor half, answered once and kept in "
        "<data_dir>/evals/anchors.jsonl), so learning one thing does not overwrite how the "
        "model answers everything else. 0: off.",
    )
    max_seconds: float = Field(
        default=1800.0, gt=0,
        description="Training stops here and keeps what it learned (the gate judges it).",
    )
    timeout_s: float = Field(
        default=3600.0, gt=0,
        description="The daemon kills a trainer process still running after this long (runner "
        "worker: counted from when the run was queued, waiting for a worker included).",
    )
    runner: Literal["child", "worker"] = Field(
        default="child",
        description="child: the leading gateway runs each training run as a child process on its "
        "own machine. worker: it only records the run; a `lifelong trainer` process (its own "
        "pod or GPU node, with the same database, base model and adapter storage) takes it "
        "from the database and runs it.",
    )
    worker_lease_s: float = Field(
        default=30.0, ge=1.0, le=3600.0,
        description="A trainer worker renews its claim on the run it carries out every second "
        "(a third of this, if less); the leader marks the run interrupted once the claim went "
        "this long without renewal (the worker died with its process, or lost the database).",
    )
    device: str = Field(default="auto", description="auto (GPU if any), cpu, cuda, cuda:1, ...")

    def lora_config(self) -> LoraTrainingConfig:
        """The LoRA hyperparameters these settings give the trainer."""
        names = {f.name for f in dataclasses.fields(LoraTrainingConfig)}
        values = {LORA_KEYS.get(key, key): getattr(self, key) for key in type(self).model_fields
                  if LORA_KEYS.get(key, key) in names}
        return LoraTrainingConfig(**{**values, "target_modules": tuple(self.target_modules)})

    @model_validator(mode="after")
    def _timeout_after_the_limit(self) -> TrainingSettings:
        if self.timeout_s <= self.max_seconds:
            raise ValueError(
                f"timeout_s ({self.timeout_s}) must exceed max_seconds ({self.max_seconds}): "
                "the trainer needs time to save what it learned before it is killed"
            )
        check_recipe(self.recipe)
        return self


class GateSettings(Section):
    """When a candidate may replace the champion (see lifelong.evals.gate for the rules): the
    fields of `GatePolicy` the operator sets (`policy()`)."""

    min_improvement: float = config_field(GatePolicy, "min_improvement")
    alpha: float = config_field(GatePolicy, "alpha")
    holm: bool = config_field(GatePolicy, "holm")
    tolerance: float = config_field(GatePolicy, "tolerance")
    tolerances: dict[str, float] = config_field(GatePolicy, "tolerances")
    min_items: int = config_field(GatePolicy, "min_items")
    small_suite_alpha: float = config_field(GatePolicy, "small_suite_alpha")
    power: float = config_field(GatePolicy, "power")
    require_nonempty: bool = config_field(GatePolicy, "require_nonempty")
    format_rate_not_lower: bool = config_field(GatePolicy, "format_rate_not_lower")
    seed: int = config_field(GatePolicy, "seed")

    def policy(self, *, tolerances: Mapping[str, float], floors: Mapping[str, float]) -> GatePolicy:
        """The gate's policy: these settings, with the per-suite `tolerances` and `floors` the
        daemon derives (its general suite's)."""
        return GatePolicy(**{**self.model_dump(), "tolerances": dict(tolerances),
                             "floors": dict(floors)})


class VerifierSettings(Section):
    """Where answers are judged (lifelong.evals.verifiers) and what callers may register."""

    workers: int = Field(
        default=2, ge=1, le=64,
        description="Worker processes the verifiers run in, apart from the gateway's event loop "
        "and its threads: more judgements at once wait in this pool. Workers run at a lower "
        "CPU priority (nice 10), so the gateway answers first.",
    )
    max_pattern_chars: int = Field(
        default=1000, ge=1, le=MAX_PATTERN_CHARS,
        description="Longest regular expression a task or outcome may register (the regex "
        "verifier's pattern or reference, JSON Schema patterns); longer is a 422.",
    )


class SandboxSettings(Section):
    """python_tests' sandbox (lifelong.evals.sandbox; README, "Threat model"): the weakest
    isolation it may run under, and caps on what a task may ask for (more is refused at
    registration)."""

    isolation: Literal["full", "landlock", "unconfined"] = Field(
        default=_SANDBOX.isolation,
        description="full: user, mount, PID and network namespaces over an empty root, and "
        "seccomp (+ Landlock where present). landlock: seccomp and Landlock ABI >= 4 without "
        "namespaces, for hosts that forbid them (systemd RestrictNamespaces=, container seccomp "
        "profiles): the host's files are only Landlock-hidden. unconfined: whatever this host "
        "has, even nothing; only for trusted task authors. Below the level python_tests runs "
        "nothing and registering one is refused.",
    )
    max_timeout_s: float = Field(
        default=_SANDBOX.max_timeout_s, gt=0, le=600,
        description="Largest timeout_s a python_tests task may ask for (wall clock per answer).",
    )
    max_memory_mb: int = Field(
        default=_SANDBOX.max_memory_mb, ge=64,
        description="Largest memory_mb a python_tests task may ask for (address space of each "
        "of its two processes).",
    )
    scratch_mb: int = Field(
        default=_SANDBOX.scratch_mb, ge=1, le=4096,
        description="What the sandboxed code may write in all (its tmpfs root; with namespaces).",
    )

    def policy(self) -> SandboxPolicy:
        return SandboxPolicy(isolation=self.isolation, max_timeout_s=self.max_timeout_s,
                             max_memory_mb=self.max_memory_mb, scratch_mb=self.scratch_mb)


class EvalSettings(Section):
    """The suites candidates are judged on, and how they are answered."""

    regression_dir: Path | None = Field(
        default=None,
        description="Folder of regression suites (*.jsonl). Empty: <data_dir>/evals/regression.",
    )
    retention_file: Path | None = Field(
        default=None,
        description="The frozen retention suite. Empty: <data_dir>/evals/retention.jsonl.",
    )
    retention_source: Path | None = Field(
        default=None,
        description="JSONL items the retention suite is frozen from (those the base model "
        "passes). Empty: the embedded base model's own skill; with a model of your own, "
        "no retention suite until you give one.",
    )
    retention_items: int = Field(
        default=300, ge=1, description="Items drawn from the embedded model's skill."
    )
    general_suite: bool = Field(
        default=True,
        description="Judge every candidate on the general-capability suite too: shipped "
        "everyday prompts answered once by the base model (frozen in "
        "<data_dir>/evals/general.jsonl), scored by how alike the candidate's answers are "
        "(lifelong.evals.general). Off only for a model that cannot chat.",
    )
    general_min_ratio: float = Field(
        default=0.6, ge=0.0, le=1.0,
        description="General suite: an answer counts as kept at this similarity to the base's.",
    )
    general_floor: float = Field(
        default=0.3, ge=0.0, le=1.0,
        description="General suite: the lowest mean similarity to the base model's answers a "
        "candidate may have (a hard check of the gate). Measured on SmolLM2-135M: an adapter "
        "trained with anchors that learned bare sums kept 0.43-0.52 while answering everyday "
        "prompts sensibly (often in other words, sometimes better); one trained without them "
        "kept 0.02 ('14766666' for a capital).",
    )
    general_tolerance: float = Field(
        default=1.0, ge=0.0, le=1.0,
        description="General suite: the largest drop against the champion. 1: none, the floor "
        "decides (any adapter rewords answers, so the first candidate drops by half against "
        "the base model itself).",
    )
    max_tokens: int = Field(default=64, ge=1, description="Longest answer per eval item.")
    samples: int = Field(
        default=1, ge=1, description="Answers per item; an item passes when half of them do."
    )
    temperature: float = Field(
        default=0.0, ge=0.0, description="0: greedy, one answer (then samples must be 1)."
    )
    concurrency: int = Field(default=64, ge=1, description="Eval requests in flight at once.")
    gate: GateSettings = Field(default_factory=GateSettings)
    sandbox: SandboxSettings = Field(default_factory=SandboxSettings)
    verifiers: VerifierSettings = Field(default_factory=VerifierSettings)

    @model_validator(mode="after")
    def _samples_need_sampling(self) -> EvalSettings:
        if self.samples > 1 and self.temperature == 0:
            raise ValueError(f"samples={self.samples} needs a temperature above 0: greedy "
                             "decoding gives the same answer every time")
        return self


class PracticeSettings(Section):
    """Practice: GRPO cycles the daemon starts by itself when users are quiet, on the store's
    train-split tasks (none registered: no practice). Each is judged like any candidate."""

    enabled: bool = Field(default=True, description="Off: GRPO only when asked or in the recipe.")
    idle_s: float = Field(
        default=30.0, ge=0, description="Users must have been quiet this long to start practice."
    )
    every_minutes: float = Field(
        default=60.0, gt=0, description="At most one practice cycle this often (from the last "
        "GRPO run's start).",
    )


class ScheduleSettings(Section):
    """When the daemon trains, judges and promotes by itself."""

    enabled: bool = Field(default=True, description="Off: only `POST /admin/train` starts a cycle.")
    interval_minutes: float | None = Field(
        default=360.0, gt=0, description="A cycle this often (anchored on the last run's start)."
    )
    cron: str | None = Field(
        default=None, description="A crontab line (UTC), e.g. '0 3 * * *'; replaces the interval."
    )
    min_new_feedback: int = Field(
        default=50, ge=0, description="Data trigger: a cycle once this many new feedback items "
        "arrived since the last run's data (0: no data trigger).",
    )
    check_every_s: float = Field(default=30.0, gt=0, description="How often the data is counted.")
    rejudge_new_heldout: int = Field(
        default=20, ge=0, description="A candidate the gate left waiting (not enough evidence) "
        "is judged again once this many held-out items (held-out tasks and held-out feedback) "
        "were added since its judgement, and promoted if approved then (0: only when asked: "
        "`lifelong eval`, POST /admin/eval).",
    )
    auto_promote: bool = Field(
        default=True, description="Promote what the gate approves; off: approve only."
    )
    practice: PracticeSettings = Field(default_factory=PracticeSettings)

    @field_validator("cron")
    @classmethod
    def _crontab(cls, value: str | None) -> str | None:
        if value is not None:
            from apscheduler.triggers.cron import CronTrigger

            try:
                CronTrigger.from_crontab(value)
            except ValueError as exc:
                raise ValueError(f"not a crontab line ({exc}); e.g. '0 3 * * *'") from None
        return value


class ClusterSettings(Section):
    """Many gateway replicas against one PostgreSQL: all serve; one (the lease holder) learns."""

    replica_id: str = Field(
        default_factory=lambda: socket.gethostname(), min_length=1, max_length=255,
        description="This gateway replica's name, unique among replicas (Kubernetes: the pod "
        "name). A restarted replica with the same name takes its lease back at once.")
    advertise_url: str | None = Field(
        default=None, description="Where other replicas and people reach this gateway (shown "
        "as the leader's address in refusals and `lifelong status`).")
    lease_s: float = Field(
        default=15.0, ge=1.0, le=3600.0, description="The learning loop's leadership lease: "
        "another replica takes over within about this long after the leader dies.")
    sync_s: float = Field(
        default=1.0, gt=0, le=60.0, description="How often a replica reads the registry's "
        "champion and checks that every vLLM server it talks to serves it.")
    heartbeat_s: float = Field(
        default=5.0, gt=0, le=300.0, description="How often a replica writes what it serves "
        "to the database (`lifelong status` lists replicas from it).")
    propagation_timeout_s: float = Field(
        default=60.0, ge=0, description="A promotion waits this long for every live replica "
        "to route the alias to the new champion before it answers (and says which did not).")


class CanarySettings(Section):
    """Canary: an adapter the gate approved first serves a share of the alias's users; users'
    live outcomes (outcome feedback) decide whether it takes all traffic (lifelong.evals.
    canary_policy). A user stays on one version for the whole canary."""

    enabled: bool = Field(
        default=True, description="Off: the gate's approval promotes at once (to all users).")
    share: float = Field(
        default=0.1, gt=0, lt=1, description="The share of the alias's users sent to the "
        "candidate (by their user key, else their API key).")
    check_every_s: float = Field(default=60.0, gt=0, description="How often the live "
                                 "outcomes are counted and the sequential test looked at.")
    min_minutes: float = Field(default=30.0, ge=0, description="No promotion before this (a "
                               "rollback may come at any time).")
    max_minutes: float = Field(
        default=24 * 60.0, gt=0, description="Then the canary ends, keeping the champion: not "
        "enough live evidence (the candidate stays approved).")
    min_outcomes: int = config_field(CanaryPolicy, "min_outcomes")
    alpha: float = config_field(CanaryPolicy, "alpha")
    margin: float = config_field(CanaryPolicy, "margin")
    reward_margin: float = config_field(CanaryPolicy, "reward_margin")
    tau: float = config_field(CanaryPolicy, "tau")
    min_requests: int = config_field(CanaryPolicy, "min_requests")
    max_error_rate_increase: float = config_field(CanaryPolicy, "max_error_rate_increase")
    max_latency_ratio: float = config_field(CanaryPolicy, "max_latency_ratio")

    def policy(self, *, max_minutes: float | None = None) -> CanaryPolicy:
        return CanaryPolicy(
            alpha=self.alpha, margin=self.margin, reward_margin=self.reward_margin, tau=self.tau,
            min_outcomes=self.min_outcomes, min_duration_s=self.min_minutes * 60,
            max_duration_s=(max_minutes or self.max_minutes) * 60,
            min_requests=self.min_requests,
            max_error_rate_increase=self.max_error_rate_increase,
            max_latency_ratio=self.max_latency_ratio)


class WatchSettings(Section):
    """Watch: after a full promotion, the new champion's live pass rate and reward are compared
    with its predecessor's last window of the same length; a confident drop rolls back."""

    enabled: bool = Field(default=True, description="Off: nothing watches a new champion.")
    minutes: float = Field(default=60.0, gt=0, description="How long a new champion is "
                           "watched, and how much of its predecessor's traffic it is held to.")


class PromotionSettings(Section):
    """How an approved adapter reaches users, and how it leaves them (statistics: canary)."""

    canary: CanarySettings = Field(default_factory=CanarySettings)
    watch: WatchSettings = Field(default_factory=WatchSettings)


class RetentionSettings(Section):
    """How long the store keeps what users sent (README: "Your users' data"). Off by default:
    the period is each deployment's own policy (law, contract), and a default one would delete
    an upgraded deployment's history, its training data and replay, at the first start. Set it
    before going live. The leader deletes in batches, each its own short transaction."""

    interactions_days: float | None = Field(
        default=None, gt=0, description="Delete prompts and answers (and all feedback on them, "
        "held-out ones included) this many days after they were made. Empty: keep them.")
    feedback_days: float | None = Field(
        default=None, gt=0, description="Delete feedback this many days after it was given. "
        "Empty: keep it (as long as its interaction).")
    rollouts_days: float | None = Field(
        default=None, gt=0, description="Delete GRPO's sampled answers this many days after "
        "they were made. Empty: keep them.")
    every_minutes: float = Field(default=60.0, gt=0, description="How often the leader looks "
                                 "for expired rows.")
    batch_size: int = Field(default=500, ge=1, le=10_000, description="Rows per delete "
                            "transaction: the longest a writer waits on SQLite's write lock.")
    pause_ms: float = Field(default=10.0, ge=0, le=10_000, description="Pause between batches, "
                            "for writers to get in.")


class Settings(BaseSettings):
    """Everything the daemon can be told. `lifelong config show` prints the effective values."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    data_dir: Path = Field(
        default=Path("lifelong-data"), description="Adapters, the SQLite database, the base model."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    adapter_storage: Path | None = Field(
        default=None,
        description="Where adapters are written and read (default: data_dir/adapters). With "
        "several gateway replicas: shared storage every gateway and vLLM server mounts at "
        "this same path.")
    base_model: BaseModelSettings = Field(default_factory=BaseModelSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    vllm: VLLMSettings = Field(default_factory=VLLMSettings)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    evals: EvalSettings = Field(default_factory=EvalSettings)
    schedule: ScheduleSettings = Field(default_factory=ScheduleSettings)
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)
    promotion: PromotionSettings = Field(default_factory=PromotionSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)

    @model_validator(mode="after")
    def _lora_fits_vllm(self) -> Settings:
        if self.training.lora_rank > self.vllm.max_lora_rank:
            raise ValueError(
                f"training.lora_rank ({self.training.lora_rank}) exceeds vllm.max_lora_rank "
                f"({self.vllm.max_lora_rank}); vLLM would refuse the adapter"
            )
        return self

    @property
    def base_model_path(self) -> Path:
        return self.base_model.path or self.data_dir / "base_model"

    @property
    def regression_dir(self) -> Path:
        return self.evals.regression_dir or self.data_dir / "evals" / "regression"

    @property
    def retention_file(self) -> Path:
        return self.evals.retention_file or self.data_dir / "evals" / "retention.jsonl"

    @property
    def general_file(self) -> Path:
        return self.data_dir / "evals" / "general.jsonl"

    @property
    def anchors_file(self) -> Path:
        return self.data_dir / "evals" / "anchors.jsonl"

    @property
    def vllm_urls(self) -> list[str]:
        """The vLLM servers the daemon answers through: the configured ones, else its own."""
        return self.vllm.upstreams or [f"http://127.0.0.1:{self.vllm.port}"]


    @property
    def adapters_dir(self) -> Path:
        return self.adapter_storage or self.data_dir / "adapters"

    @property
    def database_url(self) -> str:
        if self.database.url is not None:
            return self.database.url.get_secret_value()
        return f"sqlite:///{(self.data_dir / 'lifelong.db').resolve()}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: tuple[PydanticBaseSettingsSource, ...] = (init_settings, env_settings)
        yaml_file = _yaml_file.get()
        if yaml_file is not None:
            sources += (YamlConfigSettingsSource(settings_cls, yaml_file=yaml_file),)
        return sources


class SettingsError(Exception):
    """Settings that cannot start the daemon; the message names every bad key and its fix."""


def _key_of(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(root)"


def _env_name(key: str) -> str:
    return ENV_PREFIX + key.replace(".", "__").upper()


# LIFELONG_* variables that are not settings: the CLI's config file and admin key, the setup
# script's choices, the test suite's switches.
NOT_SETTINGS = {"LIFELONG_CONFIG", "LIFELONG_API_KEY", "LIFELONG_VLLM_BUILD", "LIFELONG_DEV"}


def _check_environment() -> None:
    """Refuse a LIFELONG_* variable that names no setting: pydantic-settings ignores an unknown
    top-level one, so a typo (LIFELONG_DATADIR) would silently change nothing."""
    import difflib

    known = {_env_name(name) for name in Settings.model_fields}
    unknown = sorted(
        name for name in os.environ
        if name.startswith(ENV_PREFIX) and name not in NOT_SETTINGS
        and not name.startswith(f"{ENV_PREFIX}TEST_") and name.split("__")[0] not in known
    )
    if unknown:
        lines = []
        for name in unknown:
            close = difflib.get_close_matches(name.split("__")[0], sorted(known), n=1)
            hint = f"did you mean {close[0]}?" if close else f"known: {', '.join(sorted(known))}"
            lines.append(f"  {name}: no such setting; {hint}")
        raise SettingsError("invalid settings:\n" + "\n".join(lines))


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings from `config_file` (YAML), the environment and `overrides`.

    Raises SettingsError listing every invalid key at once.
    """
    if config_file is not None:
        if not config_file.is_file():
            raise SettingsError(f"config file {config_file} does not exist; pass an existing YAML file")
        try:
            import yaml

            loaded = yaml.safe_load(config_file.read_text())
        except yaml.YAMLError as exc:
            raise SettingsError(f"config file {config_file} is not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise SettingsError(f"config file {config_file} must hold a mapping of settings at the top")
    _check_environment()
    token = _yaml_file.set(config_file)
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except PydanticSettingsError as exc:  # an environment variable that is not even parseable
        raise SettingsError(
            f"invalid settings: {exc}; a whole section set by one variable (e.g. "
            f"{ENV_PREFIX}VLLM) takes a JSON object: set its keys one by one instead "
            f"({ENV_PREFIX}VLLM__PORT=8100)"
        ) from None
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            key = _key_of(error["loc"])
            fix = (
                f"set `{key}` in the config file or {_env_name(key)}"
                if error["type"] != "extra_forbidden"
                else "remove it (unknown key; see `lifelong config show` for the known ones)"
            )
            secret = key.endswith(("sha256", "url"))
            got = "" if secret else f" (got {error.get('input')!r})"
            lines.append(f"  {key}: {error['msg']}{got}; {fix}")
        raise SettingsError("invalid settings:\n" + "\n".join(lines)) from None
    finally:
        _yaml_file.reset(token)


def write_settings_file(settings: Settings, path: Path) -> Path:
    """The effective settings, secrets included, as a YAML file only its owner can read: how a
    child process (the trainer) gets exactly the settings its daemon runs with."""
    import yaml

    data = settings.model_dump(mode="json")
    if settings.database.url is not None:
        data["database"]["url"] = settings.database.url.get_secret_value()
    for key, value in zip(data["gateway"]["api_keys"], settings.gateway.api_keys, strict=True):
        key["sha256"] = value.sha256.get_secret_value()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # the mode above only applies to a new file, not one left from before
    with os.fdopen(fd, "w") as file:
        yaml.safe_dump(data, file, sort_keys=False)
    return path


def masked(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain data, secrets masked, for display: passwords and secret
    parameters in every URL (database, upstreams), key digests, and the value of any
    `--...key/token/password/secret` option in vllm.extra_args."""
    from lifelong.feedback_store.database import mask_secrets

    def mask(value: Any) -> Any:
        if isinstance(value, str):
            return mask_secrets(value)
        if isinstance(value, dict):
            return {key: mask(item) for key, item in value.items()}
        if isinstance(value, list):
            shown = [mask(item) for item in value]
            for index, item in enumerate(value):  # `--api-key X` and `--api-key=X`
                if isinstance(item, str) and _SECRET_OPTION.match(item):
                    if "=" in item:
                        shown[index] = item.split("=", 1)[0] + "=***"
                    elif index + 1 < len(shown):
                        shown[index + 1] = "***"
            return shown
        return value

    data = settings.model_dump(mode="json")
    if settings.database.url is not None:
        data["database"]["url"] = settings.database.url.get_secret_value()
    data["database"]["effective_url"] = settings.database_url
    for key in data["gateway"]["api_keys"]:
        key["sha256"] = "***"
    return mask(data)


_SECRET_OPTION = re.compile(r"(?i)--[\w-]*(?:key|token|password|secret)[\w-]*(?:=|$)")
