"""Converting and tokenizing chat data, measured beside the plain `datasets` way in the same run.

    .venv/bin/python benchmarks/data.py [--rows 200000] [--contamination]

Writes ROWS rows of mixed-length chat data (ShareGPT rows of 1-4 turns, answers from a few words to a
few thousand characters) as JSON lines, then, each in a fresh process so peak memory is its own:
  - alignflow: convert (detect, check, dedupe, canonical JSONL) + tokenize with loss labels (tasks/tokens.py)
  - baseline: datasets.load_dataset("json") + .map(apply_chat_template(tokenize=True)), no checks, no masks
and alignflow again on a quarter of the rows: streaming means its peak memory must not grow with the file.
Prints rows per second and peak RSS for each, and the ratios.

With --contamination: alignflow with the convert stage's contamination check against 2,000 evaluation
questions (5 to 40 words; 50 of them copied, re-cased and re-spaced, into the training rows), against
alignflow without it, on the same file. Target: at most 1.3x the time.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = "the model answers each question with care and a short explanation of why it holds".split()


def write_rows(path: Path, rows: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(rows):
            turns = []
            for _ in range(rng.choice((1, 1, 2, 3, 4))):
                question = f"question {i}: " + " ".join(rng.choices(WORDS, k=rng.randint(3, 40)))
                answer = " ".join(rng.choices(WORDS, k=int(rng.lognormvariate(3.5, 1.0)) + 1))
                turns += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
            f.write(json.dumps({"conversations": turns}) + "\n")


def tokenizer(folder: Path):
    """The built-in tokenizer with its template's `{% generation %}` markers removed, as most hub templates
    are: alignflow then works the assistant spans out itself (the slower of its two ways)."""
    from transformers import AutoTokenizer

    from tasks.builtin import tiny_model

    if not (folder / "tokenizer_config.json").exists():
        tiny_model.build_tokenizer(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.chat_template = tiny_model.CHAT_TEMPLATE.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    return tok


EVAL_QUESTIONS, PLANTED = 2000, 50


def write_eval(data: Path, evals: Path, seed: int = 1) -> None:
    """EVAL_QUESTIONS evaluation questions (as an eval split's canonical rows) in `evals`, and PLANTED of
    them appended to `data` as training rows, re-cased and re-spaced."""
    rng = random.Random(seed)
    questions = [f"eval {i}: " + " ".join(rng.choices(WORDS, k=rng.randint(5, 40))) for i in range(EVAL_QUESTIONS)]
    evals.write_text("".join(json.dumps({"question": q, "answer": "x"}) + "\n" for q in questions))
    with open(data, "a", encoding="utf-8") as f:
        for q in questions[::EVAL_QUESTIONS // PLANTED]:
            turns = [{"from": "human", "value": "  ".join(q.upper().split())}, {"from": "gpt", "value": "x"}]
            f.write(json.dumps({"conversations": turns}) + "\n")


def run_alignflow(data: Path, work: Path, tok, evals: Path | None = None) -> int:
    from tasks.contamination import EvalSets
    from tasks.convert import ConvertRules, DataSource, convert_sources
    from tasks.token_settings import TokenizeConfig
    from tasks.tokens import tokenize_file

    index = EvalSets().index(evals.parent, work / "sets") if evals else None
    report = convert_sources("sft", [DataSource(source=str(data))], ConvertRules(), work / "converted",
                             work / "scratch", evals=index)
    assert report.total("contaminated") == (PLANTED if evals else 0)
    counts = tokenize_file(tok, work / "converted" / "data.jsonl", work / "tokens.parquet",
                           TokenizeConfig(max_length=4096), work / "quarantine.jsonl")
    assert counts["rows"] == report.total("rows")
    return counts["rows"]


def run_baseline(data: Path, work: Path, tok) -> int:
    from datasets import load_dataset

    roles = {"human": "user", "gpt": "assistant"}

    def encode(row):
        messages = [{"role": roles[t["from"]], "content": t["value"]} for t in row["conversations"]]
        return {"input_ids": tok.apply_chat_template(messages, tokenize=True, return_dict=False)}

    dataset = load_dataset("json", data_files=str(data), split="train", cache_dir=str(work / "hf-cache"))
    dataset = dataset.map(encode, remove_columns=["conversations"])
    return len(dataset)


def child(which: str, data: str, work: str) -> None:
    """In a fresh process: run one side and print rows, seconds and peak RSS as JSON. Imports and loading
    the tokenizer are not timed."""
    import datasets  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    import tasks.convert  # noqa: F401
    import tasks.tokens  # noqa: F401

    tok = tokenizer(Path(work) / "tok")
    started = time.perf_counter()
    if which == "checked":
        rows = run_alignflow(Path(data), Path(work), tok, Path(data).parent / "eval" / "data.jsonl")
    else:
        rows = (run_alignflow if which == "alignflow" else run_baseline)(Path(data), Path(work), tok)
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rows": rows, "seconds": seconds, "peak_mb": peak_mb}))


def measure(which: str, data: Path, work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    out = subprocess.run([sys.executable, __file__, "--child", which, str(data), str(work)], capture_output=True,
                         text=True, cwd=Path(__file__).resolve().parent.parent)
    if out.returncode != 0:
        sys.exit(f"{which} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result | {"rows_per_s": result["rows"] / result["seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--contamination", action="store_true", help="alignflow with the contamination check "
                                                                      "against alignflow without it")
    parser.add_argument("--child", nargs=3, metavar=("WHICH", "DATA", "WORK"))
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    if args.contamination:
        return contamination(args.rows)
    with tempfile.TemporaryDirectory(prefix="alignflow-bench-data-") as tmp:
        tmp = Path(tmp)
        full, quarter = tmp / "chat.jsonl", tmp / "chat-quarter.jsonl"
        write_rows(full, args.rows)
        write_rows(quarter, args.rows // 4)
        print(f"{args.rows} rows, {full.stat().st_size / 1e6:.0f} MB of JSON lines")
        ours = measure("alignflow", full, tmp / "ours")
        base = measure("baseline", full, tmp / "base")
        small = measure("alignflow", quarter, tmp / "ours-quarter")
    for name, r in (("alignflow convert+tokenize", ours), ("datasets load+map", base),
                    (f"alignflow, {args.rows // 4} rows", small)):
        print(f"{name:<28} {r['rows']:>7} rows  {r['seconds']:7.1f} s  {r['rows_per_s']:8.0f} rows/s  "
              f"peak {r['peak_mb']:6.0f} MB")
    print(f"speed alignflow / baseline: {ours['rows_per_s'] / base['rows_per_s']:.2f} (target >= 1)")
    print(f"peak memory alignflow / baseline: {ours['peak_mb'] / base['peak_mb']:.2f}")
    print(f"peak memory alignflow, 4x the rows: {ours['peak_mb'] / small['peak_mb']:.2f} (flat: about 1)")


def contamination(rows: int) -> None:
    with tempfile.TemporaryDirectory(prefix="alignflow-bench-contamination-") as tmp:
        tmp = Path(tmp)
        data = tmp / "chat.jsonl"
        write_rows(data, rows)
        (tmp / "eval").mkdir()
        write_eval(data, tmp / "eval" / "data.jsonl")
        print(f"{rows + PLANTED} rows, {data.stat().st_size / 1e6:.0f} MB; {EVAL_QUESTIONS} evaluation questions, "
              f"{PLANTED} of them planted")
        off = measure("alignflow", data, tmp / "off")
        on = measure("checked", data, tmp / "on")
    for name, r in (("alignflow, no check", off), ("alignflow, checked", on)):
        print(f"{name:<28} {r['rows']:>7} rows  {r['seconds']:7.1f} s  {r['rows_per_s']:8.0f} rows/s  "
              f"peak {r['peak_mb']:6.0f} MB")
    print(f"time checked / unchecked: {on['seconds'] / off['seconds']:.2f} (target <= 1.3)")


if __name__ == "__main__":
    main()
