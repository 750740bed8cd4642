"""Processes alignflow starts and stops by pid (model servers, the Prefect server and worker).

A pid alone does not name a process for long: once it exits, the system gives its number to a later one.
A record therefore keeps the process's start time too (`process_start`), and a stop signals only a pid
that still started then (`is_process`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

_owned: set[int] = set()  # process groups of children that must not outlive this process (trainers)
OWNER = "ALIGNFLOW_OWNER"  # in an owned child's environment: "pid:start" of the process that owns it


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
    except ChildProcessError:  # not our child: it exists, unless it is another process's unreaped zombie
        return not is_zombie(pid)


def is_zombie(pid: int) -> bool:
    """Whether `pid` has exited and waits for its parent to reap it (state Z in /proc/PID/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].startswith("Z")


def process_start(pid: int) -> int | None:
    """When `pid` started, in clock ticks since boot (field 22 of /proc/PID/stat); with the pid it names one
    process, as a later process given the same number starts later. None when the pid does not exist, or
    where there is no /proc (not Linux)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after the command name, which may hold spaces; field 3 on
    return int(fields[19])


def process_command(pid: int) -> list[str] | None:
    """The command line `pid` runs (/proc/PID/cmdline), or None when it cannot be read."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.decode(errors="replace").split("\0")[:-1] if raw else []


def is_process(pid: int | None, start: int | None = None, command: list[str] | None = None) -> bool:
    """Whether `pid` runs and is still the process a record names: the one that started at `start`
    (`process_start`) or, for a record without a start time, one running `command`. With neither: whether
    it runs."""
    if not pid_alive(pid):
        return False
    if start is not None:
        return process_start(pid) == start
    if command is not None:
        return process_command(pid) == [str(part) for part in command]
    return True


def stop_group(pid: int, sig: int, timeout: float = 30.0, start: int | None = None) -> bool:
    """Send `sig` to the process group led by `pid`, wait up to `timeout` s, then SIGKILL what is left.
    With `start` (`process_start` of the leader), a pid that is another process by then is never signalled.
    Returns whether anything was running."""
    import signal
    import time

    if not is_process(pid, start):
        return False
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while is_process(pid, start) and time.monotonic() < deadline:
        time.sleep(0.2)
    if is_process(pid, start):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        while is_process(pid, start):
            time.sleep(0.1)
    return True


@contextlib.contextmanager
def owned_group(pid: int):
    """While inside, the process group `pid` leads is one `stop_owned` stops: a child that must not go on
    working for nobody when this process is interrupted (its reading thread may never see the interrupt)."""
    _owned.add(pid)
    try:
        yield
    finally:
        _owned.discard(pid)


@contextlib.contextmanager
def owned_child(cmd: list[str], grace: float = 10.0, **popen):
    """`subprocess.Popen(cmd, **popen)` in its own process group, which stops with it (SIGTERM, then SIGKILL
    after `grace` s) when the block is left by an exception, Ctrl-C or a cancelled run included: a child
    doing work for this process (a trainer, a Ray driver) never goes on working for nobody."""
    import signal

    popen["env"] = dict(popen.get("env") or os.environ, **{OWNER: f"{os.getpid()}:{process_start(os.getpid()) or ''}"})
    with subprocess.Popen(cmd, start_new_session=True, **popen) as proc, owned_group(proc.pid):
        try:
            yield proc
        except BaseException:
            stop_group(proc.pid, signal.SIGTERM, timeout=grace)
            raise


def stop_with_owner(every: float = 2.0) -> None:
    """In a child `owned_child` started: when the process that owns it is gone without stopping it (killed
    outright: SIGKILL, out of memory), SIGTERM this process group, as the owner would have."""
    import signal
    import threading
    import time

    owner = os.environ.get(OWNER, "")
    if not owner:
        return
    pid, start = owner.split(":")

    def watch():
        while is_process(int(pid), int(start) if start else None):
            time.sleep(every)
        os.killpg(0, signal.SIGTERM)

    threading.Thread(target=watch, name="alignflow-owner-watch", daemon=True).start()


def stop_owned(timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `timeout` s, to every owned process group still running."""
    import signal

    for pid in list(_owned):
        stop_group(pid, signal.SIGTERM, timeout=timeout)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, on `host` (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def spawn_detached(cmd: list[str], env: dict, log: Path, cwd: Path | str) -> subprocess.Popen:
    """Start `cmd` in its own session and process group, its output appended to `log`: closing the terminal
    (or Ctrl-C in it) does not stop it, and `stop_group(proc.pid, ...)` stops it with its children."""
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True, cwd=str(cwd))


def wait_ready(proc: subprocess.Popen, ready: Callable[[], bool], what: str, log: Path, timeout: float,
               exited: type[Exception], timed_out: type[Exception],
               progress: Callable[[float], None] | None = None, setting: str = "") -> None:
    """Poll `ready()` until it holds. The process exiting first raises `exited`; `timeout` s passing raises
    `timed_out` (naming `setting`, the timeout's knob, when given); either message ends with the log's last
    lines. On any failure (Ctrl-C included) the process group is killed, so nothing unrecorded is left
    running. `progress(seconds)` every 15 s."""
    import signal
    import time

    started, told = time.monotonic(), 0.0
    try:
        while not ready():
            if proc.poll() is not None:
                raise exited(f"{what} exited with code {proc.returncode} while starting. Last lines of {log}:\n"
                             f"{tail(log)}")
            waited = time.monotonic() - started
            if waited > timeout:
                knob = f" ({setting})" if setting else ""
                raise timed_out(f"{what} did not come up within {timeout:.0f}s{knob}; it was stopped. Last lines "
                                f"of {log}:\n{tail(log)}")
            if progress and waited - told >= 15:
                told = waited
                progress(waited)
            time.sleep(0.5)
    except BaseException:
        stop_group(proc.pid, signal.SIGKILL, timeout=10)
        proc.poll()
        raise


def tail(path: Path, lines: int = 20) -> str:
    """The last `lines` lines of a log, for an error message."""
    if not path.exists():
        return "(no log yet)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def run_logged(cmd: list[str], log: Path, env: dict, cwd: Path | str | None = None) -> int:
    """Run `cmd` (e.g. [sys.executable, "-m", "serving.load_test", job]) to the end, its output in `log`
    (overwritten); its exit code. The caller reads the result it wrote, or `tail(log)` for the error."""
    with open(log, "w") as out:
        return subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                              cwd=None if cwd is None else str(cwd)).returncode
