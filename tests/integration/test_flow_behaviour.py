"""The flow's contract on small pipelines (real Prefect, real trainer processes, the local store):
bad specs fail before any work, transient failures are retried, bad config is not, and a cache hit
needs its artifact."""

from __future__ import annotations

import json
import os

import pytest

from storage import open_store
from tasks.builtin import reverse_task
from tests.conftest import run_cli, write_spec

SMALL = """
name: small
model: builtin://tiny-qwen2
data: {{eval: builtin://reverse/eval, sft: builtin://reverse/sft}}
store: {store}
retry: {{retries: 2, delay_seconds: 0.2}}
"""


def test_spec_with_two_mistakes_fails_before_any_work(tmp_path):
    spec = write_spec(tmp_path / "bad.yaml", SMALL.format(store=tmp_path / "store") +
                      "stages:\n  sft: {tuner: full, epocs: 2, batch_size: many}\n")
    result = run_cli("run", str(spec))
    assert result.code == 2, result.output
    assert "2 problems" in result.stderr
    assert "stages.sft.epocs: unknown field; did you mean 'epochs'?" in result.stderr
    assert "stages.sft.batch_size: expected an integer, got 'many'" in result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "store").exists()


def test_transient_failure_is_retried_and_the_flow_completes(tmp_path):
    spec = write_spec(tmp_path / "s.yaml", SMALL.format(store=tmp_path / "store"))
    result = run_cli("run", str(spec), env={"ALIGNFLOW_INJECT_FAILURE": "convert_dataset:1"})
    assert result.code == 0, result.output
    assert "injected transient failure #1" in result.output and "Retry 1/2" in result.output
    assert set(result.status().values()) == {"ran"}


def test_config_error_inside_a_stage_is_not_retried(tmp_path):
    spec = write_spec(tmp_path / "s.yaml", SMALL.format(store=tmp_path / "store") +
                      "stages:\n  sft: {tuner: full, epochs: 1, trainer_args: {no_such_argument: 1}}\n")
    result = run_cli("run", str(spec))
    assert result.code == 2, result.output
    assert "no_such_argument" in result.stderr
    assert "Retry 1/" not in result.output and "Traceback" not in result.output
    assert open_store(str(tmp_path / "store")).versions("small/sft") == []


def test_cache_hit_requires_the_artifact_to_still_exist(tmp_path):
    store_dir = tmp_path / "store"
    spec = write_spec(tmp_path / "s.yaml", SMALL.format(store=store_dir))
    assert run_cli("run", str(spec)).code == 0
    second = run_cli("run", str(spec))
    assert set(second.status().values()) == {"cached"}, second.status()

    store = open_store(str(store_dir))
    ref = store.ref("small/data-eval")
    for entry in store.manifest(ref.digest)["files"].values():  # the blobs vanish (a clean-up, a bad sync)
        blob = store_dir / "blobs" / "sha256" / entry["sha256"][:2] / entry["sha256"][2:]
        os.remove(blob)
    third = run_cli("run", str(spec))
    assert third.code == 0, third.output
    assert third.status()["convert_dataset[eval]"] == "ran"
    assert third.status()["convert_dataset[sft]"] == "cached"
    assert store.exists(store.ref("small/data-eval"))


@pytest.mark.slow
def test_same_inputs_on_another_machine_give_the_same_digests(tmp_path):
    """Nothing machine-specific (paths, pickled arguments, unseeded heads) may leak into an artifact."""
    spec_text = """
name: twin
model: builtin://tiny-qwen2
data: {sft: builtin://reverse/sft, preference: builtin://reverse/preference}
stages:
  sft: {tuner: lora, max_length: 64, trainer_args: {max_steps: 6}}
  reward: {max_length: 64, trainer_args: {max_steps: 4}}
  dpo: {max_length: 64, trainer_args: {max_steps: 4}}
"""
    digests = []
    for machine in ("a", "b"):
        spec = write_spec(tmp_path / f"{machine}.yaml", spec_text + f"store: {tmp_path / machine / 'store'}\n")
        result = run_cli("run", str(spec), env={"ALIGNFLOW_CACHE": str(tmp_path / machine / "cache")})
        assert result.code == 0, result.output[-3000:]
        digests.append({row["stage"]: row["digest"] for row in result.summary["steps"]})
        assert "checkpoint at step" in result.output  # each trainer stored its checkpoints as it went ...
        assert not (tmp_path / machine / "store" / "checkpoints").exists()  # ... and dropped them once published
    assert digests[0] == digests[1]


