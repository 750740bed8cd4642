"""Training through alignflow, measured beside plain TRL in the same run.

    .venv/bin/python benchmarks/training.py [--epochs 12] [--rows 3000]

1. Orchestration overhead: the `train_sft` stage as a flow runs it (store download of its inputs, a child
   trainer through `accelerate launch`, progress lines, checkpoints copied to the store, the output
   published) against a plain TRL script launched as TRL's docs do (`accelerate launch plain_sft.py`: load
   the same token file, SFTTrainer with the same settings and checkpoint cadence, train, save), each from a
   cold process, same data and steps. (Both through accelerate: it sets the CPU thread count, which alone
   moves a CPU run by 20%.)
   Target: wall-time ratio <= 1.05.
2. Packing vs padding on variable-length chat rows (1-4 turns, answers of a few to a few hundred tokens):
   the same SFT with `packing: true` and without, training tokens (non-padding) per second. Target >= 1.5x.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PLAIN = '''
import sys
from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

model_dir, data, out, epochs = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
tokenizer = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir)
args = SFTConfig(output_dir=out + "/checkpoints", num_train_epochs=epochs, learning_rate=3e-3,
                 per_device_train_batch_size=16, max_length=64, use_cpu=True, bf16=False, gradient_checkpointing=False,
                 lr_scheduler_type="cosine",
                 warmup_steps=0.05, logging_steps=0.05, save_strategy="steps", save_steps=0.2, save_total_limit=2,
                 report_to=[], disable_tqdm=True, seed=42, dataloader_num_workers=0)
trainer = SFTTrainer(model=model, args=args, train_dataset=load_dataset("parquet", data_files=data, split="train"),
                     processing_class=tokenizer)
trainer.train()
trainer.save_model(out + "/output")
'''
SPEC = """
name: bench
model: builtin://tiny-qwen2
data: {{sft: {rows}}}
store: {store}
stages:
  sft: {{tuner: full, epochs: {epochs}, learning_rate: 3.0e-3, batch_size: 16, max_length: 64}}
"""


def overhead(work: Path, epochs: float, rows: int) -> None:
    from storage import open_store
    from tasks.builtin import reverse_task

    work.mkdir(parents=True)
    data = work / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in reverse_task.splits()["sft"][:rows]))
    spec = work / "spec.yaml"
    spec.write_text(SPEC.format(rows=data, store=work / "store", epochs=epochs))
    summary = work / "summary.json"
    subprocess.run([str(ROOT / ".venv/bin/alignflow"), "run", str(spec), "--json", str(summary)], check=True,
                   capture_output=True, env=_env(work))
    steps = {row["stage"]: row for row in json.loads(summary.read_text())["steps"]}
    alignflow = steps["train_sft"]["seconds"]

    store = open_store(str(work / "store"), work / "cache")
    model, tokens = store.get_dir(store.ref("bench/base-model")), store.get_dir(store.ref("bench/tokens-sft"))
    (work / "plain_sft.py").write_text(PLAIN)
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--cpu",
                    "--mixed_precision", "no", "--dynamo_backend", "no", str(work / "plain_sft.py"), str(model),
                    str(tokens / "tokens.parquet"), str(work / "plain"), str(epochs)],
                   check=True, capture_output=True, env=_env(work))
    plain = time.monotonic() - started
    print(f"SFT, {rows} rows x {epochs:g} epochs ({store.ref('bench/sft').metrics['steps']} steps):")
    print(f"  alignflow train_sft stage  {alignflow:7.1f} s")
    print(f"  plain TRL script           {plain:7.1f} s")
    print(f"  ratio                      {alignflow / plain:7.3f}   (target <= 1.05)")


def chat_rows(n: int, seed: int = 0) -> list[dict]:
    """Chat rows of very different lengths, as real SFT data has: most short, a few long."""
    rng = random.Random(seed)
    letters = "abcdefgh"
    rows = []
    for _ in range(n):
        messages = []
        for _ in range(rng.choice((1, 1, 1, 2, 4))):
            words = rng.choices(letters, k=min(int(rng.lognormvariate(1.8, 0.9)) + 1, 60))
            messages += [{"role": "user", "content": "reverse: " + " ".join(words)},
                         {"role": "assistant", "content": " ".join(reversed(words))}]
        rows.append({"messages": messages})
    return rows


def packing(work: Path, rows: int) -> None:
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    from tasks import trainer
    from tasks.download import fetch_model
    from tasks.sft import SFTStage
    from tasks.tokens import tokenize_file

    work.mkdir(parents=True)
    model = fetch_model("builtin://tiny-qwen2", work / "model")
    data = work / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in chat_rows(rows)))
    results = {}
    for packed in (False, True):
        stage = SFTStage(tuner="full", epochs=1, batch_size=16, max_length=512, packing=packed,
                         trainer_args={"save_strategy": "no"})
        tokens = work / "tokens.parquet"
        tokenize_file(AutoTokenizer.from_pretrained(model), data, tokens, stage.tokenize_config("fail"),
                      work / "quarantine.jsonl")
        real_tokens = sum(len(ids) for ids in pq.read_table(tokens, columns=["input_ids"]).column(0).to_pylist())
        workdir = work / f"packing-{packed}"
        job = {"config": stage.model_dump(), "model_chain": [str(model)], "data": str(tokens),
               "output": str(workdir / "output")}
        metrics = trainer.launch("train_sft", "sft", job, workdir)
        history = json.loads((workdir / "history.json").read_text())
        runtime = next(h["train_runtime"] for h in history if "train_runtime" in h)
        results[packed] = (real_tokens / runtime, metrics["steps"], runtime)
    print(f"SFT on {rows} variable-length chat rows (max_length 512), training tokens per second:")
    for packed, (rate, steps, runtime) in results.items():
        print(f"  {'packing' if packed else 'padding'}   {rate:9.0f} tokens/s   ({steps} steps, {runtime:.1f} s)")
    print(f"  ratio     {results[True][0] / results[False][0]:9.2f}x   (target >= 1.5)")


def _env(work: Path) -> dict:
    import os

    return dict(os.environ, ALIGNFLOW_CACHE=str(work / "cache"), PREFECT_HOME=str(work / "prefect"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=12)
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--packing-rows", type=int, default=4000)
    parser.add_argument("--only", choices=("overhead", "packing"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "overhead"):
            overhead(Path(tmp) / "overhead", args.epochs, args.rows)
        if args.only in (None, "packing"):
            packing(Path(tmp) / "packing", args.packing_rows)


if __name__ == "__main__":
    main()
