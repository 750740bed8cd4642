"""Where dataset files come from, brought onto this machine as local files to read.

    ./data.jsonl, ./folder/                     local files
    s3://bucket/prefix/                         every data file under the prefix (the store's S3 settings)
    hf://datasets/OWNER/NAME[:CONFIG][@SPLIT]   a Hugging Face dataset repo, through huggingface_hub
    modelscope://datasets/OWNER/NAME[:CONFIG][@SPLIT]   a ModelScope dataset repo, through modelscope
    builtin://reverse/{sft,preference,eval}      the demo task
    store://NAME@VERSION                        a registered dataset version (resolved by the flow)

An s3:// source that cannot be read is a SourceError naming it and the fix (no such bucket, access denied,
no credentials), or a TransientError when the endpoint cannot be reached (a stage retries it).
Hub repos are read from the hub's own cache first, so a pre-filled cache works offline; otherwise a
download, or a fast SourceError naming the cache and the fix. In a hub repo, CONFIG picks a folder (or a
file name prefix) and SPLIT the files named after it (`train-00000-of-00001.parquet`, `data/test.jsonl`);
without SPLIT the `train` files are read when there are any.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

from alignflow.errors import SourceError, TransientError
from tasks.readers import data_files, data_suffix

HUB_SCHEMES = {"hf": "hf://datasets/", "modelscope": "modelscope://datasets/"}


def local_files(source: str, scratch: Path, registered: Path | None = None) -> list[tuple[Path, str]]:
    """[(local file, the name errors show)] for one source, in reading order."""
    if registered is not None:
        return [(p, f"{source}/{p.relative_to(registered).as_posix()}") for p in data_files(registered, source)]
    kind = checked_source(source)
    if kind == "builtin":
        return [(_builtin(source, scratch), source)]
    if kind == "s3":
        return _s3(source, scratch)
    if kind in HUB_SCHEMES:
        return _hub(kind, source.removeprefix(HUB_SCHEMES[kind]), source)
    if kind == "store":  # resolved to a registered version by the flow, which passes its files
        raise SourceError(f"dataset {source!r}: unsupported scheme; use a local file or folder, s3://, "
                          "hf://datasets/, modelscope://datasets/ or store:// (see `alignflow data add`)")
    return [(p, str(p)) for p in data_files(Path(source).expanduser(), source)]


BUILTIN_SOURCES = tuple(f"builtin://reverse/{part}" for part in ("sft", "preference", "eval"))


def checked_source(source: str) -> str:
    """What kind of source `source` is ('builtin', 's3', 'hf', 'modelscope', 'store' or 'file'), once what
    can be told without reading it holds: a built-in name, a hub's dataset prefix, a known scheme, a local
    path that exists. Raises SourceError naming the fix."""
    if source.startswith("builtin://"):
        if source not in BUILTIN_SOURCES:
            raise SourceError(f"dataset {source!r}: no such built-in dataset; use builtin://reverse/sft, "
                              "builtin://reverse/preference or builtin://reverse/eval")
        return "builtin"
    for kind in ("s3", "store"):
        if source.startswith(f"{kind}://"):
            return kind
    for scheme, prefix in HUB_SCHEMES.items():
        if source.startswith(f"{scheme}://"):
            if not source.startswith(prefix):
                raise SourceError(f"dataset {source!r}: name a dataset repo as {prefix}OWNER/NAME[:CONFIG][@SPLIT]")
            return scheme
    if "://" in source:
        raise SourceError(f"dataset {source!r}: unsupported scheme; use a local file or folder, s3://, "
                          "hf://datasets/, modelscope://datasets/ or store:// (see `alignflow data add`)")
    if not Path(source).expanduser().exists():
        raise SourceError(f"dataset {source}: no such file or folder")
    return "file"


def _builtin(source: str, scratch: Path) -> Path:
    from tasks.builtin import reverse_task

    part = source.rsplit("/", 1)[-1]
    path = scratch / "builtin" / f"reverse-{part}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in reverse_task.splits()[part]:
            f.write(json.dumps(row) + "\n")
    return path


# ---- S3 ------------------------------------------------------------------------------------------

def listing(source: str) -> dict[str, str]:
    """What a source holds, by content: {relative path: S3 ETag or sha256}. Timestamps play no part."""
    if source.startswith("s3://"):
        return _s3_listing(source)
    path = Path(source).expanduser()
    if not path.exists():
        raise SourceError(f"data source {source}: no such file or folder")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and
                                                 not p.name.startswith("."))
    root = path.parent if path.is_file() else path
    from storage.store import sha256_file

    return {p.relative_to(root).as_posix(): sha256_file(p) for p in files}


def fingerprint(entries: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()


def _s3_objects(source: str) -> tuple[str, dict[str, tuple[str, str]]]:
    """(bucket, {name relative to the prefix: (key, ETag)}); a source naming one object lists that object."""
    from storage.s3 import client_errors, make_client, split_uri

    bucket, key = split_uri(source)
    prefix = key.rstrip("/") + "/" if key else ""
    client = make_client()
    try:
        out = _s3_list(client, bucket, prefix)
        if not out and key and not key.endswith("/"):
            out = _s3_one(client, bucket, key, source)
    except client_errors() as exc:
        raise _s3_error(exc, "list dataset", source, client) from None
    return bucket, out


def s3_listing_problem(source: str, connect_timeout: float = 2.0) -> str | None:
    """Why an s3:// data source cannot be read (unreachable, no bucket, access denied, no data files under
    it), or None; one listing request, no retries, for the checks before any work."""
    from alignflow.errors import ConfigError
    from storage.s3 import client_errors, quick_client, split_uri

    try:
        bucket, key = split_uri(source, "data source")
    except ConfigError as exc:
        return exc.problems[0]
    prefix = key.rstrip("/") + "/" if key else ""
    client = quick_client(connect_timeout=connect_timeout)
    try:
        page = client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1000)
        names = [obj["Key"] for obj in page.get("Contents", [])]
        if not names and key and not key.endswith("/"):
            names = list(_s3_one(client, bucket, key, source))
    except client_errors() as exc:
        return str(_s3_error(exc, "list dataset", source, client))
    if not any(data_suffix(Path(name)) for name in names) and not page.get("IsTruncated"):
        return f"dataset {source}: no .jsonl, .json, .csv, .tsv or .parquet objects there"
    return None


def _s3_list(client, bucket: str, prefix: str) -> dict[str, tuple[str, str]]:
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(prefix):]
            if rel and not rel.endswith("/") and not rel.rsplit("/", 1)[-1].startswith("."):
                out[rel] = (obj["Key"], obj["ETag"].strip('"'))
    return out


def _s3_one(client, bucket: str, key: str, source: str) -> dict[str, tuple[str, str]]:
    """The one object `key` names, or {} when there is none (the caller says what the source lacks)."""
    from botocore.exceptions import ClientError

    from storage.backends import ObjectNotFound
    from storage.s3 import translate

    try:
        return {key.rsplit("/", 1)[-1]: (key, client.head_object(Bucket=bucket, Key=key)["ETag"].strip('"'))}
    except ClientError as exc:
        if isinstance(translate(exc, "list dataset", source, None), ObjectNotFound):
            return {}
        raise


def _s3_error(exc: Exception, action: str, where: str, client) -> Exception:
    """A boto3 error about an s3:// source as the error to raise: TransientError when the endpoint cannot be
    reached or is busy (a stage's retries handle it), else a SourceError: no such bucket, access denied, no
    credentials, or what botocore said. `action` names the source ("list dataset", "dataset s3://b/p/:
    download"); `where` is the s3:// URI acted on."""
    from alignflow.secrets import redact_url
    from storage.backends import ObjectNotFound
    from storage.s3 import translate

    error = translate(exc, action, where, client.meta.endpoint_url)
    if isinstance(error, TransientError):
        return error
    if isinstance(error, ObjectNotFound):  # a download of an object listed a moment ago
        return SourceError(f"{action} {where}: not found (deleted since it was listed?)")
    return SourceError(str(error) if error is not exc else f"{action} {where}: {redact_url(str(exc))}")


def _s3_listing(source: str) -> dict[str, str]:
    return {rel: etag for rel, (_, etag) in _s3_objects(source)[1].items()}


def fetch(source: str, entries: dict[str, str], dest: Path) -> None:
    """Copy the listed files of a source into `dest` (a fresh folder)."""
    if source.startswith("s3://"):
        bucket, objects = _s3_objects(source)
        _download(source, bucket, {rel: objects[rel][0] for rel in entries}, dest)
        return
    path = Path(source).expanduser()
    root = path.parent if path.is_file() else path
    for rel in entries:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / rel, dest / rel)


def _download(source: str, bucket: str, keys: dict[str, str], dest: Path) -> None:
    """{relative name: key} of `bucket` (where `source` lies) into `dest`."""
    from storage.s3 import client_errors, make_client

    client = make_client()
    for rel, key in keys.items():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        try:
            client.download_file(bucket, key, str(dest / rel))
        except client_errors() as exc:
            raise _s3_error(exc, f"dataset {source}: download", f"s3://{bucket}/{key}", client) from None


def _s3(source: str, scratch: Path) -> list[tuple[Path, str]]:
    """The data files under an s3:// prefix (or one object), downloaded once per content."""
    bucket, objects = _s3_objects(source)
    objects = {rel: key_etag for rel, key_etag in objects.items() if data_suffix(Path(rel))}
    if not objects:
        raise SourceError(f"dataset {source}: no .jsonl, .json, .csv, .tsv or .parquet objects there")
    entries = {rel: etag for rel, (_, etag) in objects.items()}
    dest = scratch / "s3" / fingerprint(entries)[:16]
    if not dest.exists():
        partial = dest.with_name(dest.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        _download(source, bucket, {rel: key for rel, (key, _) in objects.items()}, partial)
        partial.rename(dest)
    base = source.rstrip("/")
    return [(dest / rel, base if base.endswith("/" + rel) else f"{base}/{rel}") for rel in sorted(entries)]


# ---- dataset hubs --------------------------------------------------------------------------------

def parse_hub(rest: str) -> tuple[str, str | None, str | None]:
    """'owner/name:config@split' -> ('owner/name', 'config', 'split')"""
    repo, _, split = rest.partition("@")
    repo, _, config = repo.partition(":")
    return repo, config or None, split or None


def _hub(scheme: str, rest: str, source: str) -> list[tuple[Path, str]]:
    from tasks.hub import from_hub, hub_for

    repo, config, split = parse_hub(rest)
    root = from_hub(hub_for(scheme, "dataset"), repo, None)  # which checks the repo id
    files = [p for p in data_files(root, source)]
    chosen = select_files([p.relative_to(root).as_posix() for p in files], config, split, source)
    return [(root / rel, f"{source}/{rel}") for rel in chosen]


def select_files(files: list[str], config: str | None, split: str | None, source: str) -> list[str]:
    """The files of one config and split in a hub dataset repo (the layout `datasets` reads)."""
    if config:
        in_config = [f for f in files if f.split("/")[0] == config or Path(f).name.startswith(config)]
        if not in_config:
            raise SourceError(f"dataset {source}: no config {config!r}; the repo has {_summary(files)}")
        files = in_config
    wanted = split or "train"
    pattern = re.compile(rf"(^|[/_.-]){re.escape(wanted)}([/_.-]|$)")
    in_split = [f for f in files if pattern.search(f)]
    if in_split or split:
        if not in_split:
            raise SourceError(f"dataset {source}: no files for split {split!r}; the repo has {_summary(files)}")
        return in_split
    return files


def _summary(files: list[str]) -> str:
    return ", ".join(files[:8]) + (f" and {len(files) - 8} more" if len(files) > 8 else "")


def content_fingerprint(source: str) -> str:
    """What keys the convert stage's cache besides the source's name: for local files their names, sizes and
    times; for an s3:// prefix its listing (ETags). Hub repos and the built-in task are keyed by name; a
    registered store:// version by its digest (passed separately)."""
    if source.startswith("s3://"):
        return fingerprint(listing(source))
    if "://" in source:
        return ""
    from tasks.hub import local_fingerprint

    return local_fingerprint(source)
