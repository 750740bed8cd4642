"""The store on S3 (a real SeaweedFS started by the tests, plain boto3 as the independent client):
a second machine gets every cache hit from the bucket, changes upload only what changed, concurrent
promotions have one winner, a server crash mid-upload leaves no half artifact, and anyone with boto3
can audit the bytes."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
import threading
import time
import uuid
from pathlib import Path

import pytest

from alignflow.errors import ConflictError
from storage import open_store
from tests.conftest import run_cli, s3_client, write_spec

pytestmark = pytest.mark.slow
BUCKET = "alignflow"


def all_keys(prefix: str) -> dict[str, str]:
    client, keys = s3_client(), {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        keys.update({o["Key"]: o["ETag"] for o in page.get("Contents", [])})
    return keys


SKIP_SERVING = ("--skip", "deploy", "--set", "stages.evaluate.engine=llm_ckpt")  # the store is the subject here


@pytest.fixture(scope="module")
def s3_demo(s3_server, tmp_path_factory):
    prefix = f"demo-{uuid.uuid4().hex[:8]}"
    uri = f"s3://{BUCKET}/{prefix}"
    first = run_cli("demo", "--store", uri, *SKIP_SERVING)
    assert first.code == 0, first.output[-5000:]
    return {"uri": uri, "prefix": prefix, "first": first, "tmp": tmp_path_factory.mktemp("s3demo")}


def test_second_machine_gets_every_stage_from_the_bucket(s3_demo):
    before = all_keys(s3_demo["prefix"] + "/")
    fresh = s3_demo["tmp"] / "machine-2"
    second = run_cli("demo", "--store", s3_demo["uri"], *SKIP_SERVING,
                     env={"PREFECT_HOME": str(fresh / "prefect"), "ALIGNFLOW_CACHE": str(fresh / "cache"),
                          "ALIGNFLOW_HOME": str(fresh / "state")})
    assert second.code == 0, second.output[-5000:]
    assert set(second.status().values()) == {"cached"} | ({"ran"} if "gate" in second.status() else set()), \
        second.status()
    assert all(v == "cached" for k, v in second.status().items() if k != "gate")
    assert all_keys(s3_demo["prefix"] + "/") == before  # not one object written: no blob, no version, no record
    assert second.summary["scores"] == s3_demo["first"].summary["scores"]


def test_an_independent_client_can_audit_every_manifest_and_blob(s3_demo):
    client, prefix = s3_client(), s3_demo["prefix"]
    manifests = [k for k in all_keys(f"{prefix}/manifests/")]
    assert manifests
    checked = 0
    for key in manifests:
        manifest = json.loads(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
        for info in manifest["files"].values():
            digest = info["sha256"]
            key = f"{prefix}/blobs/sha256/{digest[:2]}/{digest[2:]}"
            body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            assert len(body) == info["size"] and hashlib.sha256(body).hexdigest() == digest
            checked += 1
    assert checked >= 20


def test_credentials_never_reach_logs_artifacts_or_prefect(s3_demo, s3_server, session_home):
    secret = s3_server["env"]["AWS_SECRET_ACCESS_KEY"].encode()
    key_id = s3_server["env"]["AWS_ACCESS_KEY_ID"].encode()
    output = s3_demo["first"].output.encode()
    assert secret not in output and key_id not in output
    client = s3_client()
    for key in all_keys(s3_demo["prefix"] + "/"):
        body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        assert secret not in body and key_id not in body, key
    for path in Path(os.environ["PREFECT_HOME"]).rglob("*"):  # Prefect's database: parameters, blocks, logs
        if path.is_file():
            data = path.read_bytes()
            assert secret not in data and key_id not in data, path


def test_lineage_of_the_production_model_names_every_input(s3_demo):
    uri = s3_demo["uri"]
    assert run_cli("artifacts", "--store", uri, "promote", "demo/quantized@1", "production").code == 0
    shown = run_cli("artifacts", "--store", uri, "show", "demo/quantized@production", "--lineage")
    assert shown.code == 0, shown.output
    text = shown.stdout
    for expected in ("demo/base-model@1", "demo/data-sft@1", "demo/data-preference@1", "made by train_dpo",
                     '"beta": 0.1', "trl=1.16.0", "transformers=", "in flow run "):
        assert expected in text, (expected, text[:3000])
    assert "in flow run -" not in text
    verify = run_cli("artifacts", "--store", uri, "verify")
    assert verify.code == 0 and "0 problems" in verify.stdout, verify.output


def test_a_one_file_change_uploads_only_that_file(s3_server, tmp_path):
    store = open_store(f"s3://{BUCKET}/delta-{uuid.uuid4().hex[:8]}", tmp_path / "cache")
    sent = []
    for client in (store.backend.client, store.backend.blob_client):
        client.meta.events.register(
            "before-send.s3", lambda request, **_: sent.append(int(request.headers.get("Content-Length") or 0)))
    model = tmp_path / "model"
    model.mkdir()
    for i in range(3):
        (model / f"shard-{i}.bin").write_bytes(os.urandom(8 << 20))
    (model / "config.json").write_text('{"layers": 2}')
    store.put_dir("m/model", "model", model)
    whole = sum(sent)
    sent.clear()
    (model / "config.json").write_text('{"layers": 3}')
    ref = store.put_dir("m/model", "model", model)
    delta = sum(sent)
    print(f"bytes sent: whole folder {whole}, one-file change {delta}")
    assert ref.version == 2
    assert whole > 24 << 20
    assert 14 <= delta < 4096  # the changed file (14 bytes), its manifest and the version pointer


def _promote_at_barrier(uri: str, cache: str, version: int, barrier, results) -> None:
    store = open_store(uri, cache)
    record, etag = store.read_alias("m/model", "production")
    barrier.wait()  # both have read the same state; now both write
    try:
        history = [record["version"]] if record else []
        store.write_alias("m/model", "production", {"version": version, "history": history}, etag)
        results.put(("won", version))
    except ConflictError as exc:
        results.put(("lost", str(exc)))


def test_concurrent_promotions_have_exactly_one_winner(s3_server, tmp_path):
    prefix = f"race-{uuid.uuid4().hex[:8]}"
    uri = f"s3://{BUCKET}/{prefix}"
    store = open_store(uri, tmp_path / "cache")
    for i in (1, 2):
        folder = tmp_path / f"v{i}"
        folder.mkdir()
        (folder / "w").write_text(str(i))
        store.put_dir("m/model", "model", folder)
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_promote_at_barrier, args=(uri, str(tmp_path / f"c{v}"), v, barrier, results))
             for v in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    outcomes = sorted(results.get(timeout=5) for _ in procs)
    assert [o[0] for o in outcomes] == ["lost", "won"], outcomes
    assert "changed by someone else" in outcomes[0][1]
    winner = outcomes[1][1]
    assert store.alias_target("m/model", "production") == winner
    versions = s3_client().list_object_versions(Bucket=BUCKET, Prefix=f"{prefix}/artifacts/m/model/aliases/")
    bodies = [json.loads(s3_client().get_object(Bucket=BUCKET, Key=v["Key"], VersionId=v["VersionId"])["Body"].read())
              for v in versions.get("Versions", [])]
    assert [b["version"] for b in bodies] == [winner]  # the loser's write left no trace


def test_server_killed_mid_upload_then_restarted_the_stage_completes(tmp_path):
    from storage import seaweed

    home = tmp_path / "weed"
    info = seaweed.up(home)
    env = seaweed.env_lines(info, seaweed.credentials(info))
    model = tmp_path / "big-model"
    model.mkdir()
    for i in range(4):
        (model / f"shard-{i}.safetensors").write_bytes(os.urandom(96 << 20))
    (model / "config.json").write_text("{}")
    spec = write_spec(tmp_path / "big.yaml", f"""
