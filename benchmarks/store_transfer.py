"""Store upload/download vs a plain boto3 loop over the same files, side by side, against a local SeaweedFS.

    .venv/bin/python benchmarks/store_transfer.py [--gib 1.0] [--repeat 3]

The folder looks like a model: a few large shards plus small config/tokenizer files. alignflow's numbers
include what a plain copy skips: sha256 of every file (content addressing on upload, verification on
download) and the manifest and version writes. Each measurement is repeated, alternating the two, and the
medians are compared (two cores share client and server: single runs vary by 30%). Also prints the bytes
sent for a one-file change.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from storage import open_store, seaweed

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
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="alignflow-bench-") as tmp:
        tmp = Path(tmp)
        info = seaweed.up(tmp / "weed")
        os.environ.update(seaweed.env_lines(info, seaweed.credentials(info)))
        try:
            run(tmp, args.gib, args.repeat)
        finally:
            seaweed.down(tmp / "weed")


def run(tmp: Path, gib: float, repeat: int) -> None:
    folder = tmp / "model"
    size = make_model(folder, gib)
    mb = size / 1e6
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", config=Config(s3={"addressing_style": "path"}))  # what a user writes
    times = {k: [] for k in ("up_plain", "up_store", "down_plain", "down_store")}
    for i in range(repeat):
        plain_prefix = f"plain-{uuid.uuid4().hex[:6]}"
        store = open_store(f"s3://{BUCKET}/store-{uuid.uuid4().hex[:6]}", tmp / f"cache-{i}")
        times["up_plain"].append(timed(lambda: boto3_upload(client, folder, plain_prefix)))
        refs = []
        times["up_store"].append(timed(lambda: refs.append(store.put_dir("bench/model", "model", folder))))
        times["down_plain"].append(timed(lambda: boto3_download(client, folder, plain_prefix, tmp / f"out-{i}")))
        times["down_store"].append(timed(lambda: store.get_dir(refs[0])))
        shutil.rmtree(tmp / f"out-{i}")
        shutil.rmtree(tmp / f"cache-{i}")
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = [("upload", med["up_plain"], med["up_store"]), ("download", med["down_plain"], med["down_store"])]

    sent = []
    store.backend.blob_client.meta.events.register("before-send.s3", lambda request, **_: sent.append(
        int(request.headers.get("Content-Length") or 0)))
    store.backend.client.meta.events.register(
        "before-send.s3", lambda request, **_: sent.append(int(request.headers.get("Content-Length") or 0)))
    (folder / "config.json").write_bytes(os.urandom(20_000))
    store.put_dir("bench/model", "model", folder)

    print(f"folder: {mb:.0f} MB in {len(list(folder.iterdir()))} files, SeaweedFS on loopback, "
          f"median of {repeat}")
    print(f"{'':<10} {'boto3 loop s':>13} {'store s':>9} {'boto3 MB/s':>11} {'store MB/s':>11} {'speed ratio':>12}")
    for name, plain, mine in rows:
        print(f"{name:<10} {plain:>13.2f} {mine:>9.2f} {mb / plain:>11.0f} {mb / mine:>11.0f} {plain / mine:>12.2f}")
    print(f"one-file change: {sum(sent):,} bytes sent vs {size:,} for the whole folder "
          f"({sum(sent) / size:.2e} of it)")


if __name__ == "__main__":
    main()
