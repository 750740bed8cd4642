"""Processes alignflow starts and stops by pid (model servers, the Prefect server and worker)."""

from __future__ import annotations

import os
import socket


def pid_alive(pid: int | None) -> bool:
    """True while `pid` runs. A finished child of this process (a zombie) is reaped and counts as gone."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:  # not our child: it exists
        return True


def stop_group(pid: int, sig: int, timeout: float = 30.0) -> bool:
    """Send `sig` to the process group led by `pid`, wait up to `timeout` s, then SIGKILL what is left.
    Returns whether anything was running."""
    import signal
    import time

    if not pid_alive(pid):
        return False
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if pid_alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        while pid_alive(pid):
            time.sleep(0.1)
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, on `host` (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
