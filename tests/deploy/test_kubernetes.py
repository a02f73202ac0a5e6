"""deploy/kubernetes: every object valid against the Kubernetes OpenAPI schemas (strict: an
unknown field fails), the kustomization complete, and the pods consistent with the code and
with each other (adapter paths, ports, GPU, probes, settings).

Schemas come from kubernetes-validate (a dev dependency bundling the JSON schemas per Kubernetes
release), so this runs offline and without a cluster.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from lifelong.daemon.settings import Settings
from lifelong.daemon.upstream import BASE_MODEL_NAME

KUBERNETES = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.33.0"  # an older release than the newest bundled: stay portable
Objects = dict[tuple[str, str], dict[str, Any]]


def flag(args: list[str], name: str) -> str:
    assert name in args, f"{name} missing from {args}"
    return str(args[args.index(name) + 1])


def pod(objects: Objects, name: str) -> dict[str, Any]:
    return objects[("Deployment", name)]["spec"]["template"]["spec"]


def container(objects: Objects, name: str) -> dict[str, Any]:
    (only,) = pod(objects, name)["containers"]
    return only


def mounts(objects: Objects, name: str, entry: dict[str, Any] | None = None) -> dict[str, tuple[str, str]]:
    """mountPath -> (claim or configMap name, subPath) of one container."""
    volumes = {}
    for volume in pod(objects, name)["volumes"]:
        source = (volume.get("persistentVolumeClaim", {}).get("claimName")
                  or volume.get("configMap", {}).get("name") or volume["name"])
        volumes[volume["name"]] = source
    entry = entry or container(objects, name)
    return {m["mountPath"]: (volumes[m["name"]], m.get("subPath", "")) for m in entry["volumeMounts"]}


@pytest.fixture
def gateway_settings(kubernetes_objects: Objects, deploy_settings: Any, lifelong_env_of: Any,
                     tmp_path: Path) -> Settings:
    """The settings `lifelong serve` builds in the gateway pod: the ConfigMap's lifelong.yaml plus
    the container's LIFELONG_* environment (the Secret's URL taken from secret.yaml)."""
    config = tmp_path / "lifelong.yaml"
    config.write_text(kubernetes_objects[("ConfigMap", "lifelong-config")]["data"]["lifelong.yaml"])
    url = kubernetes_objects[("Secret", "lifelong-db")]["stringData"]["url"]
    env = {name: (url if value == "<secret lifelong-db/url>" else value)
           for name, value in lifelong_env_of(container(kubernetes_objects, "gateway")["env"]).items()}
    return deploy_settings(config, env)


def test_every_object_is_valid_against_the_kubernetes_schemas(kubernetes_objects: Objects) -> None:
    assert len(kubernetes_objects) >= 8
    for obj in kubernetes_objects.values():
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)  # raises, naming the field


def test_the_schema_check_catches_a_misplaced_field(kubernetes_objects: Objects) -> None:
    broken = copy.deepcopy(kubernetes_objects[("Deployment", "vllm")])
    broken["spec"]["template"]["spec"]["containers"][0]["gpu"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest_in_the_folder() -> None:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    files = {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    assert kustomization["namespace"] == "lifelong"
    assert [image["name"] for image in kustomization["images"]] == ["lifelong-gateway"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed here")
def test_kubectl_kustomize_builds_the_manifests() -> None:
    built = subprocess.run(["kubectl", "kustomize", str(KUBERNETES)], capture_output=True,
                           text=True, timeout=60, check=True).stdout
    objects = [doc for doc in yaml.safe_load_all(built) if doc]
    assert {obj["metadata"].get("namespace") for obj in objects if obj["kind"] != "Namespace"} == {"lifelong"}
    gateway = next(o for o in objects if (o["kind"], o["metadata"]["name"]) == ("Deployment", "gateway"))
    images = {c["image"] for c in gateway["spec"]["template"]["spec"]["initContainers"]
              + gateway["spec"]["template"]["spec"]["containers"]}
    assert images == {"registry.example.com/lifelong-gateway:0.1.0"}
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_vllm_serves_the_base_model_with_runtime_lora_on_a_gpu(kubernetes_objects: Objects) -> None:
    vllm = container(kubernetes_objects, "vllm")
    args = vllm["args"]
    assert vllm["image"] == "vllm/vllm-openai:v0.32.0"
    assert vllm["command"] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    assert flag(args, "--served-model-name") == BASE_MODEL_NAME and "--enable-lora" in args
    assert {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "1"} in vllm["env"]
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == 1
    port = int(flag(args, "--port"))
    assert vllm["ports"] == [{"name": "http", "containerPort": port}]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert vllm[probe]["httpGet"] == {"path": "/health", "port": "http"}, probe


def test_both_pods_see_adapters_and_base_model_at_the_same_paths(
    kubernetes_objects: Objects, gateway_settings: Settings
) -> None:
    gateway, vllm = mounts(kubernetes_objects, "gateway"), mounts(kubernetes_objects, "vllm")
    data_dir, model = str(gateway_settings.data_dir), str(gateway_settings.base_model_path)
    assert str(gateway_settings.adapters_dir).startswith(data_dir + "/")
    assert gateway[data_dir] == vllm[data_dir] == ("lifelong-data", "data")
    model_mount = str(Path(model).parent)
    assert gateway[model_mount] == vllm[model_mount]
    assert flag(container(kubernetes_objects, "vllm")["args"], "--model") == model
    # Two pods, possibly on two nodes, share the claim.
    claim = kubernetes_objects[("PersistentVolumeClaim", "lifelong-data")]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


def test_vllm_flags_agree_with_the_gateways_settings(kubernetes_objects: Objects,
                                                    gateway_settings: Settings) -> None:
    args = container(kubernetes_objects, "vllm")["args"]
    assert int(flag(args, "--max-lora-rank")) == gateway_settings.vllm.max_lora_rank
    assert int(flag(args, "--max-loras")) == gateway_settings.vllm.max_loras
    assert int(flag(args, "--max-model-len")) == gateway_settings.vllm.max_model_len


def test_gateway_environment_and_configmap_validate_through_the_daemons_settings(
    kubernetes_objects: Objects, gateway_settings: Settings, lifelong_env_of: Any, env_key: Any
) -> None:
    gateway_pod = pod(kubernetes_objects, "gateway")
    for entry in gateway_pod["initContainers"] + gateway_pod["containers"]:
        for name in lifelong_env_of(entry["env"]):
            env_key(name)
    service = kubernetes_objects[("Service", "vllm")]["spec"]["ports"][0]
    assert gateway_settings.vllm.upstreams == [f"http://vllm:{service['port']}"]
    assert gateway_settings.database_url.startswith("postgresql+psycopg://")
    assert gateway_settings.gateway.host == "0.0.0.0" and gateway_settings.gateway.api_keys


def test_gateway_migrates_first_then_serves_with_probes_and_drain_time(
    kubernetes_objects: Objects, gateway_settings: Settings
) -> None:
    gateway_pod = pod(kubernetes_objects, "gateway")
    (migrate,) = gateway_pod["initContainers"]
    gateway = container(kubernetes_objects, "gateway")
    assert migrate["command"][:3] == ["lifelong", "db", "upgrade"]
    assert gateway["command"][:2] == ["lifelong", "serve"]
    config_dir = str(Path(flag(gateway["command"], "--config")).parent)
    assert mounts(kubernetes_objects, "gateway")[config_dir] == ("lifelong-config", "")
    assert mounts(kubernetes_objects, "gateway", migrate)[config_dir] == ("lifelong-config", "")
    assert migrate["env"] == gateway["env"]
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert gateway["ports"] == [{"name": "http", "containerPort": gateway_settings.gateway.port}]
    # Drain, then log and feedback writer flush (30 s each), trainer and vLLM stop (app.py).
    assert gateway_pod["terminationGracePeriodSeconds"] > gateway_settings.gateway.drain_timeout_s + 70
    # One gateway, replaced not rolled: never two trainers writing adapters at once.
    deployment = kubernetes_objects[("Deployment", "gateway")]["spec"]
    assert deployment["replicas"] == 1 and deployment["strategy"]["type"] == "Recreate"
    # The trainer is the gateway's child: the pod carries its GPU.
    assert gateway["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_gateway_runs_as_the_images_user_and_can_write_the_volume(kubernetes_objects: Objects) -> None:
    context = pod(kubernetes_objects, "gateway")["securityContext"]
    dockerfile = (KUBERNETES.parent / "Dockerfile").read_text()
    assert f"--uid {context['runAsUser']} " in dockerfile
    assert context["fsGroup"] == context["runAsUser"] and context["runAsNonRoot"] is True


def test_services_select_their_pods_and_target_named_ports(kubernetes_objects: Objects) -> None:
    for name in ("gateway", "vllm"):
        service = kubernetes_objects[("Service", name)]["spec"]
        labels = kubernetes_objects[("Deployment", name)]["spec"]["template"]["metadata"]["labels"]
        assert service["selector"].items() <= labels.items()
        (port,) = service["ports"]
        (container_port,) = container(kubernetes_objects, name)["ports"]
        assert port["targetPort"] == container_port["name"]
        assert port["port"] == container_port["containerPort"]
        annotations = kubernetes_objects[("Deployment", name)]["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(container_port["containerPort"])


def test_the_secret_is_the_only_place_holding_the_database_url(kubernetes_objects: Objects) -> None:
    config = yaml.safe_load(kubernetes_objects[("ConfigMap", "lifelong-config")]["data"]["lifelong.yaml"])
    assert "url" not in config.get("database", {})
