"""`alignflow ray k8s SPEC`: the KubeRay RayCluster, checked against KubeRay's own schema of the resource
(deployments/kuberay/raycluster-v1.schema.json, vendored with its version)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from alignflow.errors import UsageError
from distributed.kuberay import cluster
from flows.spec import parse_spec
from tests.conftest import run_cli, write_spec

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "deployments" / "kuberay" /
                     "raycluster-v1.schema.json").read_text())
SPEC = {"name": "team_a", "model": "builtin://tiny-qwen2",
        "data": {"sft": "builtin://reverse/sft", "preference": "builtin://reverse/preference"},
        "stages": {"sft": {"resources": {"engine": "ray", "workers": 4, "cpus_per_worker": 8, "gpus_per_worker": 1,
                                         "deepspeed": "zero2"}},
                   "dpo": {"pairs": "on_policy", "resources": {"engine": "ray", "workers": 2, "cpus_per_worker": 8,
                                                               "gpus_per_worker": 1},
                           "sampling": {"engine": "ray", "workers": 3, "cpus_per_worker": 0.5}},
                   "reward": {}}}


def test_the_cluster_passes_kuberay_s_schema_and_is_sized_from_the_spec():
    resource = cluster(parse_spec(SPEC), "registry.example/alignflow:1", namespace="ml")
    jsonschema.validate(resource, SCHEMA)
    assert resource["apiVersion"] == "ray.io/v1" and resource["metadata"]["name"] == "team-a-ray"
    groups = {g["groupName"]: g for g in resource["spec"]["workerGroupSpecs"]}
    assert set(groups) == {"gpu1-cpu8", "cpu1"}
    gpu = groups["gpu1-cpu8"]
    assert gpu["replicas"] == gpu["minReplicas"] == gpu["maxReplicas"] == 4  # the widest GPU part: sft's 4
    worker = gpu["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"] == {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": 1}
    assert gpu["rayStartParams"] == {"num-cpus": "8", "num-gpus": "1"}
    assert groups["cpu1"]["replicas"] == 3
    assert groups["cpu1"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] == "500m"
    for pod in [resource["spec"]["headGroupSpec"]["template"], *(g["template"] for g in groups.values())]:
        container = pod["spec"]["containers"][0]
        assert container["image"] == "registry.example/alignflow:1"
        assert container["envFrom"] == [{"secretRef": {"name": "alignflow-store"}}]  # credentials by reference
        assert pod["spec"]["volumes"] == [{"name": "cache", "emptyDir": {}}]  # nothing shared but the store
    assert resource["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"


def test_the_schema_check_catches_a_broken_cluster():
    resource = cluster(parse_spec(SPEC), "alignflow:latest")
    for path, value in ((("spec", "workerGroupSpecs", 0, "replicas"), "four"),
                        (("spec", "headGroupSpec", "rayStartParams", "num-cpus"), 0)):
        broken = copy.deepcopy(resource)
        target = broken
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, SCHEMA)


def test_a_spec_with_nothing_on_ray_is_refused_with_the_fix():
    with pytest.raises(UsageError, match="runs nothing on Ray: set resources.engine: ray"):
        cluster(parse_spec({**SPEC, "stages": {"sft": {}}}), "alignflow:latest")


def test_the_command_writes_yaml_kubectl_reads_and_says_where_the_flow_finds_it(tmp_path):
    spec = write_spec(tmp_path / "spec.yaml", yaml.safe_dump({**SPEC, "stages": {"sft": {}}}))
    done = run_cli("ray", "k8s", str(spec), "--set", "stages.sft.resources.engine=ray",
                   "--set", "stages.sft.resources.workers=2", "--namespace", "ml")
    assert done.code == 0, done.output
    assert "RAY_ADDRESS=team-a-ray-head-svc.ml.svc.cluster.local:6379" in done.stdout
    resource = yaml.safe_load(done.stdout)
    jsonschema.validate(resource, SCHEMA)
    assert resource["spec"]["workerGroupSpecs"][0]["replicas"] == 2
