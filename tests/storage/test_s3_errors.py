"""What a user reads when S3 says no: the store and an s3:// data source name the bucket or the source, the
cause and the fix, one line without a traceback; an endpoint's `user:password@` never shows. Against a real
SeaweedFS (the `s3_server` fixture) and a loopback port nobody listens on."""

from __future__ import annotations

import pytest

import storage.s3
from alignflow.errors import SourceError, TransientError
from alignflow.processes import free_port
from storage.s3 import S3Backend
from tests.conftest import run_cli, s3_client


@pytest.fixture
def unreachable_endpoint(monkeypatch) -> str:
    """AWS_ENDPOINT_URL with a password, on a loopback port nothing listens on; one try per request."""
    endpoint = f"http://admin:hunter2@127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "some-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "some-secret")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setattr(storage.s3, "ATTEMPTS", 1)  # refused at once; the retries' backoff would add ~15 s
    return endpoint


def test_an_unreachable_store_endpoint_is_named_without_its_password(unreachable_endpoint):
    backend = S3Backend("s3://alignflow/p")
    with pytest.raises(TransientError, match=r"read s3://alignflow/p/k: cannot reach http://\*\*\*@127\.0\.0\.1:") \
            as err:
        backend.get("k")
    assert "hunter2" not in str(err.value) and "admin" not in str(err.value)


def test_an_unreachable_data_source_is_named_and_retryable(unreachable_endpoint):
    from tasks.sources import listing

    with pytest.raises(TransientError, match=r"list dataset s3://raw-data/chats/: cannot reach http://\*\*\*@") \
            as err:
        listing("s3://raw-data/chats/")
    assert "hunter2" not in str(err.value)


def test_a_data_source_in_a_missing_bucket_says_so(s3_server, tmp_path):
    from tasks.sources import local_files

    with pytest.raises(SourceError) as err:
        local_files("s3://no-such-data-bucket/chats/", tmp_path)
    message = str(err.value)
    assert message.startswith("list dataset s3://no-such-data-bucket/chats/: bucket 'no-such-data-bucket' does "
                              f"not exist on {s3_server['endpoint']}; check its name"), message
    assert "access denied" not in message and "botocore" not in message and "ClientError" not in message


def test_a_data_source_with_wrong_credentials_says_access_denied(s3_server, tmp_path, monkeypatch):
    from tasks.sources import listing

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(SourceError) as err:
        listing("s3://alignflow/chats/")
    message = str(err.value)
    assert message.startswith("list dataset s3://alignflow/chats/: access denied"), message
    assert "check the credentials" in message and "does not exist" not in message
    assert "not-the-secret" not in message and s3_server["env"]["AWS_ACCESS_KEY_ID"] not in message


def test_a_data_source_naming_one_object_reads_it_or_says_it_is_not_there(s3_server, tmp_path):
    from tasks.sources import listing, local_files

    s3_client().put_object(Bucket="alignflow", Key="one-object/rows.jsonl", Body=b'{"prompt": "hi"}\n')
    assert list(listing("s3://alignflow/one-object/rows.jsonl")) == ["rows.jsonl"]
    with pytest.raises(SourceError, match=r"^dataset s3://alignflow/one-object/gone\.jsonl: no \.jsonl"):
        local_files("s3://alignflow/one-object/gone.jsonl", tmp_path)


def test_the_cli_reports_a_bad_data_source_in_one_line(s3_server):
    result = run_cli("data", "inspect", "s3://no-such-data-bucket/chats/", "--kind", "sft")
    assert result.code == 2, result.output
    assert "bucket 'no-such-data-bucket' does not exist" in result.stderr
    assert "Traceback" not in result.output and "botocore" not in result.output
