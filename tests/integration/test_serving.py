"""Serving as operations sees it, on real vLLM servers: an api key, a blue/green deploy under load, a broken
model that never takes traffic, `serve rollback`, and the Kubernetes export of what is served.

One pipeline (`shop`, deploy only) goes through the steps in order: model A with a key; model B while a
client keeps asking (resolving the endpoint with `alignflow serve url` before each request); a model with
a corrupted weight file; rollback to A.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from alignflow.processes import pid_alive
from storage import open_store
from tests.conftest import ALIGNFLOW, run_cli, write_spec

pytestmark = pytest.mark.slow

KEY = "s3cr3t-test-key"
ENV = {"SHOP_KEY": KEY}
SPEC = """
name: shop
model: {model}
data: {{eval: builtin://reverse/eval}}
stages:
  deploy: {{max_model_len: 128, api_key: "env:SHOP_KEY", drain_seconds: 3, load_test: null}}
store: {store}
"""


def chat(endpoint: str, key: str | None, model: str = "shop", timeout: float = 60) -> dict:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "reverse: a b c"}],
                       "max_tokens": 16, "temperature": 0}).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(f"{endpoint}/chat/completions", data=body, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def url() -> str:
    return subprocess.run([ALIGNFLOW, "serve", "url", "shop"], capture_output=True, text=True, check=True,
                          timeout=60).stdout.strip()


def record():
    from serving.records import read_record

    return read_record("shop")


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """Three model folders (A, B with other weights, and A with a corrupted weight file) and a store."""
    import torch
    from safetensors.torch import load_file, save_file

    from tasks.download import fetch_model

    root = tmp_path_factory.mktemp("shop")
    a = fetch_model("builtin://tiny-qwen2", root / "a")
    b, broken = root / "b", root / "broken"
    shutil.copytree(a, b)
    weights = load_file(b / "model.safetensors")
    save_file({k: v * 1.01 if v.dtype == torch.float32 else v for k, v in weights.items()}, b / "model.safetensors",
              metadata={"format": "pt"})
    shutil.copytree(a, broken)
    data = bytearray((broken / "model.safetensors").read_bytes())
    data[8:72] = b"\xff" * 64  # the JSON header that says where each tensor lives: garbage
    (broken / "model.safetensors").write_bytes(bytes(data))
    store = root / "store"
    specs = {name: write_spec(root / f"{name}.yaml", SPEC.format(model=folder, store=store))
             for name, folder in (("a", a), ("b", b), ("broken", broken))}
    yield {"specs": specs, "store": store, "root": root}
    run_cli("serve", "stop", "shop")


def test_binding_beyond_loopback_without_a_key_is_refused(tmp_path):
    spec = write_spec(tmp_path / "open.yaml", "name: open\nmodel: builtin://tiny-qwen2\n"
                                             "stages: {deploy: {host: 0.0.0.0}}\n")
    result = run_cli("run", str(spec))
    assert result.code != 0
    assert "stages.deploy.host: 0.0.0.0 exposes the server" in result.stderr and "api_key" in result.stderr
    assert not record()


def test_a_request_without_the_key_is_refused(shop):
    first = run_cli("run", str(shop["specs"]["a"]), env=ENV)
    assert first.code == 0, first.output[-4000:]
    endpoint = url()
    with pytest.raises(urllib.error.HTTPError) as refused:
        chat(endpoint, None)
    assert refused.value.code == 401
    with pytest.raises(urllib.error.HTTPError) as wrong:
        chat(endpoint, "not-the-key")
    assert wrong.value.code == 401
    assert chat(endpoint, KEY)["choices"][0]["finish_reason"] in ("stop", "length")
    state = record()
    assert state.api_key == "env:SHOP_KEY"
    assert KEY not in json.dumps(state.to_json()) and KEY not in first.output
    stored = [p for p in shop["store"].rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]
    assert not stored, stored
    with open(f"/proc/{state.pid}/cmdline", "rb") as cmdline:
        assert KEY.encode() not in cmdline.read()


def test_blue_green_deploy_fails_no_request_and_stops_the_old_server(shop):
    old = record()
    outcomes, stop = [], threading.Event()

    def client():
        while not stop.is_set():
            endpoint = url()
            try:
                chat(endpoint, KEY, timeout=120)
                outcomes.append((endpoint, None))
            except Exception as exc:  # noqa: BLE001 (any failure counts)
                outcomes.append((endpoint, repr(exc)))

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    try:
        result = run_cli("run", str(shop["specs"]["b"]), env=ENV)
        time.sleep(3)  # a few requests against the new server too
    finally:
        stop.set()
        thread.join(timeout=180)
    assert result.code == 0, result.output[-4000:]
    assert result.status()["deploy"] == "ran"
    new = record()
    failures = [o for o in outcomes if o[1]]
    endpoints = [e for e, _ in outcomes]
    print(f"{len(outcomes)} requests, {len(failures)} failed; {endpoints.count(old.endpoint)} to the old "
          f"server, {endpoints.count(new.endpoint)} to the new")
    assert not failures, failures[:3]
    assert new.pid != old.pid and new.endpoint != old.endpoint
    assert endpoints.count(old.endpoint) > 0 and endpoints.count(new.endpoint) > 0
    assert not pid_alive(old.pid)


def test_a_broken_model_never_takes_traffic(shop):
    serving = record()
    result = run_cli("run", str(shop["specs"]["broken"]), env=ENV)
    assert result.code != 0
    assert "vLLM exited with code" in result.output and "Last lines of" in result.output
    log = Path(re.search(r"Last lines of (\S+):", result.output).group(1))
    last = [line for line in log.read_text().splitlines() if line.strip()][-2]
    assert last.strip() in result.output  # the server's own error, e.g. the weight file's unreadable header
    assert "codec can't decode" in result.output, result.output[-3000:]
    assert record().pid == serving.pid and pid_alive(serving.pid)
    assert url() == serving.endpoint
    assert chat(serving.endpoint, KEY)["choices"][0]["finish_reason"] in ("stop", "length")
    store = open_store(str(shop["store"]))
    assert store.ref("shop/base-model", "production").version == 2  # B: the broken upload was never promoted


def test_rollback_moves_production_back_and_serves_it(shop):
    before = record()
    result = run_cli("serve", "rollback", "shop", env=ENV)
    assert result.code == 0, result.output[-4000:]
    store = open_store(str(shop["store"]))
    production = store.ref("shop/base-model", "production")
    after = record()
    assert production.version == 1 and after.model.digest == production.digest
    assert after.pid != before.pid and not pid_alive(before.pid)
    assert chat(url(), KEY)["choices"][0]["finish_reason"] in ("stop", "length")


def test_the_kubernetes_export_serves_the_same_digest_with_the_same_flags(shop, tmp_path):
    result = run_cli("serve", "k8s", "shop")
    assert result.code == 0, result.output[-3000:]
    docs = {d["kind"]: d for d in yaml.safe_load_all(result.stdout)}
    state = record()
    check_manifest(docs, state)
    fetch = docs["Deployment"]["spec"]["template"]["spec"]["initContainers"][0]["command"][-1]
    get = fetch.split(" && ")[0].split()  # the init container's own command, run here into a folder
    target = tmp_path / "models" / "model"
    got = subprocess.run([ALIGNFLOW, *get[1:-1], str(target)], capture_output=True, text=True, timeout=300)
    assert got.returncode == 0, got.stderr
    store = open_store(str(shop["store"]))
    served = store.get_dir(store.ref(state.model.name, state.model.digest))
    assert sorted(p.name for p in target.iterdir()) == sorted(p.name for p in served.iterdir())
    assert (target / "model.safetensors").read_bytes() == (served / "model.safetensors").read_bytes()


def check_manifest(docs: dict, state) -> None:
    """The structure Kubernetes needs, and the record's digest and flags in it."""
    deployment, service = docs["Deployment"], docs["Service"]
    assert deployment["apiVersion"] == "apps/v1" and service["apiVersion"] == "v1"
    pod = deployment["spec"]["template"]["spec"]
    labels = deployment["spec"]["selector"]["matchLabels"]
    assert deployment["spec"]["template"]["metadata"]["labels"] == labels == service["spec"]["selector"]
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    server = pod["containers"][0]
    assert server["image"].startswith("vllm/vllm-openai")
    assert server["readinessProbe"]["httpGet"] == {"path": "/health", "port": 8000}
    args = server["args"]
    assert args[args.index("--model") + 1] == "/models/model"
    assert args[args.index("--served-model-name") + 1] == state.served_name
    assert args[args.index("--port") + 1] == "8000" and args[args.index("--host") + 1] == "0.0.0.0"
    assert service["spec"]["ports"][0]["targetPort"] == 8000
    fetch = pod["initContainers"][0]
    assert f"{state.model.name}@{state.model.digest} /models/model" in fetch["command"][-1]
    assert {"name": "models", "mountPath": "/models"} in fetch["volumeMounts"]
    assert {"name": "models", "mountPath": "/models"} in server["volumeMounts"]
    key_env = [e for e in server["env"] if e["name"] == "VLLM_API_KEY"]
    assert bool(key_env) == bool(state.api_key)
    if "--chat-template" in args:
        assert docs["ConfigMap"]["data"]["chat_template.jinja"]
