"""Children that work for a process (trainers, Ray drivers) stop when it is gone, even killed outright."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from alignflow.processes import pid_alive

CHILD = "import time; from alignflow.processes import stop_with_owner; stop_with_owner(0.2); time.sleep(600)"
OWNER = f"""
import sys, time
from alignflow.processes import owned_child
with owned_child([sys.executable, "-c", {CHILD!r}]) as proc:
    print(proc.pid, flush=True)
    time.sleep(600)
"""


def test_an_owned_child_stops_when_its_owner_is_killed_outright():
    owner = subprocess.Popen([sys.executable, "-c", OWNER], stdout=subprocess.PIPE, text=True)
    child = int(owner.stdout.readline())
    try:
        time.sleep(1)
        assert pid_alive(child)  # working while its owner lives
        os.kill(owner.pid, signal.SIGKILL)  # no handler runs: no SIGTERM reaches the child's group
        owner.wait()
        deadline = time.monotonic() + 60
        while pid_alive(child) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not pid_alive(child)
    finally:
        if pid_alive(child):
            os.killpg(child, signal.SIGKILL)
