"""`S3Backend`: the store on S3-compatible object storage (AWS S3, SeaweedFS, MinIO, R2).

Configuration comes from the standard AWS sources (environment variables such as AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, or AWS_PROFILE); alignflow never stores credentials.
Addressing is path-style, which every S3-compatible server accepts.

Conditional writes carry the store's guarantees: `IfNoneMatch="*"` (version pointers: written once) and
`IfMatch=<etag>` (aliases: compare-and-swap). Transient errors (connection refused, 5xx, throttling) are
retried by botocore with backoff and then raised as TransientError, which the stage's Prefect retries
handle; permission and not-found errors are not retried and name the bucket and key. `translate` does
that for every S3 call alignflow makes (the store's, and an s3:// data source's); an endpoint's
`user:password@` never reaches a message.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

from alignflow.errors import ConfigError, ConflictError, StorageError, TransientError
from alignflow.secrets import redact_url
from storage.backends import ObjectNotFound

MB = 1024 * 1024
ATTEMPTS = 7  # tries per request in all, the first and six retries with backoff, before a TransientError
CONFLICT_CODES = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}
NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}
TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError",
                   "ServiceUnavailable", "500", "502", "503", "504"}


def transfer_config():
    """Multipart above 64 MiB in 64 MiB parts, 8 in parallel: fewer, larger requests cost less CPU per byte
    than boto3's 8 MiB default (benchmarks/store_transfer.py)."""
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=64 * MB, multipart_chunksize=64 * MB, max_concurrency=8,
                          use_threads=True)


