"""Which Prefect API a run talks to, and what a user sees when it is not there.

A fresh PREFECT_HOME on a busy two-core machine needs well over Prefect's default 20 s to start its
temporary API; an unreachable PREFECT_API_URL must end in one clear line, not a traceback."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from tests.conftest import run_cli, write_spec

CONVERT_ONLY = """
name: first
model: builtin://tiny-qwen2
data: {{eval: builtin://reverse/eval}}
store: {store}
"""


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_prefect_api_is_one_clear_line(tmp_path):
    spec = write_spec(tmp_path / "s.yaml", CONVERT_ONLY.format(store=tmp_path / "store"))
    url = f"http://127.0.0.1:{closed_port()}/api"
    result = run_cli("run", str(spec), env={"PREFECT_API_URL": url})
    assert result.code == 1, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and url in errors[0] and "alignflow server up" in errors[0], result.stderr
    assert not (tmp_path / "store").exists()


@pytest.fixture
def busy_machine():
    """Both cores busy, as on a CI machine running other jobs."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    yield
    for hog in hogs:
        hog.kill()
        hog.wait()


@pytest.mark.slow
def test_the_first_run_on_a_fresh_prefect_home_starts_on_a_busy_machine(tmp_path, busy_machine):
    """Prefect's temporary API creates its database on first use: 27-31 s on two idle cores, far more on
    busy ones, against Prefect's default limit of 20 s."""
    spec = write_spec(tmp_path / "s.yaml", CONVERT_ONLY.format(store=tmp_path / "store"))
    result = run_cli("run", str(spec), env={"PREFECT_HOME": str(tmp_path / "fresh-prefect-home"),
                                                "PREFECT_API_URL": None})  # not the session's server
    assert result.code == 0, result.output[-3000:]
    assert result.status()["convert_dataset[eval]"] == "ran"
