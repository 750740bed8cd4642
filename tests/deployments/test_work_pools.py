"""The production work-pool templates in deployments/: what `prefect work-pool create --base-job-template`
accepts and what a Kubernetes or Docker worker renders from them.

prefect-kubernetes and prefect-docker are not installed here, so their default templates' job
configurations are stored below (prefect-kubernetes 0.8.0, prefect-docker 0.7.4, printed by
`KubernetesWorker.get_default_base_job_template()` / `DockerWorker.get_default_base_job_template()`).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from unittest.mock import AsyncMock

import pytest
from prefect.utilities.templating import PlaceholderType, find_placeholders

DEPLOYMENTS = Path(__file__).resolve().parents[2] / "deployments"
K8S = DEPLOYMENTS / "k8s-work-pool.json"
DOCKER = DEPLOYMENTS / "docker-work-pool.json"
TEMPLATES = {"kubernetes": K8S, "docker": DOCKER}

CACHE_DIR = "/var/cache/alignflow"
PROJECT_DIR = "/opt/alignflow"
IMAGE = "alignflow:latest"

# Every leaf of the upstream default job_configuration, path -> value.
UPSTREAM_K8S_JOB_CONFIGURATION = {
    "command": "{{ command }}",
    "env": "{{ env }}",
    "labels": "{{ labels }}",
    "name": "{{ name }}",
    "annotations": "{{ annotations }}",
    "namespace": "{{ namespace }}",
    "job_manifest.apiVersion": "batch/v1",
    "job_manifest.kind": "Job",
    "job_manifest.metadata.annotations": "{{ annotations }}",
    "job_manifest.metadata.generateName": "{{ name }}-",
    "job_manifest.metadata.labels": "{{ labels }}",
    "job_manifest.metadata.namespace": "{{ namespace }}",
    "job_manifest.spec.backoffLimit": "{{ backoff_limit }}",
    "job_manifest.spec.template.spec.completions": 1,
    "job_manifest.spec.template.spec.containers[0].args": "{{ command }}",
    "job_manifest.spec.template.spec.containers[0].env": "{{ env }}",
    "job_manifest.spec.template.spec.containers[0].image": "{{ image }}",
    "job_manifest.spec.template.spec.containers[0].imagePullPolicy": "{{ image_pull_policy }}",
    "job_manifest.spec.template.spec.containers[0].name": "prefect-job",
    "job_manifest.spec.template.spec.containers[0].resources.limits.cpu": "{{ cpu_limit }}",
    "job_manifest.spec.template.spec.containers[0].resources.limits.memory": "{{ memory_limit }}",
    "job_manifest.spec.template.spec.containers[0].resources.requests.cpu": "{{ cpu_request }}",
    "job_manifest.spec.template.spec.containers[0].resources.requests.memory": "{{ memory_request }}",
    "job_manifest.spec.template.spec.parallelism": 1,
    "job_manifest.spec.template.spec.restartPolicy": "Never",
    "job_manifest.spec.template.spec.serviceAccountName": "{{ service_account_name }}",
    "job_manifest.spec.ttlSecondsAfterFinished": "{{ finished_job_ttl }}",
    "cluster_config": "{{ cluster_config }}",
    "job_watch_timeout_seconds": "{{ job_watch_timeout_seconds }}",
    "pod_watch_timeout_seconds": "{{ pod_watch_timeout_seconds }}",
    "stream_output": "{{ stream_output }}",
}
UPSTREAM_K8S_VARIABLES = [
    "name", "env", "labels", "command", "annotations", "namespace", "image", "service_account_name",
    "image_pull_policy", "backoff_limit", "finished_job_ttl", "job_watch_timeout_seconds",
    "pod_watch_timeout_seconds", "stream_output", "cluster_config", "cpu_request", "cpu_limit",
    "memory_request", "memory_limit",
]
UPSTREAM_DOCKER_JOB_CONFIGURATION = {
    "command": "{{ command }}",
    "env": "{{ env }}",
    "labels": "{{ labels }}",
    "name": "{{ name }}",
    "image": "{{ image }}",
    "registry_credentials": "{{ registry_credentials }}",
    "image_pull_policy": "{{ image_pull_policy }}",
    "networks": "{{ networks }}",
    "network_mode": "{{ network_mode }}",
    "auto_remove": "{{ auto_remove }}",
    "volumes": "{{ volumes }}",
    "stream_output": "{{ stream_output }}",
    "mem_limit": "{{ mem_limit }}",
    "memswap_limit": "{{ memswap_limit }}",
    "privileged": "{{ privileged }}",
    "container_create_kwargs": "{{ container_create_kwargs }}",
}
UPSTREAM_DOCKER_VARIABLES = [
    "command", "env", "labels", "name", "image", "registry_credentials", "image_pull_policy", "networks",
    "network_mode", "auto_remove", "volumes", "stream_output", "mem_limit", "memswap_limit", "privileged",
    "container_create_kwargs",
]


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def leaves(obj, path: str = ""):
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from leaves(value, f"{path}.{key}" if path else key)
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from leaves(value, f"{path}[{i}]")
    else:
        yield path, obj


def used_variables(job_configuration: dict) -> set[str]:
    """The `{{ name }}` placeholders, found the way Prefect's server validates a base job template."""
    return {p.name for p in find_placeholders(json.dumps(job_configuration))
            if p.type is PlaceholderType.STANDARD}