def make_client(max_pool: int = 32, sign_payload: bool | None = None, credentials_block: str | None = None,
                attempts: int | None = None, connect_timeout: float = 5):
    """A boto3 S3 client for the store. `sign_payload=False` skips SigV4's sha256 of request bodies, which
    botocore otherwise computes over plain HTTP: for blobs, whose content alignflow verifies against its
    own sha256 on every read, that second hash is pure cost.

    Credentials, region and endpoint come from the AWS environment, or from a saved prefect-aws
    `AwsCredentials` block when `credentials_block` names one."""
    import boto3
    from botocore.config import Config

    s3 = {"addressing_style": "path"}
    if sign_payload is not None:
        s3["payload_signing_enabled"] = sign_payload
    config = Config(s3=s3, retries={"mode": "standard", "total_max_attempts": attempts or ATTEMPTS},
                    max_pool_connections=max_pool, connect_timeout=connect_timeout, read_timeout=60,
                    request_checksum_calculation="when_required", response_checksum_validation="when_required")
    region = os.environ.get("AWS_REGION", os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
    if not credentials_block:
        return boto3.session.Session().client("s3", config=config, region_name=region)
    block = load_credentials_block(credentials_block)
    return block.get_boto3_session().client("s3", config=config, region_name=block.region_name or region,
                                            endpoint_url=block.aws_client_parameters.endpoint_url)


def load_credentials_block(name: str):
    """The saved prefect-aws AwsCredentials block `name` (what the spec's `storage:` names)."""
    from prefect_aws import AwsCredentials

    try:
        return AwsCredentials.load(name.removeprefix("aws-credentials/"))
    except ValueError:
        raise ConfigError(f"storage: no saved Prefect block {name!r} of type aws-credentials. Save one with "
                          "`AwsCredentials(...).save(NAME)` (prefect-aws), or leave `storage` unset to use the "
                          "AWS environment", "spec") from None


def split_uri(uri: str, what: str = "store") -> tuple[str, str]:
    """'s3://bucket/a/b' -> ('bucket', 'a/b')."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ConfigError(f"{what} {uri!r}: expected s3://bucket[/prefix]", what)
    return parsed.netloc, parsed.path.strip("/")


def client_errors() -> tuple[type[Exception], ...]:
    """What a boto3 call raises: the errors `translate` takes."""
    from botocore.exceptions import BotoCoreError, ClientError

    return ClientError, BotoCoreError, ConnectionError, TimeoutError


def translate(exc: Exception, action: str, where: str, endpoint: str | None) -> Exception:
    """A botocore error as alignflow's own, opening with `action` and `where` (an s3:// URI) and naming
    neither credentials nor the endpoint's `user:password@`: ObjectNotFound, ConflictError, StorageError (no
    such bucket, access denied, no credentials) or TransientError (unreachable, throttled, 5xx). Any other
    error comes back as it is.

    ('read', 's3://b/k', 'http://u:p@h:8333') with NoSuchBucket -> StorageError("read s3://b/k: bucket 'b'
    does not exist on http://***@h:8333; check its name, or create it")"""
    from botocore.exceptions import ClientError, NoCredentialsError
    from botocore.exceptions import ConnectionError as BotoConnectionError

    if isinstance(exc, ClientError):
        return _client_error(exc, action, where, redact_url(endpoint))
    if isinstance(exc, NoCredentialsError):
        return StorageError(f"{action} {where}: no S3 credentials found; set AWS_ACCESS_KEY_ID and "
                            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or name a saved aws-credentials block")
    if isinstance(exc, (BotoConnectionError, ConnectionError, TimeoutError)):
        return TransientError(f"{action} {where}: cannot reach {redact_url(endpoint)}: {type(exc).__name__}")
    return exc


def _client_error(exc, action: str, where: str, endpoint: str | None) -> Exception:
    """`translate` for an answer the server gave (botocore's ClientError)."""
    bucket = urlparse(where).netloc
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
    if code in NOT_FOUND_CODES or status == "404" and code != "NoSuchBucket":
        return ObjectNotFound(f"{where} not found")
    if code in CONFLICT_CODES or status in ("412", "409"):
        return ConflictError(f"{action} {where}: the object changed or already exists (a concurrent writer)")
    if code == "NoSuchBucket":
        return StorageError(f"{action} {where}: bucket {bucket!r} does not exist on {endpoint}; check its name, "
                            "or create it")
    if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403") or status == "403":
        return StorageError(f"{action} {where}: access denied ({code}); check the credentials and the bucket "
                            f"policy for {bucket!r}")
    if code in TRANSIENT_CODES or status.startswith("5"):
        return TransientError(f"{action} {where}: the server answered {code or status}; retrying may help")
    return StorageError(f"{action} {where}: {code or status}: {redact_url(str(exc))}")


def quick_client(credentials_block: str | None = None, connect_timeout: float = 2.0):
    """A client for checks before any work: one attempt, a short connect timeout, so an endpoint that does
    not answer is reported in seconds instead of retried for a minute."""
    return make_client(max_pool=2, credentials_block=credentials_block, attempts=1, connect_timeout=connect_timeout)


def reach_problem(uri: str, credentials_block: str | None = None, connect_timeout: float = 2.0) -> str | None:
    """Why the store at `uri` cannot be used (bad URI, endpoint unreachable, no such bucket, access denied,
    no credentials), or None: one HEAD of the bucket, nothing written."""
    try:
        bucket, _ = split_uri(uri)
    except ConfigError as exc:
        return exc.problems[0]
    if credentials_block:
        return None  # a saved block is read through the Prefect API, when the store opens
    client = quick_client(connect_timeout=connect_timeout)
    try:
        client.head_bucket(Bucket=bucket)
    except client_errors() as exc:
        error = translate(exc, "store", uri, client.meta.endpoint_url)
        if type(error).__name__ == "ObjectNotFound":  # HEAD of a missing bucket answers a bare 404
            return f"store {uri}: bucket {bucket!r} does not exist on {redact_url(client.meta.endpoint_url)}; " \
                   "check its name, or create it"
        return str(error)
    return None


class S3Backend:
    def __init__(self, uri: str, client=None, credentials_block: str | None = None):
        self.bucket, self.prefix = split_uri(uri)
        self.uri = uri.rstrip("/")
        self.client = client or make_client(credentials_block=credentials_block)
        # blobs are verified by their content hash on read: no second hash of each body for the signature
        self.blob_client = client or make_client(sign_payload=False, credentials_block=credentials_block)
        self._transfer = transfer_config()

    def _key(self, key: str) -> str:
        if key.startswith("/") or ".." in key.split("/"):
            raise StorageError(f"refusing store key {key!r}: keys are relative paths without '..'")
        return f"{self.prefix}/{key}" if self.prefix else key

    def _error(self, exc: Exception, action: str, key: str) -> Exception:
        return translate(exc, action, f"s3://{self.bucket}/{self._key(key)}", self.client.meta.endpoint_url)

    def _call(self, action: str, key: str, fn, **kwargs):
        try:
            return fn(**kwargs)
        except client_errors() as exc:
            raise self._error(exc, action, key) from None

    def get(self, key: str) -> tuple[bytes, str]:
        response = self._call("read", key, self.client.get_object, Bucket=self.bucket, Key=self._key(key))
        return response["Body"].read(), response["ETag"]

    def put(self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None) -> str:
        kwargs = {"Bucket": self.bucket, "Key": self._key(key), "Body": data}
        if if_none_match:
            kwargs["IfNoneMatch"] = "*"
        elif if_match is not None:
            kwargs["IfMatch"] = if_match
        return self._call("write", key, self.client.put_object, **kwargs)["ETag"]

    def exists(self, key: str) -> bool:
        try:
            self._call("check", key, self.client.head_object, Bucket=self.bucket, Key=self._key(key))
            return True
        except ObjectNotFound:
            return False

    def list(self, prefix: str) -> list[str]:
        full = self._key(prefix) if prefix else (f"{self.prefix}/" if self.prefix else "")
        keys = []
        paginator = self.client.get_paginator("list_objects_v2")
        pages = self._call("list", prefix, lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=full)))
        strip = len(self.prefix) + 1 if self.prefix else 0
        for page in pages:
            keys += [obj["Key"][strip:] for obj in page.get("Contents", [])]
        return sorted(keys)

    def put_file(self, key: str, path: Path) -> None:
        self._call("upload", key, self.blob_client.upload_file, Filename=str(path), Bucket=self.bucket,
                   Key=self._key(key), Config=self._transfer)

    def get_file(self, key: str, dest: Path) -> None:
        self._call("download", key, self.blob_client.download_file, Bucket=self.bucket, Key=self._key(key),
                   Filename=str(dest), Config=self._transfer)

    def delete(self, key: str) -> None:
        self._call("delete", key, self.client.delete_object, Bucket=self.bucket, Key=self._key(key))
