"""What the command modules share: argument types (argparse turns their errors into `error: argument ...` and
exit 2), the Prefect settings every command starts with, and `--json` output."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def positive_int(text: str) -> int:
    """1, 2, ..."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive whole number")
    return value


def port_number(text: str) -> int:
    """0 (any free port) to 65535."""
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a port (0-65535; 0 picks a free one)")
    return value


def quiet_prefect() -> None:
    home = Path(os.environ.get("PREFECT_HOME", Path.home() / ".prefect"))
    home.mkdir(parents=True, exist_ok=True)  # Prefect creates only the last level itself


def write_json(path: str | None, data: dict) -> None:
    if not path:
        return
    from alignflow.errors import UsageError

    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data, indent=2))
    except OSError as exc:
        raise UsageError(f"--json {path}: cannot write it ({exc.strerror or exc}); pass a path you can write") from exc