def render(template: dict, values: dict | None = None) -> dict:
    """The job configuration a worker gets: Prefect's own from_template_and_values (defaults, the merged
    `env`, deployment values), before the worker type's model and prepare_for_flow_run."""
    from prefect.workers.base import BaseJobConfiguration
    from pydantic import ConfigDict

    class AnyJobConfiguration(BaseJobConfiguration):
        model_config = ConfigDict(extra="allow")

    config = asyncio.run(AnyJobConfiguration.from_template_and_values(template, values or {}, client=AsyncMock()))
    return config.model_dump()


def k8s_container(job_configuration: dict) -> dict:
    containers = job_configuration["job_manifest"]["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "prefect-job")


# ---- both templates ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", TEMPLATES)
def test_template_shape(kind):
    template = load(TEMPLATES[kind])
    assert set(template) == {"job_configuration", "variables"}
    assert isinstance(template["job_configuration"], dict)


@pytest.mark.parametrize("kind", TEMPLATES)
def test_every_placeholder_is_a_variable_and_every_variable_is_used(kind):
    template = load(TEMPLATES[kind])
    used = used_variables(template["job_configuration"])
    declared = set(template["variables"]["properties"])
    assert used - declared == set(), f"placeholders without a variable: {sorted(used - declared)}"
    assert declared - used == set(), f"variables no placeholder uses: {sorted(declared - used)}"


@pytest.mark.parametrize("kind", TEMPLATES)
def test_prefect_server_accepts_the_template(kind):
    from prefect.server.schemas.actions import WorkPoolCreate

    pool = WorkPoolCreate(name=f"alignflow-gpu-{kind}", type=kind, base_job_template=load(TEMPLATES[kind]))
    assert pool.base_job_template["variables"]["properties"]


@pytest.mark.parametrize("kind", TEMPLATES)
def test_variables_are_a_json_schema_with_typed_properties_and_defaults(kind):
    variables = load(TEMPLATES[kind])["variables"]
    assert variables["type"] == "object"
    assert variables["properties"]
    for name, prop in variables["properties"].items():
        assert prop.get("description"), f"{name}: no description"
        assert {"type", "anyOf", "$ref", "enum"} & set(prop), f"{name}: no type"
    ours = {"kubernetes": ["image", "env", "gpu_count", "cpu_request", "memory_request", "node_selector",
                           "artifact_cache_pvc", "aws_secret_name"],
            "docker": ["image", "env", "image_pull_policy", "volumes", "container_create_kwargs"]}[kind]
    for name in ours:
        assert "default" in variables["properties"][name], f"{name}: no default"


@pytest.mark.parametrize("kind", TEMPLATES)
def test_defaults_satisfy_the_variables_schema(kind):
    jsonschema = pytest.importorskip("jsonschema")
    variables = load(TEMPLATES[kind])["variables"]
    validator_cls = jsonschema.validators.validator_for(variables)
    validator_cls.check_schema(variables)
    defaults = {name: prop["default"] for name, prop in variables["properties"].items() if "default" in prop}
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator_cls(variables).iter_errors(defaults)]
    assert errors == []
    # a deployment's job variables are checked against the same schema: alignflow's typical ones pass
    typical = {"kubernetes": {"gpu_count": 4, "artifact_cache_pvc": {"claimName": "alignflow-cache"}},
               "docker": {"env": {"AWS_REGION": "eu-west-1"}}}[kind]
    assert list(validator_cls(variables).iter_errors(defaults | typical)) == []
    assert list(validator_cls(variables).iter_errors({"gpu_count": "many"} if kind == "kubernetes"
                                                     else {"volumes": "not-a-list"}))


@pytest.mark.parametrize("kind", TEMPLATES)
def test_default_image_is_alignflow(kind):
    template = load(TEMPLATES[kind])
    assert template["variables"]["properties"]["image"]["default"] == IMAGE
    rendered = render(template)
    image = k8s_container(rendered)["image"] if kind == "kubernetes" else rendered["image"]
    assert image == IMAGE


@pytest.mark.parametrize("kind", TEMPLATES)
def test_env_carries_the_heartbeat_and_the_cache(kind):
    from alignflow.service.server import HEARTBEAT_SECONDS

    template = load(TEMPLATES[kind])
    env = render(template)["env"]
    assert env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == str(HEARTBEAT_SECONDS)
    assert env["ALIGNFLOW_CACHE"] == CACHE_DIR
    assert env["ALIGNFLOW_PROJECT_DIR"] == PROJECT_DIR
    # a deployment's own `env` is merged over the pool's, not instead of it
    env = render(template, {"env": {"HF_TOKEN": "x"}})["env"]
    assert env["HF_TOKEN"] == "x" and env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == str(HEARTBEAT_SECONDS)


