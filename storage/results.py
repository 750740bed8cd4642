"""Where Prefect keeps task results and cache records: in the artifact store itself.

So a fresh machine pointed at the same store (and an empty local cache) gets the same cache hits.
    local store  -> <store>/prefect-results (a folder)
    s3://b/p     -> s3://b/p/prefect-results through a prefect-aws S3Bucket block saved under a name
                    derived from the store URI. The block holds no credentials and no endpoint: boto3
                    reads them from the environment of whoever runs the flow.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from urllib.parse import urlparse

FOLDER = "prefect-results"


def block_name(store_uri: str) -> str:
    return "alignflow-" + hashlib.sha256(store_uri.rstrip("/").encode()).hexdigest()[:12]


def s3_block(store_uri: str, credentials_block: str | None = None):
    """The prefect-aws S3Bucket (not saved) over `<store>/prefect-results`."""
    from prefect_aws import AwsCredentials, S3Bucket
    from prefect_aws.client_parameters import AwsClientParameters

    from storage.s3 import load_credentials_block

    parsed = urlparse(store_uri)
    folder = "/".join(p for p in (parsed.path.strip("/"), FOLDER) if p)
    if credentials_block:  # a reference to the user's block: its secrets are not copied
        credentials = load_credentials_block(credentials_block)
    else:
        credentials = AwsCredentials(aws_client_parameters=AwsClientParameters(
            config={"s3": {"addressing_style": "path"}, "retries": {"mode": "standard", "max_attempts": 6}}))
    return S3Bucket(bucket_name=parsed.netloc, bucket_folder=folder, credentials=credentials)


def save_s3_block(store_uri: str, credentials_block: str | None = None) -> str:
    name = block_name(store_uri + (f"#{credentials_block}" if credentials_block else ""))
    s3_block(store_uri, credentials_block).save(name, overwrite=True)
    return name


def result_block(store_uri: str, credentials_block: str | None = None):
    """The storage block that holds a run's results, for reading them without a run (`alignflow plan`)."""
    if store_uri.startswith("s3://"):
        return s3_block(store_uri, credentials_block)
    from prefect.filesystems import LocalFileSystem

    return LocalFileSystem(basepath=str(Path(store_uri) / FOLDER))


def result_storage(store_uri: str, credentials_block: str | None = None):
    """Where the stages of a run on `store_uri` keep their results and cache records: a folder (a Path) for
    a local store, the name of a saved S3Bucket block for an s3:// store (`task.with_options(result_storage=)`)."""
    if store_uri.startswith("s3://"):
        return f"s3-bucket/{save_s3_block(store_uri, credentials_block)}"
    return Path(store_uri) / FOLDER
