"""One pipeline run against two stores (a folder, then S3, as the README's walkthrough does): the server
already serving the digest is recorded in the second store, never looked up across stores."""

from __future__ import annotations

import json

import pytest

from storage import open_store
from tests.conftest import run_cli, write_spec

pytestmark = pytest.mark.slow

SERVE_ONLY = """
name: twostores
model: builtin://tiny-qwen2
stages:
  deploy: {{max_model_len: 128, load_test: null}}
store: {store}
"""


def test_a_server_seen_from_another_store_is_recorded_there(tmp_path):
    first = run_cli("run", str(write_spec(tmp_path / "a.yaml", SERVE_ONLY.format(store=tmp_path / "a"))))
    try:
        assert first.code == 0, first.output[-4000:]
        assert first.status()["deploy"] == "ran"
        second = run_cli("run", str(write_spec(tmp_path / "b.yaml", SERVE_ONLY.format(store=tmp_path / "b"))))
        assert second.code == 0, second.output[-4000:]
        assert second.status()["deploy"] == "unchanged"
        store_b = open_store(str(tmp_path / "b"))
        record = json.loads((store_b.get_dir(store_b.ref("twostores/deployment")) / "deployment.json").read_text())
        assert record["endpoint"] == first.summary["endpoint"] == second.summary["endpoint"]
        assert record["model"]["name"] == "twostores/base-model" and record["model"]["version"] == 1
        assert open_store(str(tmp_path / "a")).versions("twostores/deployment") == [1]
        third = run_cli("run", str(tmp_path / "a.yaml"))  # back to the first store: its own record, untouched
        assert third.code == 0 and third.status()["deploy"] == "unchanged", third.output[-3000:]
        assert open_store(str(tmp_path / "a")).versions("twostores/deployment") == [1]
    finally:
        run_cli("serve", "stop", "twostores")
