"""Adapters on one shared vLLM server: two pipelines train LoRA adapters on the same base; the second
adapter, and later a new version of the first, go live in the running server (same pid, no restart),
each under its pipeline's name, while the other keeps answering as before."""

from __future__ import annotations

import json
import urllib.request

import pytest

from alignflow.processes import pid_alive
from storage import open_store
from tests.conftest import run_cli, write_spec

pytestmark = pytest.mark.slow

SPEC = """
name: {name}
model: builtin://tiny-qwen2
data: {{sft: {data}}}
stages:
  sft: {{tuner: lora, epochs: 3, learning_rate: 1.0e-2, batch_size: 16, max_length: 48,
        lora: {{r: 8, alpha: 16, dropout: 0.0}}}}
  deploy: {{mode: adapter, max_model_len: 128, load_test: null}}
store: {store}
"""
PROMPTS = ["reverse: a b c", "reverse: q r", "reverse: x y z w"]


def constant_answers(path, answer: str):
    """Chat rows whose every answer is `answer`: an adapter that learned them is easy to recognise."""
    import random

    rng = random.Random(answer)
    letters = "abcdefghijklmnopqrstuvwxyz"
    with open(path, "w") as f:
        for _ in range(320):
            question = "reverse: " + " ".join(rng.choice(letters) for _ in range(rng.randint(2, 6)))
            f.write(json.dumps({"messages": [{"role": "user", "content": question},
                                             {"role": "assistant", "content": answer}]}) + "\n")
    return path


def ask(endpoint: str, model: str) -> list[str]:
    answers = []
    for prompt in PROMPTS:
        body = json.dumps({"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 12,
                           "temperature": 0}).encode()
        request = urllib.request.Request(f"{endpoint}/chat/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            answers.append(json.loads(response.read())["choices"][0]["message"]["content"].strip())
    return answers


def answers(endpoint: str, model: str, learned: str) -> bool:
    """Every prompt's answer is the adapter's constant answer: it begins with it (whether a 60-step adapter
    also learned to stop right after it depends on the CPU's arithmetic; which adapter answers does not)."""
    replies = ask(endpoint, model)
    assert all(reply.startswith(learned) for reply in replies), (model, replies)
    return True


def state(name: str):
    from serving.records import read_record

    return read_record(name)


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    store = root / "store"

    def spec(name: str, answer: str):
        data = constant_answers(root / f"{name}-{answer[0]}.jsonl", answer)
        return write_spec(root / f"{name}-{answer[0]}.yaml", SPEC.format(name=name, data=data, store=store))

    yield {"store": store, "spec": spec}
    run_cli("serve", "stop", "--all")


def test_a_second_adapter_and_a_new_version_load_into_the_running_server(pipelines):
    first = run_cli("run", str(pipelines["spec"]("alpha", "a a a a")))
    assert first.code == 0, first.output[-4000:]
    server = state("alpha")
    assert server.adapter and pid_alive(server.pid)
    endpoint = server.endpoint
    assert answers(endpoint, "alpha", "a a a a")

    second = run_cli("run", str(pipelines["spec"]("beta", "b b b b")))
    assert second.code == 0, second.output[-4000:]
    store = open_store(str(pipelines["store"]))
    assert store.ref("alpha/base-model").digest == store.ref("beta/base-model").digest  # one base, one server
    assert state("beta").pid == server.pid and state("beta").endpoint == endpoint
    assert answers(endpoint, "beta", "b b b b")
    assert answers(endpoint, "alpha", "a a a a")

    third = run_cli("run", str(pipelines["spec"]("alpha", "c c c c")))  # a new adapter for alpha: in place
    assert third.code == 0, third.output[-4000:]
    assert state("alpha").pid == server.pid and state("alpha").model.version == 2
    assert answers(endpoint, "alpha", "c c c c")
    assert answers(endpoint, "beta", "b b b b")
    listed = run_cli("serve", "ls").stdout
    assert listed.count(f" {server.pid} ") == 2 and "adapter on base-" in listed

    assert run_cli("serve", "stop", "beta").code == 0  # alpha still uses the server: beta's adapter goes
    assert pid_alive(server.pid) and answers(endpoint, "alpha", "c c c c")
    assert "beta" not in [m["id"] for m in models(endpoint)]
    assert run_cli("serve", "stop", "alpha").code == 0  # the last user: the server stops
    assert not pid_alive(server.pid)


def models(endpoint: str) -> list[dict]:
    with urllib.request.urlopen(f"{endpoint}/models", timeout=30) as response:
        return json.loads(response.read())["data"]
