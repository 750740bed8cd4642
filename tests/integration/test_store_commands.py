"""The `alignflow storage` and `alignflow artifacts` commands, and S3 access problems a user will hit:
wrong credentials, a missing bucket, credentials kept in a Prefect block instead of the environment."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
import uuid

import pytest

from alignflow.errors import StorageError
from storage import open_store
from tests.conftest import run_cli, write_spec


def test_storage_up_status_down(tmp_path):
    env = {"ALIGNFLOW_HOME": str(tmp_path / "home")}
    up = run_cli("storage", "up", env=env)
    try:
        assert up.code == 0, up.output
        creds = tmp_path / "home" / "storage" / "credentials.env"
        assert f"source {creds}" in up.stdout
        assert stat.S_IMODE(creds.stat().st_mode) == 0o600
        secret = next(line for line in creds.read_text().splitlines() if "SECRET" in line).split("=", 1)[1]
        assert secret not in up.output  # printed: where the secret is, not the secret
        assert "running at http://127.0.0.1:" in run_cli("storage", "status", env=env).stdout
    finally:
        down = run_cli("storage", "down", env=env)
    assert down.stdout.strip() == "stopped"
    assert run_cli("storage", "status", env=env).stdout.strip() == "not running"


def test_artifacts_get_promote_rollback_on_a_local_store(tmp_path):
    store = open_store(str(tmp_path / "store"), tmp_path / "cache")
    for i in (1, 2):
        folder = tmp_path / f"v{i}"
        folder.mkdir()
        (folder / "weights.bin").write_text(f"version {i}")
        store.put_dir("p/model", "model", folder)
    args = ("artifacts", "--store", str(tmp_path / "store"))
    assert run_cli(*args, "promote", "p/model@1", "production").code == 0
    assert run_cli(*args, "promote", "p/model@2", "production").code == 0
    rolled = run_cli(*args, "rollback", "p/model", "production")
    assert rolled.code == 0 and rolled.stdout.strip() == "production -> p/model@1"
    got = run_cli(*args, "get", "p/model@production", str(tmp_path / "out"))
    assert got.code == 0, got.output
    assert (tmp_path / "out" / "weights.bin").read_text() == "version 1"
    listed = run_cli(*args, "ls", "p/model").stdout
    assert "production" in listed.splitlines()[2] and listed.splitlines()[2].startswith("1")
    missing = run_cli(*args, "show", "p/nothing@production")
    assert missing.code == 2 and "no alias 'production'" in missing.stderr and "Traceback" not in missing.output


@pytest.mark.slow
def test_wrong_credentials_fail_at_once_naming_bucket_and_fix(s3_server, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    store = open_store(f"s3://alignflow/denied-{uuid.uuid4().hex[:6]}", tmp_path / "cache")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "f").write_text("x")
    started = time.monotonic()
    with pytest.raises(StorageError, match=r"access denied .*check the credentials.*'alignflow'") as err:
        store.put_dir("p/m", "model", tmp_path / "m")
    assert time.monotonic() - started < 5  # a permission error is not retried
    assert "not-the-secret" not in str(err.value) and os.environ["AWS_ACCESS_KEY_ID"] not in str(err.value)


@pytest.mark.slow
def test_missing_bucket_says_so(s3_server, tmp_path):
    store = open_store("s3://no-such-bucket-here/x", tmp_path / "cache")
    with pytest.raises(StorageError, match="bucket 'no-such-bucket-here' does not exist"):
        store.ref("p/m")


@pytest.mark.slow
def test_credentials_from_a_prefect_block_instead_of_the_environment(s3_server, tmp_path):
    save = ("import sys; from prefect_aws import AwsCredentials; "
            "from prefect_aws.client_parameters import AwsClientParameters; "
            "AwsCredentials(aws_access_key_id=sys.argv[1], aws_secret_access_key=sys.argv[2], region_name='us-east-1', "
            "aws_client_parameters=AwsClientParameters(endpoint_url=sys.argv[3])).save('lab-s3', overwrite=True)")
    subprocess.run([sys.executable, "-c", save, s3_server["env"]["AWS_ACCESS_KEY_ID"],
                    s3_server["env"]["AWS_SECRET_ACCESS_KEY"], s3_server["endpoint"]], check=True,
                   capture_output=True, timeout=120)
    uri = f"s3://alignflow/block-{uuid.uuid4().hex[:6]}"
    spec = write_spec(tmp_path / "s.yaml", f"""
name: blocky
model: builtin://tiny-qwen2
data: {{eval: builtin://reverse/eval}}
store: {uri}
storage: lab-s3
""")
    no_aws = {k: "" for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL")}
    result = run_cli("run", str(spec), env=no_aws)  # the block is read from the session's Prefect server
    assert result.code == 0, result.output[-4000:]
    listed = run_cli("artifacts", "--store", uri, "--storage", "lab-s3", "ls",
                     env=no_aws)
    assert "blocky/data-eval" in listed.stdout, listed.output
