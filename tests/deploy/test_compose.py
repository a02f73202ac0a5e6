"""deploy/docker-compose.yml: valid against the Compose Specification's JSON schema, and
consistent with the code it deploys (paths vLLM and the gateway share, ports Prometheus scrapes,
settings the gateway's environment sets).

The schema is the compose-spec's `compose-spec.json` as vendored by check-jsonschema (a dev
dependency; Apache-2.0, license file beside it in the package), so it validates offline.
"""

from __future__ import annotations

import copy
import importlib.resources
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from lifelong.daemon.vllm_launch import vllm_env
from lifelong.daemon.settings import Settings
from lifelong.daemon.upstream import BASE_MODEL_NAME

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
EXAMPLE_CONFIG = DEPLOY / "lifelong.example.yaml"
CONFIG_IN_CONTAINER = "/etc/lifelong/lifelong.yaml"
# At shutdown the gateway gives the interaction log and the feedback committer 30 s each
# (daemon/gateway/app.py), after the drain; stopping the trainer and vLLM takes some more.
SHUTDOWN_AFTER_DRAIN_S = 2 * 30 + 10


def compose_schema() -> dict[str, Any]:
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads((vendor / "compose-spec.json").read_text())


def schema_errors(document: Any) -> list[str]:
    validator = jsonschema.Draft202012Validator(compose_schema())
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


def flag(args: list[str], name: str) -> str:
    assert name in args, f"{name} missing from {args}"
    return str(args[args.index(name) + 1])


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> source (a named volume or a host path) of a service's short-form mounts."""
    result = {}
    for spec in service.get("volumes", []):
        source, target, *_ = spec.split(":")
        result[target] = source
    return result


def seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration))


@pytest.fixture
def gateway_settings(compose: dict[str, Any], deploy_settings: Any) -> Settings:
    """The settings `lifelong serve` builds inside the gateway container: lifelong.yaml (the
    example, as the README says to copy) plus the compose file's LIFELONG_* environment."""
    gateway = compose["services"]["gateway"]
    assert mounts(gateway)[CONFIG_IN_CONTAINER] == "./lifelong.yaml"
    return deploy_settings(EXAMPLE_CONFIG, gateway["environment"])


def test_compose_file_is_valid_against_the_compose_spec_schema(compose_raw: dict[str, Any]) -> None:
    assert schema_errors(compose_raw) == []


def test_compose_file_stays_valid_once_env_example_is_interpolated(compose: dict[str, Any]) -> None:
    assert schema_errors(compose) == []


def test_the_schema_check_catches_a_misspelt_key(compose_raw: dict[str, Any]) -> None:
    broken = copy.deepcopy(compose_raw)
    broken["services"]["vllm"]["healthchek"] = broken["services"]["vllm"].pop("healthcheck")
    assert any("healthchek" in error for error in schema_errors(broken))


def test_env_example_sets_every_required_variable(
    compose_raw: dict[str, Any], compose_env: dict[str, str], compose_interpolate: Any
) -> None:
    compose_interpolate(compose_raw, compose_env)  # a `${NAME:?...}` left unset raises
    without_password = {k: v for k, v in compose_env.items() if k != "POSTGRES_PASSWORD"}
    with pytest.raises(Exception, match="POSTGRES_PASSWORD: set POSTGRES_PASSWORD in deploy/.env"):
        compose_interpolate(compose_raw, without_password)


def test_every_service_has_a_health_check_except_the_one_shot_migration(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"postgres", "vllm", "migrate", "gateway", "prometheus", "grafana"} <= set(services)
    for name, service in services.items():
        if name == "migrate":
            assert service["restart"] == "no"
            continue
        assert "healthcheck" in service, name
        assert service["healthcheck"]["test"][0] == "CMD", name