name: big
model: {model}
data: {{eval: builtin://reverse/eval}}
store: s3://{BUCKET}/big
retry: {{retries: 3, delay_seconds: 2}}
""")

    crashed = []

    def crash_and_restart():
        data = home / "data"
        start = sum(f.stat().st_size for f in data.rglob("*") if f.is_file())
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # wait until the upload is well under way
            stored = sum(f.stat().st_size for f in data.rglob("*") if f.is_file()) - start
            if stored > 64 << 20:
                crashed.append(stored)
                break
            time.sleep(0.1)
        os.killpg(seaweed.status(home)["pid"], signal.SIGKILL)
        time.sleep(2)
        seaweed.state_file(home).unlink(missing_ok=True)
        seaweed.up(home)

    chaos = threading.Thread(target=crash_and_restart)
    chaos.start()
    try:
        result = run_cli("run", str(spec), env=env)
        chaos.join()
        assert result.code == 0, result.output[-5000:]
        assert crashed and crashed[0] < 4 * (96 << 20), "the server was not killed mid-upload"
        assert result.status()["download_model"] == "ran"
        verify = run_cli("artifacts", "--store", f"s3://{BUCKET}/big", "verify", env=env)
        assert verify.code == 0 and "0 problems" in verify.stdout, verify.output
        listed = run_cli("artifacts", "--store", f"s3://{BUCKET}/big", "ls", "big/base-model", env=env)
        assert listed.stdout.count("model") == 1, listed.output  # one version, no half artifact
    finally:
        chaos.join()
        seaweed.down(home)