@pytest.mark.parametrize("kind", TEMPLATES)
def test_rendering_the_defaults_leaves_no_placeholder(kind):
    rendered = render(load(TEMPLATES[kind]))
    assert used_variables(rendered) == set()


@pytest.mark.parametrize("kind, upstream, upstream_variables", [
    ("kubernetes", UPSTREAM_K8S_JOB_CONFIGURATION, UPSTREAM_K8S_VARIABLES),
    ("docker", UPSTREAM_DOCKER_JOB_CONFIGURATION, UPSTREAM_DOCKER_VARIABLES),
])
def test_upstream_default_template_is_kept(kind, upstream, upstream_variables):
    template = load(TEMPLATES[kind])
    ours = dict(leaves(template["job_configuration"]))
    changed = {path: (value, ours.get(path, "<missing>")) for path, value in upstream.items()
               if ours.get(path, "<missing>") != value}
    assert changed == {}, f"upstream job_configuration entries lost or changed: {changed}"
    assert set(upstream_variables) <= set(template["variables"]["properties"])


# ---- Kubernetes ----------------------------------------------------------------------------------

def test_k8s_manifest_is_a_gpu_job():
    template = load(K8S)
    manifest = template["job_configuration"]["job_manifest"]
    assert manifest["apiVersion"] == "batch/v1" and manifest["kind"] == "Job"
    pod = manifest["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    container = k8s_container(template["job_configuration"])
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu_count }}"
    assert container["workingDir"] == PROJECT_DIR
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["nodeSelector"] == "{{ node_selector }}"
    gpu_count = template["variables"]["properties"]["gpu_count"]
    assert gpu_count["type"] == "integer" and gpu_count["default"] == 1
    assert "training" in gpu_count["description"]


def test_k8s_gpu_count_reaches_the_pod():
    template = load(K8S)
    assert k8s_container(render(template))["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert k8s_container(render(template, {"gpu_count": 4}))["resources"]["limits"]["nvidia.com/gpu"] == 4


def test_k8s_aws_secret_becomes_env():
    template = load(K8S)
    [source] = k8s_container(template["job_configuration"])["envFrom"]
    assert source["secretRef"] == {"name": "{{ aws_secret_name }}", "optional": True}
    [source] = k8s_container(render(template, {"aws_secret_name": "s3-creds"}))["envFrom"]
    assert source["secretRef"]["name"] == "s3-creds"


def test_k8s_artifact_cache_volume_is_optional():
    template = load(K8S)
    container = k8s_container(template["job_configuration"])
    [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == CACHE_DIR]

    def cache_volume(rendered):
        pod = rendered["job_manifest"]["spec"]["template"]["spec"]
        return next(v for v in pod["volumes"] if v["name"] == mount["name"])

    # no claim: a volume without a source, which Kubernetes defaults to an emptyDir
    assert cache_volume(render(template)) == {"name": mount["name"]}
    claim = {"claimName": "alignflow-cache"}
    assert cache_volume(render(template, {"artifact_cache_pvc": claim})) == {
        "name": mount["name"], "persistentVolumeClaim": claim}


def test_k8s_resource_requests_have_defaults_and_unset_limits_disappear():
    resources = k8s_container(render(load(K8S)))["resources"]
    assert set(resources["requests"]) == {"cpu", "memory"}
    assert resources["limits"] == {"nvidia.com/gpu": 1}  # cpu/memory limits unset: no key, no null


# ---- Docker --------------------------------------------------------------------------------------

def test_docker_requests_all_gpus():
    kwargs = load(DOCKER)["variables"]["properties"]["container_create_kwargs"]["default"]
    assert {"driver": "nvidia", "count": -1, "capabilities": [["gpu"]]} in kwargs["device_requests"]
    assert kwargs["working_dir"] == PROJECT_DIR


def test_docker_create_kwargs_are_what_docker_py_accepts():
    """prefect-docker passes container_create_kwargs to docker-py's `containers.create(**kwargs)`; the
    dicts in device_requests become docker.types.DeviceRequest (snake_case keys)."""
    pytest.importorskip("docker")
    from docker.models.containers import _create_container_args

    rendered = render(load(DOCKER))
    args = _create_container_args(dict(image=rendered["image"], command=rendered["command"],
                                       volumes=rendered["volumes"], version="1.41",
                                       **rendered["container_create_kwargs"]))
    assert args["working_dir"] == PROJECT_DIR
    host = args["host_config"]
    assert host["DeviceRequests"][0]["Driver"] == "nvidia"
    assert host["DeviceRequests"][0]["Count"] == -1
    assert host["DeviceRequests"][0]["Capabilities"] == [["gpu"]]
    assert any(bind.endswith(f":{CACHE_DIR}") for bind in host["Binds"])


def test_docker_uses_a_local_image_and_the_cache_volume():
    properties = load(DOCKER)["variables"]["properties"]
    assert properties["image_pull_policy"]["default"] == "IfNotPresent"  # else `latest` is always pulled
    assert any(volume.endswith(f":{CACHE_DIR}") for volume in properties["volumes"]["default"])