def test_images_are_pinned(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: {image}"
    assert compose["services"]["vllm"]["image"] == "vllm/vllm-openai:v0.32.0"


def test_vllm_serves_the_base_model_with_runtime_lora_on_the_gpu(compose: dict[str, Any]) -> None:
    vllm = compose["services"]["vllm"]
    args = vllm["command"]
    assert vllm["entrypoint"] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    assert flag(args, "--served-model-name") == BASE_MODEL_NAME
    assert "--enable-lora" in args
    # The same variable the daemon sets for its own vLLM child.
    assert vllm["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == vllm_env(Settings())[
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "1"
    devices = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert 0 < float(flag(args, "--gpu-memory-utilization")) < 1
    health = " ".join(vllm["healthcheck"]["test"])
    assert f"127.0.0.1:{flag(args, '--port')}/health'" in health


def test_vllm_sees_adapters_and_base_model_at_the_gateways_paths(
    compose: dict[str, Any], gateway_settings: Settings
) -> None:
    vllm, gateway = compose["services"]["vllm"], compose["services"]["gateway"]
    data_dir = str(gateway_settings.data_dir)
    # The gateway writes adapters under data_dir and sends vLLM their paths: one volume, one path.
    assert str(gateway_settings.adapters_dir).startswith(data_dir + "/")
    assert mounts(gateway)[data_dir] == mounts(vllm)[data_dir] == "lifelong-data"
    assert mounts(compose["services"]["migrate"])[data_dir] == "lifelong-data"
    # vLLM serves the model the trainer loads.
    model = str(gateway_settings.base_model_path)
    assert flag(vllm["command"], "--model") == model
    assert mounts(gateway)[model] == mounts(vllm)[model]


def test_vllm_flags_agree_with_the_gateways_settings(compose: dict[str, Any],
                                                    gateway_settings: Settings) -> None:
    args = compose["services"]["vllm"]["command"]
    assert int(flag(args, "--max-lora-rank")) == gateway_settings.vllm.max_lora_rank
    assert int(flag(args, "--max-lora-rank")) >= gateway_settings.training.lora_rank
    assert int(flag(args, "--max-loras")) == gateway_settings.vllm.max_loras
    assert int(flag(args, "--max-model-len")) == gateway_settings.vllm.max_model_len


def test_gateway_environment_validates_through_the_daemons_settings(
    compose: dict[str, Any], gateway_settings: Settings, lifelong_env_of: Any, env_key: Any
) -> None:
    for service in ("gateway", "migrate"):
        for name in lifelong_env_of(compose["services"][service]["environment"]):
            env_key(name)  # names a real settings key, or fails naming the known ones
    vllm_port = flag(compose["services"]["vllm"]["command"], "--port")
    assert gateway_settings.vllm.upstreams == [f"http://vllm:{vllm_port}"]
    assert gateway_settings.database_url == (
        f"postgresql+psycopg://lifelong:{compose['services']['postgres']['environment']['POSTGRES_PASSWORD']}"
        "@postgres:5432/lifelong"
    )
    assert gateway_settings.gateway.host == "0.0.0.0" and gateway_settings.gateway.api_keys
    assert compose["services"]["migrate"]["environment"] == compose["services"]["gateway"]["environment"]


def test_an_unknown_lifelong_variable_is_caught(env_key: Any) -> None:
    # pydantic-settings would ignore it silently; the deployment tests do not.
    with pytest.raises(AssertionError, match="names no settings key"):
        env_key("LIFELONG_DATADIR")
    with pytest.raises(AssertionError, match="names no settings key"):
        env_key("LIFELONG_VLLM__UPSTREAM")


def test_gateway_runs_serve_after_the_migration_and_outlives_its_drain(
    compose: dict[str, Any], gateway_settings: Settings
) -> None:
    gateway, migrate = compose["services"]["gateway"], compose["services"]["migrate"]
    assert gateway["command"] == ["lifelong", "serve", "--config", CONFIG_IN_CONTAINER]
    assert migrate["command"] == ["lifelong", "db", "upgrade", "--config", CONFIG_IN_CONTAINER]
    assert gateway["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    drain_s = gateway_settings.gateway.drain_timeout_s
    assert seconds(gateway["stop_grace_period"]) > drain_s + SHUTDOWN_AFTER_DRAIN_S
    port = gateway_settings.gateway.port
    assert gateway["ports"] == [f"8000:{port}"]
    assert f"127.0.0.1:{port}/readyz'" in " ".join(gateway["healthcheck"]["test"])
    # The trainer, a child of the gateway, needs the GPU too.
    devices = gateway["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia"


def test_postgres_keeps_its_data_on_a_volume_and_is_health_checked(compose: dict[str, Any]) -> None:
    postgres = compose["services"]["postgres"]
    assert mounts(postgres)["/var/lib/postgresql/data"] in compose["volumes"]
    assert postgres["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    env = postgres["environment"]
    assert (env["POSTGRES_USER"], env["POSTGRES_DB"]) == ("lifelong", "lifelong")


def test_every_named_volume_is_declared_and_every_host_path_exists(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for target, source in mounts(service).items():
            if source.startswith(("./", "../")):
                if target == CONFIG_IN_CONTAINER:
                    continue  # the user's copy of lifelong.example.yaml (README)
                assert (DEPLOY / source).exists(), f"{name}: {source}"
            elif not source.startswith("/"):
                assert source in compose["volumes"], f"{name}: volume {source} not declared"


def test_prometheus_scrapes_the_ports_the_services_listen_on(compose: dict[str, Any],
                                                             gateway_settings: Settings) -> None:
    prometheus = compose["services"]["prometheus"]
    config_path = next(s for t, s in mounts(prometheus).items() if t == "/etc/prometheus/prometheus.yml")
    config = yaml.safe_load((DEPLOY / config_path).read_text())
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    targets = {job["job_name"]: (job.get("metrics_path", "/metrics"), job["static_configs"][0]["targets"])
               for job in config["scrape_configs"]}
    vllm_port = flag(compose["services"]["vllm"]["command"], "--port")
    assert targets["lifelong"] == ("/metrics", [f"gateway:{gateway_settings.gateway.port}"])
    assert targets["vllm"] == ("/metrics", [f"vllm:{vllm_port}"])
    assert config["global"]["scrape_interval"] == "15s"


def test_grafana_is_provisioned_from_the_folders_it_mounts(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    grafana_mounts = mounts(grafana)
    provisioning = DEPLOY / grafana_mounts["/etc/grafana/provisioning"]
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    prometheus_port = compose["services"]["prometheus"]["ports"][0].rsplit(":", 1)[1]
    assert source["type"] == "prometheus" and source["uid"] == "prometheus"
    assert source["url"] == f"http://prometheus:{prometheus_port}"
    providers = yaml.safe_load((provisioning / "dashboards" / "lifelong.yml").read_text())
    (provider,) = providers["providers"]
    dashboards_path = provider["options"]["path"]
    assert dashboards_path in grafana_mounts, f"provider reads {dashboards_path}, not mounted"
    assert (DEPLOY / grafana_mounts[dashboards_path]).is_dir()


def test_provisioned_dashboards_parse_and_use_the_provisioned_datasource() -> None:
    # Every dashboard in the provisioned folder must load and name a provisioned datasource.
    for path in sorted((DEPLOY / "grafana" / "dashboards").glob("*.json")):
        dashboard = json.loads(path.read_text())
        uids = {source.get("uid") for source in _datasources(dashboard)}
        unknown = {uid for uid in uids if uid not in ("prometheus", "-- Grafana --", "grafana")
                   and not str(uid).startswith("$")}
        assert not unknown, f"{path.name} refers to datasources Grafana is not given: {unknown}"


def _datasources(node: Any) -> list[Any]:
    if isinstance(node, dict):
        found = [node["datasource"]] if isinstance(node.get("datasource"), dict) else []
        return found + [d for value in node.values() for d in _datasources(value)]
    if isinstance(node, list):
        return [d for value in node for d in _datasources(value)]
    return []
