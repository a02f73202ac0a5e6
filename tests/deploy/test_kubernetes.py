"""deploy/kubernetes: every object valid against the Kubernetes OpenAPI schemas (strict: an
unknown field fails), the kustomization complete, and the pods consistent with the code and
with each other: N gateway replicas, each talking to every vLLM server of the StatefulSet by its
stable name, a trainer Deployment (`lifelong trainer`) taking the runs the leader queues, all of
them seeing the shared adapters at one path (ports, GPU, probes, settings).

Schemas come from kubernetes-validate (a dev dependency bundling the JSON schemas per Kubernetes
release), so this runs offline and without a cluster. vLLM's environment is read with the
installed vLLM's own parser (the version of the image).
"""

from __future__ import annotations

import copy
import inspect
import re
import shutil
import subprocess
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import kubernetes_validate
import pytest
import typer
import yaml

from lifelong.daemon import cli
from lifelong.daemon.cli import trainer as trainer_cli
from lifelong.daemon.vllm_launch import vllm_env
from lifelong.daemon.settings import ENV_PREFIX, Settings
from lifelong.daemon.trainer import ChildRunner
from lifelong.daemon.upstream import BASE_MODEL_NAME

KUBERNETES = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.33.0"  # an older release than the newest bundled: stay portable
Objects = dict[tuple[str, str], dict[str, Any]]

# What the downward API would give one gateway pod.
POD_FIELDS = {"metadata.name": "gateway-7c9d5b8f6-x4kqz", "metadata.namespace": "lifelong",
              "status.podIP": "10.42.3.17"}
ADAPTERS_CLAIM = "lifelong-adapters"
RESOLVER_PLUGIN = "lora_filesystem_resolver"


class Mount(NamedTuple):
    source: str  # "pvc:<claim>", "configMap:<name>", "emptyDir"
    sub_path: str
    read_only: bool


def flag(args: list[str], name: str) -> str:
    assert name in args, f"{name} missing from {args}"
    return str(args[args.index(name) + 1])


def workload(objects: Objects, name: str) -> dict[str, Any]:
    (found,) = [obj for (kind, obj_name), obj in objects.items()
                if obj_name == name and kind in ("Deployment", "StatefulSet")]
    return found


def pod(objects: Objects, name: str) -> dict[str, Any]:
    return workload(objects, name)["spec"]["template"]["spec"]


def pod_labels(objects: Objects, name: str) -> dict[str, str]:
    return workload(objects, name)["spec"]["template"]["metadata"]["labels"]


def container(objects: Objects, name: str) -> dict[str, Any]:
    (only,) = pod(objects, name)["containers"]
    return only


def mounts(objects: Objects, name: str, entry: dict[str, Any] | None = None) -> dict[str, Mount]:
    """mountPath -> Mount of one container (the pod's only one unless `entry` is given)."""
    sources = {}
    for volume in pod(objects, name)["volumes"]:
        if "persistentVolumeClaim" in volume:
            sources[volume["name"]] = f"pvc:{volume['persistentVolumeClaim']['claimName']}"
        elif "configMap" in volume:
            sources[volume["name"]] = f"configMap:{volume['configMap']['name']}"
        else:
            (kind,) = volume.keys() - {"name"}
            sources[volume["name"]] = kind
    entry = entry or container(objects, name)
    return {m["mountPath"]: Mount(sources[m["name"]], m.get("subPath", ""), m.get("readOnly", False))
            for m in entry["volumeMounts"]}


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert selector.keys() == {"matchLabels"}, "only matchLabels selectors are read here"
    return selector["matchLabels"].items() <= labels.items()