@pytest.mark.slow
def test_gate_rejection_stops_before_deploy_with_reasons(tmp_path):
    spec = write_spec(tmp_path / "g.yaml", SMALL.format(store=tmp_path / "store") + """
stages:
  evaluate: {max_tokens: 8, limit: 20}
  gate: {min_score: 0.5}
  deploy: {}
""")
    result = run_cli("run", str(spec))
    assert result.code == 3, result.output[-3000:]
    assert result.summary["status"] == "rejected by gate"
    assert "score 0.000 is below min_score 0.500" in result.stdout
    assert "deploy" not in result.status() and "endpoint" not in result.summary
    assert open_store(str(tmp_path / "store")).versions("small/deployment") == []
    # the candidate was evaluated on its own new server (engine vllm), which never took traffic: stopped
    assert "green server is up" in result.output
    assert "small" not in run_cli("serve", "ls").stdout


def test_bad_rows_stop_the_run_before_training_listing_each_row_without_a_traceback(tmp_path):
    data = tmp_path / "chat.jsonl"
    data.write_text('{"query": "2+2?", "response": "4"}\n{"query": 5, "response": "x"}\n{oops\n')
    spec = write_spec(tmp_path / "b.yaml", f"name: small\nmodel: builtin://tiny-qwen2\ndata: {{sft: {data}}}\n"
                                           f"stages: {{sft: {{}}}}\nstore: {tmp_path / 'store'}\n")
    result = run_cli("run", str(spec))
    assert result.code == 2, result.output[-3000:]
    assert f"{data}:2: 'query' must be a string" in result.stderr and f"{data}:3: not valid JSON" in result.stderr
    assert "Traceback" not in result.output and "Retry 1/" not in result.output
    store = open_store(str(tmp_path / "store"))
    assert store.versions("small/data-sft") == [] and store.versions("small/sft") == []


def test_a_new_data_version_holding_eval_questions_trains_without_them(tmp_path):
    """5 eval questions, re-cased and re-spaced, arrive in a registered data version: they are quarantined
    with the eval row each matches, and SFT trains on the rest."""
    splits = reverse_task.splits()
    copied = [chat_row("  ".join(e["question"].upper().split()), e["answer"]) for e in splits["eval"][10:15]]
    rows = splits["sft"][:200] + copied
    data = tmp_path / "new.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    store_dir = tmp_path / "store"
    assert run_cli("data", "add", "small/chat", str(data), "--store", str(store_dir)).code == 0
    spec = write_spec(tmp_path / "c.yaml", "name: small\nmodel: builtin://tiny-qwen2\n"
                                           "data: {sft: store://small/chat, eval: builtin://reverse/eval}\n"
                                           f"store: {store_dir}\nstages: {{sft: {{tuner: full, epochs: 1}}}}\n")
    result = run_cli("run", str(spec))
    assert result.code == 0, result.output[-3000:]
    assert "contaminated=5" in result.stdout and result.status()["train_sft"] == "ran"
    store = open_store(str(store_dir))
    converted = store.get_dir(store.ref("small/data-sft"))
    assert len((converted / "data.jsonl").read_text().splitlines()) == 200
    quarantined = [json.loads(line) for line in (converted / "quarantine.jsonl").read_text().splitlines()]
    assert [(q["line"], q["matches"]["set"], q["matches"]["text"]) for q in quarantined] == \
        [(201 + i, "qa", e["question"]) for i, e in enumerate(splits["eval"][10:15])]
    assert store.versions("small/sft")


def chat_row(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}
