"""`alignflow ray k8s SPEC`: a KubeRay `RayCluster` (ray.io/v1) for the parts of a spec that run on Ray.

One worker group per worker shape the spec asks for (CPUs and GPUs per worker), as many pods as the
widest part of that shape asks for, one Ray worker per pod; a head that runs no work (`num-cpus: 0`). Every
pod runs the given image (alignflow installed, the same version as the flow's) and reads the store's
credentials from the Secret `alignflow-store`, as `alignflow serve k8s` does; each worker has a node-local
cache (`emptyDir`), since nothing is shared but the store. The flow reaches the cluster at the head's
Service, `<name>-head-svc.<namespace>.svc.cluster.local:6379` (`RAY_ADDRESS`, or each part's `address`).

deployments/kuberay/raycluster-v1.schema.json is KubeRay's own schema of the resource (its version inside):
the tests validate what this writes against it.
"""

from __future__ import annotations

import math

from alignflow.errors import UsageError
from tasks.config import RayWorkers

CACHE = "/var/cache/alignflow"
STORE_SECRET = "alignflow-store"
RAY_VERSION = "2.60.0"  # constraints/pipeline.txt: the nodes must run the Ray the flow's driver runs


def ray_parts(model, path: str = "") -> list[tuple[str, RayWorkers]]:
    """(spec path, settings) of every part of a spec (or a config in it) that runs on Ray."""
    from pydantic import BaseModel

    found = []
    if isinstance(model, RayWorkers) and getattr(model, "engine", None) == "ray":
        found.append((path, model))
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            found += ray_parts(value, f"{path}.{name}" if path else name)
    return found


def worker_groups(spec) -> list[dict]:
    """One group per (CPUs, GPUs) per worker: its pods are the most workers any part of that shape asks for."""
    shapes: dict[tuple[float, float], dict] = {}
    for path, part in ray_parts(spec.stages, "stages"):
        shape = (part.cpus_per_worker, part.gpus_per_worker)
        group = shapes.setdefault(shape, {"cpus": shape[0], "gpus": shape[1], "workers": 0, "parts": []})
        group["workers"] = max(group["workers"], part.workers)
        group["parts"].append(path)
    if not shapes:
        raise UsageError(f"spec {spec.name!r} runs nothing on Ray: set resources.engine: ray on a trainer stage "
                         "(or engine: ray on stages.dpo.sampling or stages.judge), then write its cluster")
    return [shapes[shape] for shape in sorted(shapes)]


def container(name: str, image: str, cpus: float, gpus: float, memory: str) -> dict:
    limits = {"cpu": cpu_quantity(cpus), "memory": memory, **({"nvidia.com/gpu": math.ceil(gpus)} if gpus else {})}
    return {"name": name, "image": image, "imagePullPolicy": "IfNotPresent",
            "env": [{"name": "ALIGNFLOW_CACHE", "value": CACHE}, {"name": "RAY_USAGE_STATS_ENABLED", "value": "0"}],
            "envFrom": [{"secretRef": {"name": STORE_SECRET}}],
            "resources": {"requests": dict(limits), "limits": limits},
            "volumeMounts": [{"name": "cache", "mountPath": CACHE}]}


def cpu_quantity(cpus: float) -> str:
    """1.0 -> '1', 0.5 -> '500m'"""
    return str(int(cpus)) if float(cpus).is_integer() else f"{int(round(cpus * 1000))}m"


def pod(containers: list[dict]) -> dict:
    return {"spec": {"containers": containers, "volumes": [{"name": "cache", "emptyDir": {}}]}}


def cluster(spec, image: str, namespace: str | None = None, worker_memory: str = "32Gi",
            head_memory: str = "8Gi") -> dict:
    """The RayCluster resource for `spec`."""
    name = f"{spec.name}-ray".lower().replace("_", "-")
    head = container("ray-head", image, 2, 0, head_memory)
    head["ports"] = [{"containerPort": 6379, "name": "gcs-server"}, {"containerPort": 8265, "name": "dashboard"}]
    groups = [{"groupName": group_name(g), "replicas": g["workers"], "minReplicas": g["workers"],
               "maxReplicas": g["workers"],
               "rayStartParams": {"num-cpus": cpu_count(g["cpus"]), **({"num-gpus": str(math.ceil(g["gpus"]))}
                                                                       if g["gpus"] else {})},
               "template": pod([container("ray-worker", image, g["cpus"], g["gpus"], worker_memory)])}
              for g in worker_groups(spec)]
    metadata = {"name": name, "labels": {"app.kubernetes.io/part-of": "alignflow", "alignflow/pipeline": spec.name}}
    if namespace:
        metadata["namespace"] = namespace
    return {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": metadata,
            "spec": {"rayVersion": RAY_VERSION,
                     "headGroupSpec": {"rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
                                       "template": pod([head])},
                     "workerGroupSpecs": groups}}


def group_name(group: dict) -> str:
    """'gpu1-cpu8', 'cpu4'"""
    cpus = cpu_count(group["cpus"])
    return f"gpu{math.ceil(group['gpus'])}-cpu{cpus}" if group["gpus"] else f"cpu{cpus}"


def cpu_count(cpus: float) -> str:
    return str(max(1, math.ceil(cpus)))


def manifest(spec, image: str, namespace: str | None = None, worker_memory: str = "32Gi") -> str:
    """The YAML for `kubectl apply -f -`, headed by where the flow then finds the cluster."""
    import yaml

    resource = cluster(spec, image, namespace, worker_memory)
    name, ns = resource["metadata"]["name"], namespace or "default"
    parts = ", ".join(p for g in worker_groups(spec) for p in g["parts"])
    head = (f"# Ray cluster for pipeline {spec.name} ({parts}); KubeRay operator 1.x required.\n"
            f"# The flow's side: RAY_ADDRESS={name}-head-svc.{ns}.svc.cluster.local:6379\n"
            f"# Store credentials: the Secret {STORE_SECRET} (AWS_* variables) in the same namespace.\n")
    return head + yaml.safe_dump(resource, sort_keys=False, width=120)
