"""Checked before any work: what a spec names is there (model, data, store, serve env), every problem in one
message, exit 2, nothing written; `alignflow plan` makes the same checks and writes nothing either."""

from __future__ import annotations

import dataclasses
import json

import pytest

from alignflow.errors import ConfigError
from alignflow.processes import free_port
from flows.preflight import source_problems, store_problems
from tasks.trl_args import config_fields, unknown_args
from tests.conftest import run_cli, write_spec

FOUR = """name: four
model: {tmp}/no-such-model
data: {{sft: {tmp}/no-such-data.jsonl}}
stages: {{sft: {{trainer_args: {{max_step: 10}}}}}}
store: {store}
"""


@pytest.mark.parametrize("command", ["run", "plan"])
def test_four_problems_are_listed_together_and_nothing_is_written(command, tmp_path):
    """A missing data file, a missing model folder, a bad trainer_args key and an unreachable S3 store."""
    closed = f"http://admin:hunter2@127.0.0.1:{free_port()}"  # nothing listens there
    spec = write_spec(tmp_path / "four.yaml", FOUR.format(tmp=tmp_path, store="s3://runs/four"))
    result = run_cli(command, str(spec), env={"AWS_ENDPOINT_URL": closed, "AWS_ACCESS_KEY_ID": "k",
                                              "AWS_SECRET_ACCESS_KEY": "s"})
    assert result.code == 2, result.output
    assert "has 4 problems" in result.stderr and "Traceback" not in result.output
    for expected in ("no-such-model: no such file or folder", "no-such-data.jsonl: no such file or folder",
                     "trainer_args.max_step: TRL's SFTConfig has no argument 'max_step'; did you mean 'max_steps'?",
                     "store s3://runs/four: cannot reach http://***@127.0.0.1"):
        assert expected in result.stderr, result.stderr
    assert "hunter2" not in result.output
    print(f"{command}: {result.seconds:.2f}s")

    local = write_spec(tmp_path / "local.yaml", FOUR.format(tmp=tmp_path, store=tmp_path / "store"))
    assert run_cli(command, str(local)).code == 2
    assert not (tmp_path / "store").exists()


def test_a_run_stopped_by_bad_rows_leaves_no_store_behind(tmp_path):
    (tmp_path / "chat.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    spec = write_spec(tmp_path / "spec.yaml", f"name: bad\nmodel: builtin://tiny-qwen2\n"
                                              f"data: {{sft: {tmp_path}/chat.jsonl}}\nstages: {{sft: {{}}}}\n"
                                              f"store: {tmp_path}/store\n")
    result = run_cli("run", str(spec))
    assert result.code == 2 and "chat.jsonl:1" in result.stderr, result.output[-3000:]
    assert not (tmp_path / "store").exists()  # no base model, no pickled exception under prefect-results/


def test_plan_of_a_new_pipeline_runs_everything_and_creates_nothing(tmp_path):
    spec = write_spec(tmp_path / "spec.yaml", "name: fresh\nmodel: builtin://tiny-qwen2\n"
                                              "data: {sft: builtin://reverse/sft, preference: builtin://reverse/preference}\n"
                                              "stages: {sft: {}, dpo: {}}\n"
                                              f"store: {tmp_path}/store\n")
    result = run_cli("plan", str(spec), "--json", str(tmp_path / "plan.json"))
    assert result.code == 0, result.output
    rows = json.loads((tmp_path / "plan.json").read_text())["stages"]
    assert [r["stage"] for r in rows] == ["convert_dataset[sft]", "convert_dataset[preference]", "download_model",
                                          "tokenize", "train_sft", "train_dpo", "merge"]
    assert {r["plan"] for r in rows} == {"would run"}
    assert rows[4]["cache key"] == "(after download_model)" and rows[0]["cache key"].startswith("convert_dataset-")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json", "spec.yaml"]
    # under it, each stage that loads a model with its peak memory, part by part (tasks/memory.py)
    table = result.stdout.split("memory at each stage's peak", 1)[1]
    assert "332.8K parameters" in table and "CPU RAM" in table
    assert max(len(line) for line in table.splitlines()) <= 110, table
    assert [line.split()[0] for line in table.splitlines() if line.startswith(("train_", "merge"))] == \
        ["train_sft", "train_dpo", "merge"]
    assert rows[4]["memory"]["process"] == "trainer process" and rows[4]["memory"]["peak"] > 0
    assert "memory" not in rows[3]  # tokenize loads no model


