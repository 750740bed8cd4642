"""Several evaluation sets in one spec, scored by real EvalScope: the QA split, a multiple-choice set in the
CEval layout, a built-in benchmark read from a pre-filled ModelScope cache, one that is not cached and is
skipped, and one that is not cached and fails at once naming what to pre-fetch."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storage import open_store
from tests.conftest import run_cli, write_spec

pytestmark = pytest.mark.slow

SPEC = """
name: evalsets
model: builtin://tiny-qwen2
data: {{eval: builtin://reverse/eval}}
stages:
  evaluate:
    engine: llm_ckpt
    limit: 10
    max_tokens: 8
    primary: {primary}
    sets: {sets}
store: {store}
"""
GSM8K_CARD = """---
configs:
- config_name: main
  data_files:
  - split: train
    path: main/train-*
  - split: test
    path: main/test-*
---
"""


def prefilled_gsm8k(cache):
    """gsm8k as ModelScope caches it (AI-ModelScope/gsm8k, subset main), with a dozen questions."""
    snapshot = cache / "datasets" / "AI-ModelScope--gsm8k" / "snapshots" / "master"
    (snapshot / "main").mkdir(parents=True)
    rows = [{"question": f"What is {a} plus {b}?", "answer": f"{a} plus {b} is {a + b}.\n#### {a + b}"}
            for a in range(1, 5) for b in range(1, 4)]
    for split in ("train", "test"):
        pq.write_table(pa.Table.from_pylist(rows), snapshot / "main" / f"{split}-00000-of-00001.parquet")
    (snapshot / "README.md").write_text(GSM8K_CARD)
    return cache


def spec(tmp_path, sets: list[dict], primary: str = "qa"):
    return write_spec(tmp_path / "spec.yaml", SPEC.format(sets=json.dumps(sets), primary=primary,
                                                          store=tmp_path / "store"))


def test_qa_mcq_and_builtin_sets_are_scored_side_by_side_and_uncached_ones_skipped(tmp_path):
    cache = prefilled_gsm8k(tmp_path / "modelscope")
    sets = [{"name": "mcq", "kind": "mcq", "path": "builtin://reverse/mcq", "subsets": ["reverse_en"], "limit": 8,
             "prompt_template": "{question}\n{choices}\nANSWER:"},
            {"name": "gsm8k", "kind": "builtin", "benchmark": "gsm8k", "limit": 5, "few_shot": 0},
            {"name": "cmmlu", "kind": "builtin", "benchmark": "cmmlu", "on_unavailable": "skip"}]
    result = run_cli("run", str(spec(tmp_path, sets, primary="mcq")), env={"MODELSCOPE_CACHE": str(cache)})
    assert result.code == 0, result.output[-4000:]
    store = open_store(str(tmp_path / "store"))
    ref = store.ref("evalsets/eval-candidate")
    report = json.loads((store.get_dir(ref) / "report.json").read_text())
    assert set(report["sets"]) == {"qa", "mcq", "gsm8k"} and report["skipped"] == ["cmmlu"]
    assert report["sets"]["qa"]["metric"] == "exact_match" and report["sets"]["qa"]["samples"] == 10
    assert report["sets"]["mcq"]["metric"] == "accuracy" and report["sets"]["mcq"]["samples"] == 8
    assert report["sets"]["gsm8k"]["samples"] == 5
    assert ref.metrics["primary"] == "mcq" and ref.metrics["score"] == report["sets"]["mcq"]["score"]
    assert "skipped cmmlu" in result.output
    assert "eval mcq (accuracy, the gate's)" in result.stdout and "eval gsm8k:" in result.stdout


def test_an_uncached_builtin_benchmark_fails_at_once_naming_what_to_prefetch(tmp_path):
    sets = [{"name": "gsm8k", "kind": "builtin", "benchmark": "gsm8k"}]
    result = run_cli("run", str(spec(tmp_path, sets)), env={"MODELSCOPE_CACHE": str(tmp_path / "empty")})
    assert result.code != 0
    assert "modelscope download --dataset AI-ModelScope/gsm8k" in result.stderr, result.output[-3000:]
    assert str(tmp_path / "empty") in result.stderr and "on_unavailable: skip" in result.stderr
    assert "evalsets/eval-candidate" not in open_store(str(tmp_path / "store")).names()


def test_a_set_naming_no_folder_or_an_unknown_primary_is_refused_before_any_work(tmp_path):
    sets = [{"name": "mine", "kind": "mcq", "path": str(tmp_path / "absent")}]
    result = run_cli("run", str(spec(tmp_path, sets, primary="mein")))
    assert result.code != 0
    assert f"stages.evaluate.sets[mine].path: {tmp_path / 'absent'} is not a folder" in result.stderr
    assert "stages.evaluate.primary: 'mein' is not a set" in result.stderr
    assert not (tmp_path / "store").exists()
