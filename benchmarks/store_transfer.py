"""Store upload/download vs a plain boto3 loop over the same files, side by side, against a local SeaweedFS.

    .venv/bin/python benchmarks/store_transfer.py [--gib 1.0]

The folder looks like a model: a few large shards plus small config/tokenizer files. alignflow's numbers
include what a plain copy skips: sha256 of every file (content addressing on upload, verification on
download) and the manifest and version writes. Also prints the bytes sent for a one-file change.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from storage import open_store, seaweed
from storage.s3 import make_client

BUCKET = "alignflow"


def make_model(root: Path, gib: float) -> int:
    root.mkdir(parents=True)
    shard = int(gib * (1 << 30) / 3)
    for i in range(3):
        with open(root / f"model-0000{i}-of-00003.safetensors", "wb") as f:
            for _ in range(shard // (16 << 20)):
                f.write(os.urandom(16 << 20))
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        (root / name).write_bytes(os.urandom(20_000))
    return sum(p.stat().st_size for p in root.iterdir())


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def boto3_upload(client, folder: Path, prefix: str) -> None:
    for path in sorted(folder.iterdir()):
        client.upload_file(str(path), BUCKET, f"{prefix}/{path.name}")


def boto3_download(client, folder: Path, prefix: str, dest: Path) -> None:
    dest.mkdir(parents=True)
    for path in sorted(folder.iterdir()):
        client.download_file(BUCKET, f"{prefix}/{path.name}", str(dest / path.name))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gib", type=float, default=1.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="alignflow-bench-") as tmp:
        tmp = Path(tmp)
        info = seaweed.up(tmp / "weed")
        os.environ.update(seaweed.env_lines(info, seaweed.credentials(info)))
        try:
            run(tmp, args.gib)
        finally:
            seaweed.down(tmp / "weed")


def run(tmp: Path, gib: float) -> None:
    folder = tmp / "model"
    size = make_model(folder, gib)
    mb = size / 1e6
    client = make_client()
    plain_prefix, store_uri = f"plain-{uuid.uuid4().hex[:6]}", f"s3://{BUCKET}/store-{uuid.uuid4().hex[:6]}"
    store = open_store(store_uri, tmp / "cache")
    rows = []
    up_plain = timed(lambda: boto3_upload(client, folder, plain_prefix))
    ref = None

    def store_upload():
        nonlocal ref
        ref = store.put_dir("bench/model", "model", folder)

    up_store = timed(store_upload)
    rows.append(("upload", up_plain, up_store))
    down_plain = timed(lambda: boto3_download(client, folder, plain_prefix, tmp / "plain-out"))
    down_store = timed(lambda: store.get_dir(ref))
    rows.append(("download", down_plain, down_store))

    sent = []
    store.backend.client.meta.events.register(
        "before-send.s3", lambda request, **_: sent.append(int(request.headers.get("Content-Length") or 0)))
    (folder / "config.json").write_bytes(os.urandom(20_000))
    store.put_dir("bench/model", "model", folder)
    shutil.rmtree(tmp / "plain-out")

    print(f"folder: {mb:.0f} MB in {len(list(folder.iterdir()))} files, SeaweedFS on loopback")
    print(f"{'':<10} {'boto3 loop s':>13} {'store s':>9} {'boto3 MB/s':>11} {'store MB/s':>11} {'speed ratio':>12}")
    for name, plain, mine in rows:
        print(f"{name:<10} {plain:>13.2f} {mine:>9.2f} {mb / plain:>11.0f} {mb / mine:>11.0f} {plain / mine:>12.2f}")
    print(f"one-file change: {sum(sent):,} bytes sent vs {size:,} for the whole folder "
          f"({sum(sent) / size:.2e} of it)")


if __name__ == "__main__":
    main()
