"""Where alignflow keeps its own state on this machine: one place resolves $ALIGNFLOW_HOME, the default
artifact store and the demo spec.

    $ALIGNFLOW_HOME (default ~/.alignflow)
      serve/      model servers' records and logs (serving/records.py)
      server/     the Prefect server and worker `alignflow server up` started (alignflow/service/server.py)
      storage/    the local S3 server `alignflow storage up` started (storage/seaweed.py)
"""

from __future__ import annotations

import os
from pathlib import Path

from alignflow.errors import UsageError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEMO_SPEC = PROJECT_ROOT / "deployments" / "demo.yaml"  # `alignflow demo`, and `alignflow deploy` without a spec
STORE = ".alignflow/store"  # the artifact store when neither the spec, --store nor $ALIGNFLOW_STORE names one


def default_store() -> str:
    """Where the artifact commands look without --store: $ALIGNFLOW_STORE, else STORE."""
    return os.environ.get("ALIGNFLOW_STORE", STORE)


def alignflow_home() -> Path:
    """$ALIGNFLOW_HOME, or ~/.alignflow; not created here."""
    return Path(os.environ.get("ALIGNFLOW_HOME") or Path.home() / ".alignflow").expanduser()


def home_dir(part: str, create: bool = True) -> Path:
    """`$ALIGNFLOW_HOME/<part>`, created when asked; a home that is a file or cannot be written is a
    UsageError naming the variable and the fix."""
    home = alignflow_home()
    path = home / part
    if path.is_dir():
        return path
    blocker = next((p for p in (home, path) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise UsageError(f"ALIGNFLOW_HOME: {blocker} is a file, not a folder; point ALIGNFLOW_HOME at a folder "
                         f"(default ~/.alignflow) or move that file away")
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"ALIGNFLOW_HOME: cannot create {path} ({exc.strerror}); point ALIGNFLOW_HOME at a "
                             "folder you can write") from exc
    return path
