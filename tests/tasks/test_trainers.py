"""Every tuner and preference method trains a few steps on the tiny model, and what it saves loads back
and answers. Trainer children run as in the flow (`accelerate launch`), each on a few rows."""

from __future__ import annotations

import json

import pytest

from alignflow.errors import ConfigError
from tasks import trainer
from tasks.builtin import reverse_task
from tasks.cpo import CPOStage
from tasks.download import fetch_model
from tasks.dpo import DPOStage
from tasks.kto import KTOStage
from tasks.orpo import ORPOStage
from tasks.sft import SFTStage

pytestmark = pytest.mark.slow
FEW = {"max_steps": 3, "logging_steps": 1, "save_strategy": "no"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return fetch_model("builtin://tiny-qwen2", tmp_path_factory.mktemp("model") / "model")


def rows_file(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run(tmp_path, tiny, module, config, data) -> tuple[dict, object]:
    workdir = tmp_path / "work"
    job = {"config": config.model_dump(), "model_chain": [str(tiny)], "data": str(data),
           "output": str(workdir / "output")}
    return trainer.launch(f"train_{module}", module, job, workdir), workdir / "output"


def answers(chain) -> str:
    """Greedy tokens from the saved result: it loads back (an adapter onto its base) and generates."""
    from tasks.models import load_causal_lm, load_tokenizer

    tokenizer, model = load_tokenizer(chain), load_causal_lm(chain)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "reverse: a b c"}], tokenize=False,
                                           add_generation_prompt=True)
    out = model.generate(**tokenizer(prompt, return_tensors="pt"), max_new_tokens=4, do_sample=False)
    return tokenizer.decode(out[0])


@pytest.mark.parametrize("tuner,lora", [("full", {}), ("lora", {"use_dora": True, "use_rslora": True}),
                                        ("qlora", {})])
def test_each_sft_tuner_trains_and_its_output_loads_back(tmp_path, tiny, tuner, lora):
    from transformers import AutoTokenizer

    from tasks.tokens import tokenize_file

    sft = SFTStage(tuner=tuner, lora=lora, batch_size=4, max_length=64, trainer_args=FEW,
                   report_to=["tensorboard"] if tuner == "lora" else [])
    rows = rows_file(tmp_path / "sft.jsonl", reverse_task.splits()["sft"][:32])
    tokens = tmp_path / "tokens.parquet"
    tokenize_file(AutoTokenizer.from_pretrained(tiny), rows, tokens, sft.tokenize_config("fail"),
                  tmp_path / "quarantine.jsonl")
    metrics, out = run(tmp_path, tiny, "sft", sft, tokens)
    assert metrics["steps"] == 3 and metrics["train_loss"] > 0
    if tuner == "full":
        assert (out / "model.safetensors").exists()
        chain = [out]
    else:
        adapter = json.loads((out / "adapter_config.json").read_text())
        assert adapter["use_dora"] is (tuner == "lora") and adapter["use_rslora"] is (tuner == "lora")
        chain = [tiny, out]
    if tuner == "lora":  # report_to: tensorboard keeps its event file in the artifact
        assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert "reverse: a b c" in answers(chain)


PREFERENCE = [
    ("dpo", DPOStage(loss_type=["ipo", "sft"], loss_weights=[1.0, 0.5])),  # IPO, mixed with an SFT term (MPO)
    ("kto", KTOStage()),
    ("orpo", ORPOStage()),
    ("cpo", CPOStage(loss_type="simpo", cpo_alpha=0.0, beta=2.0)),
]


@pytest.mark.parametrize("module,config", PREFERENCE, ids=["dpo-ipo-mixture", "kto", "orpo", "simpo"])
def test_each_preference_method_trains_an_adapter_that_loads_back(tmp_path, tiny, module, config):
    config = config.model_copy(update={"batch_size": 4, "max_length": 64, "trainer_args": FEW})
    pairs = reverse_task.splits()["preference"][:16]
    if module == "kto":  # unpaired feedback as KTO users have it, beside pairs
        pairs += [{"prompt": p["prompt"], "completion": p["rejected"], "label": False} for p in pairs[:4]]
    metrics, out = run(tmp_path, tiny, module, config, rows_file(tmp_path / "pref.jsonl", pairs))
    assert metrics["steps"] == 3
    if module != "kto":
        assert "rewards_accuracies" in metrics
    assert "reverse: a b c" in answers([tiny, out])


