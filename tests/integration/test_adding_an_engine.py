"""A serving engine takes one module, serving/<name>.py, and its name in `Settings.engine`'s Literal, as
docs/ARCHITECTURE.md ("Adding a serving engine") says. A stand-in engine (a small OpenAI-compatible HTTP
server in the standard library) is added to a copy of the code; the deploy stage then serves two model
versions through it, blue/green, and `alignflow serve` lists, exports and stops it, all unchanged."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from alignflow.processes import pid_alive

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]

SERVER = r'''
import json, os, signal, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
key = os.environ.get("ECHO_API_KEY")

class Handler(BaseHTTPRequestHandler):
    def reply(self, body, code=200, kind="application/json"):
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/health":
            return self.reply({})
        if self.path == "/metrics":
            return self.reply("echo_requests_in_flight 0\n", kind="text/plain")
        if self.path == "/v1/models":
            return self.reply({"data": [{"id": args["--name"], "root": args["--model"]}]})
        self.reply({}, 404)

    def do_POST(self):
        if key and self.headers.get("Authorization") != f"Bearer {key}":
            return self.reply({"error": "unauthorized"}, 401)
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = request["messages"][-1]["content"][::-1]
        self.reply({"choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]})

    def log_message(self, *args):
        pass

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
ThreadingHTTPServer((args["--host"], int(args["--port"])), Handler).serve_forever()
'''

ENGINE = f'''"""Echo: a stand-in engine that answers every chat with the prompt reversed."""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass, field

from serving.engine import Launch
from serving.options import extra_args_problems

SERVER = {SERVER!r}


@dataclass(frozen=True)
class Echo:
    name: str = "echo"
    label: str = "Echo"
    package: str = "json"
    install: str = "nothing to install"
    image: str = "echo:1"
    key_variable: str = "ECHO_API_KEY"
    health_path: str = "/health"
    stop_signal: int = signal.SIGTERM
    adapters: bool = False
    prompt_logprobs: bool = False
    quantizations: dict = field(default_factory=lambda: {{"cpu": (), "gpu": ()}})

    def problems(self, settings) -> list[str]:
        return extra_args_problems(list(settings.extra_args), {{"--host": "use stages.deploy.host"}}, self.label)

    def entrypoint(self, python: str) -> list[str]:
        return [python, "-c", SERVER]

    def arguments(self, launch: Launch) -> list[str]:
        return ["--model", launch.model, "--name", launch.served_name, "--host", launch.host,
                "--port", str(launch.port)]

    def environment(self, cache_dir, key, adapters, gpu):
        return {{self.key_variable: key or None}}

    def load_adapter(self, root, name, folder, key, replace):
        raise NotImplementedError

    def unload_adapter(self, root, name, key):
        raise NotImplementedError

    def served_folder(self, root, key, card):
        return card.get("root")

    def requests_in_flight(self, metrics: str) -> int | None:
        found = re.findall(r"^echo_requests_in_flight (\\d+)", metrics, re.M)
        return int(found[0]) if found else None


ENGINE = Echo()
'''

DRIVER = '''
import json, logging, sys
from pathlib import Path
from tasks.deploy import DeployStage, serve
from tasks.stage import RunContext

store, cache, models = sys.argv[1], sys.argv[2], sys.argv[3:]
run = RunContext("echoes", store, cache)
config = DeployStage(engine="echo", python=sys.executable, load_test=None, drain_seconds=0)
seen = []
for folder in models:
    ref = run.open_store().put_dir("echoes/model", "model", Path(folder))
    deployment = serve(run, ref, config, ["hello there"], logging.getLogger("test"))
    record = json.loads(Path(run.open_store().get_dir(deployment), "deployment.json").read_text())
    seen.append({"action": deployment.metrics["action"], "pid": record["pid"], "endpoint": record["endpoint"],
                 "engine": record["engine"], "answer": record["smoke"]["answer"] if record["smoke"] else None,
                 "digest": ref.digest})
print(json.dumps(seen))
'''


def add_engine(tree: Path) -> None:
    """The two edits the docs ask for, and nothing else."""
    (tree / "serving" / "echo.py").write_text(ENGINE)
    settings = tree / "serving" / "settings.py"
    text = settings.read_text()
    assert 'engine: Literal["vllm", "sglang"]' in text
    settings.write_text(text.replace('engine: Literal["vllm", "sglang"]', 'engine: Literal["vllm", "sglang", "echo"]'))


def test_an_engine_added_through_the_public_seam_serves_blue_green_and_is_listed_exported_and_stopped(tmp_path):
    tree = tmp_path / "tree"
    for package in ("alignflow", "flows", "tasks", "storage", "serving"):
        shutil.copytree(ROOT / package, tree / package, ignore=shutil.ignore_patterns("__pycache__"))
    add_engine(tree)
    env = dict(os.environ, PYTHONPATH=str(tree), ALIGNFLOW_HOME=str(tmp_path / "home"))
    models = []
    for version in ("1", "2"):
        folder = tmp_path / f"model-{version}"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"version": version}))
        models.append(str(folder))

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], cwd=tree, env=env, capture_output=True, text=True,
                              timeout=600)

    try:
        driven = run("-c", DRIVER, str(tmp_path / "store"), str(tmp_path / "cache"), models[0], models[0], models[1])
        assert driven.returncode == 0, driven.stderr[-3000:]
        first, again, second = json.loads(driven.stdout.splitlines()[-1])
        assert first["engine"] == "echo" and first["answer"] == "ereht olleh" and first["action"] == "started"
        assert again["action"] == "unchanged" and again["pid"] == first["pid"]  # the same digest: nothing to do
        assert second["action"] == "started" and second["endpoint"] != first["endpoint"]  # blue/green
        assert not pid_alive(first["pid"]) and pid_alive(second["pid"])  # the old server drained and stopped

        listed = run("-m", "alignflow.cli", "serve", "ls")
        assert listed.returncode == 0 and " echo " in listed.stdout and str(second["pid"]) in listed.stdout
        url = run("-m", "alignflow.cli", "serve", "url", "echoes")
        assert url.stdout.strip() == second["endpoint"]
        exported = run("-m", "alignflow.cli", "serve", "k8s", "echoes")
        assert exported.returncode == 0, exported.stderr[-2000:]
        pod = {d["kind"]: d for d in yaml.safe_load_all(exported.stdout)}["Deployment"]["spec"]["template"]["spec"]
        server = pod["containers"][0]
        assert server["image"] == "echo:1" and server["args"][server["args"].index("--port") + 1] == "8000"

        checked = run("-c", "from tasks.deploy import DeployStage; "
                            "print(DeployStage(engine='echo', extra_args=['--host', 'x'], mode='adapter').problems())")
        assert "--host is set by the deploy stage" in checked.stdout and "Echo does not serve" in checked.stdout
        stopped = run("-m", "alignflow.cli", "serve", "stop", "echoes")
        assert stopped.returncode == 0 and not pid_alive(second["pid"])
    finally:
        run("-m", "alignflow.cli", "serve", "stop", "--all")
