"""Kubernetes manifests that serve exactly what a deployment record serves: `alignflow serve k8s NAME`.

A Deployment of the `vllm/vllm-openai` image with the record's own vLLM flags, and a Service in front.
An init container (an image with alignflow) fetches the model, and the adapter in adapter mode, from the
store by digest (`alignflow artifacts get NAME@sha256:...`: blobs verified against their sha256) into an
emptyDir the server reads; the readiness probe waits for /health, so the Service sends no request before
the model is loaded, and a rolling update (maxUnavailable 0) keeps the old pod until the new one is ready.
Store credentials come from the Secret `alignflow-store` (AWS_* variables, AWS_ENDPOINT_URL for
SeaweedFS/MinIO); the api key, when the record has one, from the Secret `<name>-api-key` (key `api-key`).
"""

from __future__ import annotations

PORT = 8000
MODELS = "/models"


def server_args(state: dict) -> list[str]:
    """The record's vLLM flags with paths inside the pod and the container's bind address and port."""
    args = list(state["command"][3:])  # drop `python -m vllm.entrypoints.openai.api_server`
    replace = {"--model": f"{MODELS}/model", "--host": "0.0.0.0", "--port": str(PORT),
               "--chat-template": "/config/chat_template.jinja"}
    if state.get("adapter"):
        replace["--lora-modules"] = f"{state['served_name']}={MODELS}/adapter"
    for i, arg in enumerate(args[:-1]):
        if arg in replace:
            args[i + 1] = replace[arg]
    return args


def fetch_commands(state: dict, store: str) -> list[str]:
    """What the init container runs: each artifact by digest into the shared volume."""
    def get(artifact: dict, folder: str) -> str:
        return (f"alignflow artifacts --store {store} get {artifact['name']}@{artifact['digest']} "
                f"{MODELS}/{folder}")

    if state.get("adapter"):
        return [get(state["base"], "model"), get(state["model"], "adapter")]
    return [get(state["model"], "model")]


def resources(name: str, state: dict, store: str, image: str, fetch_image: str, template: str | None) -> list[dict]:
    labels = {"app.kubernetes.io/name": "alignflow-vllm", "app.kubernetes.io/instance": name}
    env = [{"name": "HF_HUB_OFFLINE", "value": "1"}, {"name": "VLLM_NO_USAGE_STATS", "value": "1"}]
    if state.get("api_key"):
        env.append({"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": {"name": f"{name}-api-key",
                                                                             "key": "api-key"}}})
    if state.get("adapter"):
        env.append({"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"})
    mounts = [{"name": "models", "mountPath": MODELS}]
    volumes = [{"name": "models", "emptyDir": {}}]
    args = server_args(state)
    if template is not None:
        mounts.append({"name": "chat-template", "mountPath": "/config", "readOnly": True})
        volumes.append({"name": "chat-template", "configMap": {"name": f"{name}-chat-template"}})
    elif "--chat-template" in args:
        at = args.index("--chat-template")
        del args[at:at + 2]
    probe = {"httpGet": {"path": "/health", "port": PORT}, "periodSeconds": 5, "timeoutSeconds": 3}
    server = {"name": "vllm", "image": image, "command": ["python3", "-m", "vllm.entrypoints.openai.api_server"],
              "args": args, "ports": [{"name": "http", "containerPort": PORT}], "env": env, "volumeMounts": mounts,
              "readinessProbe": {**probe, "failureThreshold": 3},
              "startupProbe": {**probe, "failureThreshold": 360},  # up to 30 minutes to load a large model
              "livenessProbe": {**probe, "failureThreshold": 6}}
    fetch = {"name": "fetch-model", "image": fetch_image, "command": ["sh", "-ec", " && ".join(fetch_commands(
        state, store))], "envFrom": [{"secretRef": {"name": "alignflow-store"}}],
             "env": [{"name": "ALIGNFLOW_CACHE", "value": "/tmp/alignflow-cache"}], "volumeMounts": mounts[:1]}
    annotations = {"alignflow/model": f"{state['model']['name']}@{state['model']['version']}",
                   "alignflow/digest": state["model"]["digest"]}
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


def manifest(state: dict, store: str, image: str = "vllm/vllm-openai:latest",
             fetch_image: str = "alignflow:latest") -> str:
    """The YAML documents for `state` (a record from tasks/servers.py) served from `store`."""
    from pathlib import Path

    import yaml

    command = state["command"]
    template_path = command[command.index("--chat-template") + 1] if "--chat-template" in command else None
    template = Path(template_path).read_text() if template_path and Path(template_path).exists() else None
    name = state["name"].replace("_", "-").replace(".", "-")
    docs = resources(name, state, store, image, fetch_image, template)
    return yaml.safe_dump_all(docs, sort_keys=False, width=120)