def test_pair_methods_refuse_unpaired_rows_and_name_kto(tmp_path):
    rows = [{"prompt": [{"role": "user", "content": "hi"}], "completion": [{"role": "assistant", "content": "yo"}],
             "label": True}] * 8
    with pytest.raises(ConfigError, match="unpaired rows .* use stages.kto"):
        trainer.preference_pairs({"data": str(rows_file(tmp_path / "pref.jsonl", rows))}, "dpo")


def test_two_process_deepspeed_zero2_sft_trains_and_its_model_loads_and_serves(tmp_path, tiny):
    """Two trainer processes on one CPU host, ZeRO-2 over gloo: optimizer state and gradients are sharded,
    the saved model is whole, loads like any other and vLLM serves it (DeepSpeed's CPU ops are built once,
    then cached)."""
    from transformers import AutoTokenizer

    from tasks.tokens import tokenize_file

    sft = SFTStage(tuner="full", batch_size=4, max_length=64, trainer_args=FEW,
                   resources={"processes": 2, "deepspeed": "zero2"})
    rows = rows_file(tmp_path / "sft.jsonl", reverse_task.splits()["sft"][:32])
    tokens = tmp_path / "tokens.parquet"
    tokenize_file(AutoTokenizer.from_pretrained(tiny), rows, tokens, sft.tokenize_config("fail"),
                  tmp_path / "quarantine.jsonl")
    metrics, out = run(tmp_path, tiny, "sft", sft, tokens)
    assert metrics["steps"] == 3 and metrics["processes"] == 2 and metrics["zero_stage"] == 2
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["model.safetensors"]
    assert "reverse: a b c" in answers([out])
    serve(tmp_path, out)


def serve(tmp_path, folder) -> None:
    """Publish `folder` as a model artifact, serve it with vLLM as the deploy stage does, ask it once."""
    import logging

    from serving.lifecycle import smoke_test, stop_server
    from serving.rollout import start_server
    from storage import open_store
    from tasks.deploy import DeployStage
    from tasks.stage import RunContext

    run = RunContext("zero2", str(tmp_path / "store"), str(tmp_path / "cache"))
    ref = open_store(run.store, run.cache_dir).put_dir("zero2/sft", "model", folder)
    state = start_server(run, ref, DeployStage(max_model_len=256), logging.getLogger("test.serve"))
    try:
        reply = smoke_test(state.endpoint, "zero2", "reverse: a b c")
        assert reply["finish_reason"] in ("stop", "length")
    finally:
        stop_server(state)


def test_packing_keeps_each_row_s_loss_mask_with_its_tokens_and_trains(tmp_path, tiny):
    """Packed sequences are whole rows side by side: each row's labels travel with its tokens (the loss stays
    on the assistant's answers), and a packed batch has no padding to compute."""
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    from tasks.sft import sft_trainer
    from tasks.tokens import tokenize_file

    sft = SFTStage(tuner="full", batch_size=4, max_length=64, packing=True, trainer_args=FEW)
    rows = rows_file(tmp_path / "sft.jsonl", reverse_task.splits()["sft"][:48])
    tokens = tmp_path / "tokens.parquet"
    tokenize_file(AutoTokenizer.from_pretrained(tiny), rows, tokens, sft.tokenize_config("fail"),
                  tmp_path / "quarantine.jsonl")
    original = {(tuple(r["input_ids"]), tuple(r["labels"])) for r in pq.read_table(tokens).to_pylist()}
    job = {"config": sft.model_dump(), "model_chain": [str(tiny)], "data": str(tokens),
           "output": str(tmp_path / "out"), "workdir": str(tmp_path)}
    packed = sft_trainer(job)[0].train_dataset
    assert len(packed) < len(original)  # several rows per sequence
    unpacked = set()
    for row in packed:
        start = 0
        for length in row["seq_lengths"]:
            unpacked.add((tuple(row["input_ids"][start:start + length]), tuple(row["labels"][start:start + length])))
            start += length
    assert unpacked == original
    metrics, _ = run(tmp_path, tiny, "sft", sft, tokens)
    assert metrics["steps"] == 3 and metrics["train_loss"] > 0
