"""Kubernetes manifests that serve exactly what a deployment record serves: `alignflow serve k8s NAME`.

A Deployment of the engine's image (`vllm/vllm-openai` for vLLM) with the record's own launch rendered for
the pod, and a Service in front. An init container (an image with alignflow) fetches the model, and the
adapter in adapter mode, from the store by digest (`alignflow artifacts get NAME@sha256:...`: blobs verified
against their sha256) into an emptyDir the server reads; the readiness probe waits for the engine's health
check, so the Service sends no request before the model is loaded, and a rolling update (maxUnavailable 0)
keeps the old pod until the new one is ready. Store credentials come from the Secret `alignflow-store`
(AWS_* variables, AWS_ENDPOINT_URL for SeaweedFS/MinIO); the api key, when the record has one, from the
Secret `<name>-api-key` (key `api-key`), as the engine's key variable.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from alignflow.errors import UsageError
from serving.engine import Launch, engine_for
from serving.records import Served, ServerRecord

PORT = 8000
MODELS = "/models"


def pod_launch(record: ServerRecord, template: bool) -> Launch:
    """The record's launch with the pod's paths, bind address and port."""
    launch = record.launch
    if launch is None:
        raise UsageError(f"serve k8s: {record.name}'s record predates launch records; redeploy it with "
                         "`alignflow run SPEC` (or `alignflow serve rollback`), then export again")
    adapter = launch.adapter
    if record.adapter and adapter is not None:
        adapter = dataclasses.replace(adapter, name=record.served_name, folder=f"{MODELS}/adapter")
    return dataclasses.replace(launch, model=f"{MODELS}/model", host="0.0.0.0", port=PORT, adapter=adapter,
                               gpu=True, chat_template="/config/chat_template.jinja" if template else None)


def fetch_commands(record: ServerRecord, store: str) -> list[str]:
    """What the init container runs: each artifact by digest into the shared volume."""
    def get(artifact: Served, folder: str) -> str:
        return f"alignflow artifacts --store {store} get {artifact.name}@{artifact.digest} {MODELS}/{folder}"

    if record.adapter and record.base:
        return [get(record.base, "model"), get(record.model, "adapter")]
    return [get(record.model, "model")]


def container_env(name: str, record: ServerRecord, engine) -> list[dict]:
    """The engine's environment for the pod (a GPU host), the api key from the Secret `<name>-api-key`."""
    values = engine.environment("/tmp/serve-cache", None, record.adapter, True)
    env = [{"name": k, "value": v} for k, v in values.items() if v is not None]
    if record.api_key:
        env.append({"name": engine.key_variable, "valueFrom": {"secretKeyRef": {"name": f"{name}-api-key",
                                                                                 "key": "api-key"}}})
    return env


def resources(name: str, record: ServerRecord, store: str, image: str | None, fetch_image: str,
              template: str | None) -> list[dict]:
    engine = engine_for(record.engine)
    labels = {"app.kubernetes.io/name": f"alignflow-{engine.name}", "app.kubernetes.io/instance": name}
    mounts = [{"name": "models", "mountPath": MODELS}]
    volumes = [{"name": "models", "emptyDir": {}}]
    if template is not None:
        mounts.append({"name": "chat-template", "mountPath": "/config", "readOnly": True})
        volumes.append({"name": "chat-template", "configMap": {"name": f"{name}-chat-template"}})
    probe = {"httpGet": {"path": engine.health_path, "port": PORT}, "periodSeconds": 5, "timeoutSeconds": 3}
    server = {"name": engine.name, "image": image or engine.image, "command": engine.entrypoint("python3"),
              "args": engine.arguments(pod_launch(record, template is not None)),
              "ports": [{"name": "http", "containerPort": PORT}], "env": container_env(name, record, engine),
              "volumeMounts": mounts,
              "readinessProbe": {**probe, "failureThreshold": 3},
              "startupProbe": {**probe, "failureThreshold": 360},  # up to 30 minutes to load a large model
              "livenessProbe": {**probe, "failureThreshold": 6}}
    fetch = {"name": "fetch-model", "image": fetch_image, "command": ["sh", "-ec", " && ".join(fetch_commands(
        record, store))], "envFrom": [{"secretRef": {"name": "alignflow-store"}}],
             "env": [{"name": "ALIGNFLOW_CACHE", "value": "/tmp/alignflow-cache"}], "volumeMounts": mounts[:1]}
    annotations = {"alignflow/model": record.model.label, "alignflow/digest": record.model.digest,
                   "alignflow/engine": engine.name}
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment",
                  "metadata": {"name": name, "labels": labels, "annotations": annotations},
                  "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                           "strategy": {"type": "RollingUpdate",
                                        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                           "template": {"metadata": {"labels": labels, "annotations": annotations},
                                        "spec": {"initContainers": [fetch], "containers": [server],
                                                 "volumes": volumes}}}}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": labels},
               "spec": {"selector": labels, "ports": [{"name": "http", "port": 80, "targetPort": PORT}]}}
    docs = [deployment, service]
    if template is not None:
        docs.insert(0, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{name}-chat-template",
                                                                              "labels": labels},
                        "data": {"chat_template.jinja": template}})
    return docs


def manifest(record: ServerRecord, store: str, image: str | None = None, fetch_image: str = "alignflow:latest") -> str:
    """The YAML documents for `record` served from `store`; `image`: the engine's own image unless given."""
    import yaml

    path = record.launch.chat_template if record.launch else None
    template = Path(path).read_text() if path and Path(path).exists() else None
    name = record.name.replace("_", "-").replace(".", "-")
    docs = resources(name, record, store, image, fetch_image, template)
    return yaml.safe_dump_all(docs, sort_keys=False, width=120)