def test_a_store_that_is_a_file_or_below_one_is_refused(tmp_path):
    file = tmp_path / "file"
    file.write_text("")
    assert store_problems(str(file), None) == [f"store {file}: is a file, not a folder; pass a folder (it is "
                                                "created) or s3://bucket/prefix"]
    assert "is a file, so the store's folder cannot be created there" in store_problems(str(file / "x" / "y"), None)[0]
    assert store_problems(str(tmp_path / "new" / "store"), None) == []
    assert store_problems("s3://", None)[0].startswith("store 's3://': expected s3://bucket[/prefix]")
    assert not (tmp_path / "new").exists()


def test_a_registered_source_that_is_not_registered_says_how_to_register_it(tmp_path):
    (problem,) = source_problems("store://demo/extra@latest", str(tmp_path / "store"))
    assert "demo/extra has no versions" in problem and "alignflow data add demo/extra" in problem
    assert source_problems("store://Demo/x\n", str(tmp_path))[0].startswith("store://Demo/x\n: 'Demo/x\\n' is not")


def test_an_unreachable_s3_data_source_is_named(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    (problem,) = source_problems("s3://bucket/incoming/", None)
    assert problem.startswith("list dataset s3://bucket/incoming/: cannot reach http://127.0.0.1:")


def test_trainer_args_are_read_from_trl_s_own_dataclasses():
    """Every trainer stage's TRL config, read from source, takes exactly the arguments the imported class
    takes (its dataclass fields with init, inherited ones included)."""
    import importlib

    from flows.spec import Stages

    configs = [field.annotation for field in Stages.model_fields.values()]
    dotted = {c.trl_config for a in configs for c in getattr(a, "__args__", (a,)) if getattr(c, "trl_config", None)}
    assert len(dotted) == 7  # sft, reward, dpo, kto, orpo, cpo, grpo
    for path in dotted:
        module, _, name = path.rpartition(".")
        real = {f.name for f in dataclasses.fields(getattr(importlib.import_module(module), name)) if f.init}
        assert config_fields(path) == real, path
    assert unknown_args("trl.trainer.sft_config.SFTConfig", {"max_steps": 1, "packing": True}, "x") == []
    assert unknown_args("no.such.Module", {"anything": 1}, "x") == []  # cannot tell: the trainer decides


def test_plan_of_a_data_only_pipeline_checks_training_data_after_the_eval_split(tmp_path):
    spec = write_spec(tmp_path / "spec.yaml", "name: data-only\nmodel: builtin://tiny-qwen2\nstages: {}\n"
                                              "data: {sft: builtin://reverse/sft, eval: builtin://reverse/eval}\n"
                                              f"store: {tmp_path}/store\n")
    result = run_cli("plan", str(spec))
    assert result.code == 0, result.output
    assert "memory: no stage of this spec loads the model" in result.stdout
    # the sft split is checked against the eval split's rows (contamination): its key waits for them
    assert "convert_dataset[sft]   would run  (after convert_dataset[eval])" in result.stdout


def test_a_judge_that_is_not_there_is_named_before_any_work(tmp_path):
    from flows.spec import parse_spec

    raw = {"name": "p", "model": "builtin://tiny-qwen2", "store": str(tmp_path / "store"),
           "data": {"sft": "builtin://reverse/sft", "eval": "builtin://reverse/eval"},
           "stages": {"sft": {}, "evaluate": {"engine": "llm_ckpt"},
                      "compare": {"judge": str(tmp_path / "no-such-judge")}}}
    with pytest.raises(ConfigError) as error:
        parse_spec(raw, before_work=True)
    assert any(p.startswith("stages.compare.judge: ") and "no-such-judge" in p for p in error.value.problems)
    raw["stages"]["compare"] = {"judge": "gpt-4o", "url": "https://api.example.com/v1"}  # someone else serves it
    assert parse_spec(raw, before_work=True).stages.compare.url