def resolved_env(entry: dict[str, Any], objects: Objects) -> dict[str, str]:
    """The environment the kubelet gives `entry`: downward-API fields from POD_FIELDS, secret
    keys from secret.yaml, and `$(NAME)` expanded from variables defined *earlier* in the list
    (a later or unknown one stays as written, as in Kubernetes)."""
    values: dict[str, str] = {}
    for item in entry["env"]:
        if "value" in item:
            value = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                           lambda m: values.get(m[1], m[0]), item["value"])
        elif "fieldRef" in item["valueFrom"]:
            value = POD_FIELDS[item["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            value = objects[("Secret", ref["name"])]["stringData"][ref["key"]]
        values[item["name"]] = value
    return values


def pod_settings(objects: Objects, name: str, deploy_settings: Any, tmp_path: Path) -> Settings:
    """The settings the pod's container builds: the ConfigMap's lifelong.yaml plus the
    container's LIFELONG_* environment as the kubelet resolves it, through the daemon's loader."""
    config = tmp_path / f"{name}-lifelong.yaml"
    config.write_text(objects[("ConfigMap", "lifelong-config")]["data"]["lifelong.yaml"])
    env = resolved_env(container(objects, name), objects)
    return deploy_settings(config, {k: v for k, v in env.items() if k.startswith(ENV_PREFIX)})


@pytest.fixture
def gateway_settings(kubernetes_objects: Objects, deploy_settings: Any, tmp_path: Path) -> Settings:
    """The settings `lifelong serve` builds in a gateway pod."""
    return pod_settings(kubernetes_objects, "gateway", deploy_settings, tmp_path)


@pytest.fixture
def trainer_settings(kubernetes_objects: Objects, deploy_settings: Any, tmp_path: Path) -> Settings:
    """The settings `lifelong trainer` builds in the trainer pod."""
    return pod_settings(kubernetes_objects, "trainer", deploy_settings, tmp_path)


@pytest.fixture(scope="module")
def vllm_envs() -> ModuleType:
    """vLLM's own table of the environment variables it reads (imports torch: a few seconds)."""
    return pytest.importorskip("vllm.envs", reason="vLLM is not installed in this environment")


def test_every_object_is_valid_against_the_kubernetes_schemas(kubernetes_objects: Objects) -> None:
    assert len(kubernetes_objects) >= 12
    for obj in kubernetes_objects.values():
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)  # raises, naming the field


def test_the_schema_check_catches_a_misplaced_field(kubernetes_objects: Objects) -> None:
    broken = copy.deepcopy(kubernetes_objects[("StatefulSet", "vllm")])
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
    for name in ("gateway", "trainer"):
        deployment = next(o for o in objects if (o["kind"], o["metadata"]["name"]) == ("Deployment", name))
        images = {c["image"] for c in deployment["spec"]["template"]["spec"]["initContainers"]
                  + deployment["spec"]["template"]["spec"]["containers"]}
        assert images == {"registry.example.com/lifelong-gateway:0.1.0"}, name
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_vllm_serves_the_base_model_with_runtime_lora_on_a_gpu(kubernetes_objects: Objects) -> None:
    vllm = container(kubernetes_objects, "vllm")
    args = vllm["args"]
    assert vllm["image"] == "vllm/vllm-openai:v0.32.0"
    assert vllm["command"] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    assert flag(args, "--served-model-name") == BASE_MODEL_NAME and "--enable-lora" in args
    env = resolved_env(vllm, kubernetes_objects)
    # What the daemon gives the vLLM it starts itself, so that it lets adapters be loaded.
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == vllm_env(Settings())["VLLM_ALLOW_RUNTIME_LORA_UPDATING"]
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == 1
    port = int(flag(args, "--port"))
    assert vllm["ports"] == [{"name": "http", "containerPort": port}]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert vllm[probe]["httpGet"] == {"path": "/health", "port": "http"}, probe


def test_vllm_servers_are_a_statefulset_behind_a_headless_service(kubernetes_objects: Objects) -> None:
    statefulset = kubernetes_objects[("StatefulSet", "vllm")]["spec"]
    service = kubernetes_objects[("Service", statefulset["serviceName"])]["spec"]
    # Headless: a DNS name per pod (vllm-0.vllm), no virtual IP balancing between them.
    assert service["clusterIP"] == "None"
    # Names resolve before the pod is ready: the gateways' own health checks decide routing.
    assert service["publishNotReadyAddresses"] is True
    assert selects({"matchLabels": service["selector"]}, pod_labels(kubernetes_objects, "vllm"))
    assert statefulset["replicas"] >= 2
    # Every server loads the model for minutes at once, not one after another.
    assert statefulset["podManagementPolicy"] == "Parallel"
    assert ("Deployment", "vllm") not in kubernetes_objects


def test_the_gateways_upstreams_are_exactly_the_statefulsets_pods(
    kubernetes_objects: Objects, gateway_settings: Settings
) -> None:
    statefulset = kubernetes_objects[("StatefulSet", "vllm")]
    service = kubernetes_objects[("Service", statefulset["spec"]["serviceName"])]
    (port,) = service["spec"]["ports"]
    assert port["port"] == int(flag(container(kubernetes_objects, "vllm")["args"], "--port"))
    name, headless = statefulset["metadata"]["name"], service["metadata"]["name"]
    expected = [f"http://{name}-{ordinal}.{headless}:{port['port']}"
                for ordinal in range(statefulset["spec"]["replicas"])]
    assert gateway_settings.vllm.upstreams == expected


def test_every_pod_sees_the_shared_adapters_at_the_gateways_adapters_dir(
    kubernetes_objects: Objects, gateway_settings: Settings
) -> None:
    gateway, vllm = mounts(kubernetes_objects, "gateway"), mounts(kubernetes_objects, "vllm")
    adapters = str(gateway_settings.adapters_dir)
    # The gateways send vLLM the adapter's folder path: it must name the same files there.
    assert gateway[adapters] == Mount(f"pvc:{ADAPTERS_CLAIM}", "", read_only=False)
    assert vllm[adapters] == Mount(f"pvc:{ADAPTERS_CLAIM}", "", read_only=True)
    # The base model: what vLLM serves is what the trainer loads, and no pod writes it.
    model = str(gateway_settings.base_model_path)
    model_mount = str(Path(model).parent)
    assert gateway[model_mount] == vllm[model_mount]
    assert gateway[model_mount].source.startswith("pvc:") and gateway[model_mount].read_only
    assert flag(container(kubernetes_objects, "vllm")["args"], "--model") == model


def test_the_rest_of_the_gateways_data_dir_is_its_own(
    kubernetes_objects: Objects, gateway_settings: Settings
) -> None:
    # run/ (the trainer's settings, the practice pause file) and evals/ are one process's files:
    # shared, replicas would overwrite each other's.
    gateway = mounts(kubernetes_objects, "gateway")
    data_dir = str(gateway_settings.data_dir)
    assert gateway[data_dir].source == "emptyDir"
    shared = [path for path, mount in gateway.items()
              if mount.source.startswith("pvc:") and Path(path).is_relative_to(data_dir)]
    assert shared == [str(gateway_settings.adapters_dir)]


def test_the_shared_volumes_are_read_write_many(kubernetes_objects: Objects) -> None:
    # Gateways and vLLM servers on several nodes mount the adapters at once, one of them writing.
    claim = kubernetes_objects[("PersistentVolumeClaim", ADAPTERS_CLAIM)]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for name in ("gateway", "vllm", "trainer"):
        for mount in mounts(kubernetes_objects, name).values():
            if mount.source.startswith("pvc:"):
                claim = kubernetes_objects[("PersistentVolumeClaim", mount.source[len("pvc:"):])]
                assert set(claim["spec"]["accessModes"]) & {"ReadWriteMany", "ReadOnlyMany"}, mount


def test_vllm_resolves_adapters_by_name_from_the_shared_folder(
    kubernetes_objects: Objects, gateway_settings: Settings, vllm_envs: ModuleType,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """A vLLM server that starts after a promotion can load the version by name: the filesystem
    resolver plugin looks in its cache dir, which must be the adapters mount. Read through the
    installed vLLM's own parser, so a misspelt variable (one vLLM never reads) fails."""
    env = resolved_env(container(kubernetes_objects, "vllm"), kubernetes_objects)
    for name, value in env.items():
        assert name in vllm_envs.environment_variables or not name.startswith("VLLM_"), name
        monkeypatch.setenv(name, value)
    read = vllm_envs.environment_variables
    assert read["VLLM_ALLOW_RUNTIME_LORA_UPDATING"]() is True  # the resolver is asked only then
    assert RESOLVER_PLUGIN in read["VLLM_PLUGINS"]()
    assert RESOLVER_PLUGIN in {ep.name for ep in entry_points(group="vllm.general_plugins")}
    cache_dir = read["VLLM_LORA_RESOLVER_CACHE_DIR"]()
    assert cache_dir == str(gateway_settings.adapters_dir)
    assert mounts(kubernetes_objects, "vllm")[cache_dir].source == f"pvc:{ADAPTERS_CLAIM}"


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
    assert gateway_settings.database_url.startswith("postgresql+psycopg://")
    assert gateway_settings.gateway.host == "0.0.0.0" and gateway_settings.gateway.api_keys


def test_each_gateway_replica_names_itself_from_the_downward_api(
    kubernetes_objects: Objects, gateway_settings: Settings
) -> None:
    # The pod name is unique among replicas; the pod IP is where the others reach this one
    # ($(POD_IP) expands only if POD_IP is defined earlier in the list).
    assert gateway_settings.cluster.replica_id == POD_FIELDS["metadata.name"]
    assert gateway_settings.cluster.advertise_url == (
        f"http://{POD_FIELDS['status.podIP']}:{gateway_settings.gateway.port}")


def test_gateway_migrates_first_then_serves_with_probes_and_drain_time(
    kubernetes_objects: Objects, gateway_settings: Settings
) -> None:
    gateway_pod = pod(kubernetes_objects, "gateway")
    (migrate,) = gateway_pod["initContainers"]
    gateway = container(kubernetes_objects, "gateway")
    assert migrate["command"][:3] == ["lifelong", "db", "upgrade"]
    assert gateway["command"][:2] == ["lifelong", "serve"]
    config_dir = str(Path(flag(gateway["command"], "--config")).parent)
    assert mounts(kubernetes_objects, "gateway")[config_dir].source == "configMap:lifelong-config"
    assert mounts(kubernetes_objects, "gateway", migrate)[config_dir].source == "configMap:lifelong-config"
    assert migrate["env"] == gateway["env"]
    # Ready once a vLLM server answers with the champion loaded: every replica serves, leader
    # or not, so readiness is /readyz and nothing about the lease.
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert gateway["ports"] == [{"name": "http", "containerPort": gateway_settings.gateway.port}]
    # Drain, then log and feedback writer flush (30 s each), trainer and vLLM stop (app.py).
    assert gateway_pod["terminationGracePeriodSeconds"] > gateway_settings.gateway.drain_timeout_s + 70


def test_gateway_replicas_roll_without_losing_capacity(kubernetes_objects: Objects) -> None:
    deployment = kubernetes_objects[("Deployment", "gateway")]["spec"]
    assert deployment["replicas"] >= 2
    assert deployment["strategy"] == {"type": "RollingUpdate",
                                      "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}


@pytest.mark.parametrize(("name", "other"), [("gateway", "vllm"), ("vllm", "gateway")])
def test_disruption_budgets_select_their_pods_and_leave_one_serving(
    kubernetes_objects: Objects, name: str, other: str
) -> None:
    budget = kubernetes_objects[("PodDisruptionBudget", name)]["spec"]
    assert selects(budget["selector"], pod_labels(kubernetes_objects, name))
    assert not selects(budget["selector"], pod_labels(kubernetes_objects, other))
    replicas = workload(kubernetes_objects, name)["spec"]["replicas"]
    # At least one pod stays, and at least one may go (else a node drain blocks for good).
    allowed_down = (budget["maxUnavailable"] if "maxUnavailable" in budget
                    else replicas - budget["minAvailable"])
    assert 1 <= allowed_down < replicas
    if name == "gateway":
        assert budget["minAvailable"] == 1


@pytest.mark.parametrize("name", ["gateway", "trainer"])
def test_lifelong_pods_run_as_the_images_user_and_can_write_the_volume(
    kubernetes_objects: Objects, name: str
) -> None:
    context = pod(kubernetes_objects, name)["securityContext"]
    dockerfile = (KUBERNETES.parent / "Dockerfile").read_text()
    assert f"--uid {context['runAsUser']} " in dockerfile
    assert context["fsGroup"] == context["runAsUser"] and context["runAsNonRoot"] is True


def test_services_select_their_pods_and_target_named_ports(kubernetes_objects: Objects) -> None:
    for name in ("gateway", "vllm"):
        service = kubernetes_objects[("Service", name)]["spec"]
        assert selects({"matchLabels": service["selector"]}, pod_labels(kubernetes_objects, name))
        (port,) = service["ports"]
        (container_port,) = container(kubernetes_objects, name)["ports"]
        assert port["targetPort"] == container_port["name"]
        assert port["port"] == container_port["containerPort"]
        annotations = workload(kubernetes_objects, name)["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(container_port["containerPort"])


def test_the_secret_is_the_only_place_holding_the_database_url(kubernetes_objects: Objects) -> None:
    config = yaml.safe_load(kubernetes_objects[("ConfigMap", "lifelong-config")]["data"]["lifelong.yaml"])
    assert "url" not in config.get("database", {})


# --- the trainer: its own Deployment, off the serving path ---------------------------------


def test_gateways_queue_training_runs_and_the_trainer_takes_them(
    kubernetes_objects: Objects, gateway_settings: Settings, trainer_settings: Settings,
    lifelong_env_of: Any, env_key: Any
) -> None:
    # runner child would make the leading gateway train on its own (GPU-less) pod, and no run
    # would ever reach the trainer.
    assert gateway_settings.training.runner == "worker"
    assert trainer_settings.training.runner == "worker"
    trainer_pod = pod(kubernetes_objects, "trainer")
    for entry in trainer_pod["initContainers"] + trainer_pod["containers"]:
        for name in lifelong_env_of(entry["env"]):
            env_key(name)
    # The runs are rows in the gateways' database: the trainer must read the same one.
    assert trainer_settings.database_url == gateway_settings.database_url
    assert trainer_settings.database_url.startswith("postgresql+psycopg://")


def test_the_trainer_runs_lifelong_trainer_after_migrating(kubernetes_objects: Objects) -> None:
    (migrate,) = pod(kubernetes_objects, "trainer")["initContainers"]
    trainer = container(kubernetes_objects, "trainer")
    assert trainer["command"][:2] == ["lifelong", "trainer"]
    assert migrate["command"][:3] == ["lifelong", "db", "upgrade"]
    # The command and its option exist in the CLI the image installs.
    group = typer.main.get_command(cli.app)
    assert isinstance(group, typer.core.TyperGroup)
    command = group.commands["trainer"]
    assert "--config" in {opt for param in command.params for opt in param.opts}
    config_dir = str(Path(flag(trainer["command"], "--config")).parent)
    assert mounts(kubernetes_objects, "trainer")[config_dir].source == "configMap:lifelong-config"
    assert mounts(kubernetes_objects, "trainer", migrate)[config_dir].source == "configMap:lifelong-config"
    assert migrate["env"] == trainer["env"]


def test_the_trainer_writes_adapters_where_the_gateways_and_vllm_read_them(
    kubernetes_objects: Objects, gateway_settings: Settings, trainer_settings: Settings
) -> None:
    trainer, gateway = mounts(kubernetes_objects, "trainer"), mounts(kubernetes_objects, "gateway")
    vllm = mounts(kubernetes_objects, "vllm")
    adapters = str(trainer_settings.adapters_dir)
    # It registers `adapters_dir/vNNNN`; the gateways hand vLLM that very path.
    assert adapters == str(gateway_settings.adapters_dir)
    assert trainer[adapters] == Mount(f"pvc:{ADAPTERS_CLAIM}", "", read_only=False)
    assert gateway[adapters].source == vllm[adapters].source == trainer[adapters].source
    # It trains on what vLLM serves (the adapters name it as their base model), read-only.
    model = str(trainer_settings.base_model_path)
    assert model == str(gateway_settings.base_model_path)
    assert flag(container(kubernetes_objects, "vllm")["args"], "--model") == model
    model_mount = str(Path(model).parent)
    assert trainer[model_mount] == vllm[model_mount]
    assert trainer[model_mount].source.startswith("pvc:") and trainer[model_mount].read_only
    # Its logs, settings file and anchors' answers are its own.
    data_dir = str(trainer_settings.data_dir)
    assert trainer[data_dir].source == "emptyDir"
    shared = [path for path, mount in trainer.items()
              if mount.source.startswith("pvc:") and Path(path).is_relative_to(data_dir)]
    assert shared == [adapters]


def test_the_trainer_practises_through_the_gateways_vllm_servers(
    gateway_settings: Settings, trainer_settings: Settings
) -> None:
    # GRPO samples from vllm.upstreams; without them it would ask a vLLM on its own pod.
    assert trainer_settings.vllm.upstreams == gateway_settings.vllm.upstreams
    assert trainer_settings.vllm.upstreams
    # python_tests practice tasks: the same sandbox as the judge's.
    assert trainer_settings.evals.sandbox == gateway_settings.evals.sandbox


def test_the_trainer_has_the_database_secret_and_serves_nothing(kubernetes_objects: Objects) -> None:
    trainer = container(kubernetes_objects, "trainer")
    (database,) = [item for item in trainer["env"] if item["name"] == "LIFELONG_DATABASE__URL"]
    assert database["valueFrom"] == {"secretKeyRef": {"name": "lifelong-db", "key": "url"}}
    labels = pod_labels(kubernetes_objects, "trainer")
    for (kind, name), obj in kubernetes_objects.items():
        if kind == "Service":
            assert not selects({"matchLabels": obj["spec"]["selector"]}, labels), name
        if kind == "PodDisruptionBudget":  # nothing to keep available: it serves nobody
            assert not selects(obj["spec"]["selector"], labels), name
    assert not {"ports", "readinessProbe", "livenessProbe", "startupProbe"} & trainer.keys()


def test_only_the_trainer_and_vllm_request_gpus(kubernetes_objects: Objects,
                                                trainer_settings: Settings) -> None:
    gateway_pod = pod(kubernetes_objects, "gateway")
    for entry in gateway_pod["initContainers"] + gateway_pod["containers"]:
        resources = entry.get("resources", {})
        for amounts in (resources.get("requests", {}), resources.get("limits", {})):
            assert "nvidia.com/gpu" not in amounts, entry["name"]
    trainer = container(kubernetes_objects, "trainer")
    assert trainer["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert trainer_settings.training.device != "cpu"


def test_one_trainer_that_needs_no_second_gpu_while_it_rolls(kubernetes_objects: Objects) -> None:
    deployment = kubernetes_objects[("Deployment", "trainer")]["spec"]
    # The leader trains one run at a time: a second trainer would only wait.
    assert deployment["replicas"] == 1
    # A surge pod would wait for a free GPU: the old trainer goes first.
    assert deployment["strategy"] == {"type": "Recreate"}
    assert selects(deployment["selector"], pod_labels(kubernetes_objects, "trainer"))


def test_the_trainer_outlives_its_childs_kill_grace(kubernetes_objects: Objects,
                                                   trainer_settings: Settings) -> None:
    """SIGTERM: the worker marks its run interrupted, SIGTERMs its child and SIGKILLs it after
    ChildRunner's grace_s, records the child's end and releases its claim. The kubelet must not
    kill it first: three database writes on top of the grace."""
    grace_s = inspect.signature(ChildRunner).parameters["grace_s"].default
    assert "grace_s" not in inspect.getsource(trainer_cli)  # `lifelong trainer` keeps the default
    period = pod(kubernetes_objects, "trainer")["terminationGracePeriodSeconds"]
    assert period >= grace_s + 3 * trainer_settings.database.connect_timeout_s
