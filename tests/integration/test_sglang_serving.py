"""SGLang serving for real, where it can run: a GPU host with SGLang in a python of its own, named by
ALIGNFLOW_SGLANG_PYTHON (`pip install sglang==0.5.23`). The deploy stage serves the tiny model through it with
an api key, answers a chat, recognises the digest it serves (a second deploy changes nothing), replaces it
blue/green with a new version, and stops. Skipped elsewhere: SGLang's CPU backend needs a kernel built from
source for the host (docs/ARCHITECTURE.md, Serving)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import urllib.request
from pathlib import Path

import pytest

from alignflow.processes import pid_alive
from serving.lifecycle import has_gpu

PYTHON = os.environ.get("ALIGNFLOW_SGLANG_PYTHON", "")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (has_gpu() and Path(PYTHON).is_file()),
                                 reason="needs a GPU and ALIGNFLOW_SGLANG_PYTHON (a python with sglang)")]
KEY = "sk-sglang-test-3c1f"


def chat(endpoint: str, key: str | None) -> int:
    body = json.dumps({"model": "sgl", "messages": [{"role": "user", "content": "reverse: a b c"}],
                       "max_tokens": 8}).encode()
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
    request = urllib.request.Request(f"{endpoint}/chat/completions", data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_sglang_serves_blue_green_with_a_key_and_knows_its_digest(tmp_path, monkeypatch):
    from serving.lifecycle import stop_server
    from serving.records import read_record
    from tasks.deploy import DeployStage, serve
    from tasks.download import fetch_model
    from tasks.stage import RunContext

    monkeypatch.setenv("ALIGNFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SGL_TEST_KEY", KEY)
    run = RunContext("sgl", str(tmp_path / "store"), str(tmp_path / "cache"))
    first = fetch_model("builtin://tiny-qwen2", tmp_path / "model")
    second = tmp_path / "model-2"
    shutil.copytree(first, second)
    config = json.loads((second / "config.json").read_text())
    (second / "config.json").write_text(json.dumps(dict(config, max_position_embeddings=1024)))  # a new digest
    settings = DeployStage(engine="sglang", python=PYTHON, api_key="env:SGL_TEST_KEY", load_test=None,
                           extra_args=["--mem-fraction-static", "0.3"])
    store, log = run.open_store(), logging.getLogger("test.sglang")
    try:
        one = serve(run, store.put_dir("sgl/model", "model", first), settings, ["hello"], log)
        live = read_record("sgl")
        assert one.metrics["action"] == "started" and live.engine == "sglang"
        assert KEY not in Path(f"/proc/{live.pid}/cmdline").read_bytes().decode()
        assert chat(live.endpoint, KEY) == 200 and chat(live.endpoint, None) == 401
        again = serve(run, store.ref("sgl/model", 1), settings, ["hello"], log)
        assert again.metrics["action"] == "unchanged"  # /model_info names the folder, so the digest
        two = serve(run, store.put_dir("sgl/model", "model", second), settings, ["hello"], log)
        new = read_record("sgl")
        assert two.metrics["action"] == "started" and new.endpoint != live.endpoint and not pid_alive(live.pid)
        assert chat(new.endpoint, KEY) == 200
    finally:
        record = read_record("sgl")
        if record:
            stop_server(record)
