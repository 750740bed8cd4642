"""Estimated vs measured peak memory per stage: tasks/memory.py against the processes that do the work.

    .venv/bin/python benchmarks/memory.py                      # the tiny model (deployments/demo.yaml)
    .venv/bin/python benchmarks/memory.py --smol /tmp/smol-hf  # and SmolLM2-135M-Instruct, a float32 folder

Each model's pipeline runs as real `alignflow run`s, one stage group more each time on the same store, so
every run's new work is one group: the trainers (each its own child process) and merge; quantize; then
evaluate, judge and deploy with vLLM. A thread follows every process of the run: the trainer children
(named by their job.json), their `accelerate launch` parent, vLLM servers (with their engine processes) and
EvalScope's child; the flow's own process does merge, quantize and judge. Measured: each process's peak
resident memory (VmHWM, read every 0.2 s while it lives); for a vLLM server, the peak of the summed PSS of
its processes (they share pages). The SmolLM2 runs train on generated rows as long as max_length, so the
estimate (made at max_length) and the run see the same shapes; the demo's rows are shorter than its
max_length, so there the estimates are upper bounds. Then train_sft's child recipe runs alone in more
shapes on the SmolLM2 run's tokens (no dropout, half the batch, gradient checkpointing, full fine-tuning),
its peak from wait4.

Prints one table: stage, process, estimate, measured, ratio (estimate / measured), and each model's part of
it on stderr as soon as that model is done; the runs' log and specs stay in the work folder. `--gpu-table`
prints docs/MEMORY.md's GPU table from the formulas alone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
ALIGNFLOW = str(Path(sys.executable).parent / "alignflow")
GIB = 2**30
SMOL_STEPS = 3  # optimizer steps per SmolLM2 trainer: the peak comes with the first


# ---- following a run's processes ---------------------------------------------------------------------

def status_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def role_of(proc, root_pid: int) -> tuple[str, str]:
    """(role, label) of a process of the run, from its command line or its nearest known ancestor's."""
    try:
        cmd = proc.cmdline()
    except Exception:  # noqa: BLE001 (a process may exit, or be another user's, at any moment)
        return "gone", ""
    text = " ".join(cmd)
    if proc.pid == root_pid:
        return "flow", "flow process"
    if "tasks.trainer" in text or "accelerate.commands.launch" in text:
        job = json.loads(Path(cmd[-1]).read_text()) if cmd[-1].endswith("job.json") else {}
        role = "trainer" if cmd[1:3] == ["-m", "tasks.trainer"] else "launcher"
        return role, job.get("stage", "?")
    if "vllm.entrypoints" in text:
        return "vllm", f"{cmd[cmd.index('--model') + 1]}@{proc.pid}"
    if "tasks.evaluate" in text:
        return "evalscope", "evaluate"
    try:
        parent = proc.parent()
    except Exception:  # noqa: BLE001 (likewise)
        return "other", ""
    if parent is None or parent.pid == root_pid:
        return "other", text[:60]
    return role_of(parent, root_pid)


class Watch(threading.Thread):
    """Every 0.2 s: each process's VmHWM; every 1 s: each vLLM server's summed PSS, and everything serving
    holds at once (every server's PSS and EvalScope's child)."""

    def __init__(self, root_pid: int):
        super().__init__(daemon=True)
        self.root_pid, self.stop = root_pid, threading.Event()
        self.peaks: dict[int, dict] = {}  # pid -> {role, label, hwm}
        self.vllm_pss: dict[str, int] = {}  # "model folder@server pid" -> peak summed PSS (bytes)
        self.serving_total = 0  # the peak of all servers' PSS plus EvalScope's child's RSS, at one moment

    def run(self) -> None:
        import psutil

        root, tick = psutil.Process(self.root_pid), 0
        while not self.stop.is_set():
            try:
                procs = [root] + root.children(recursive=True)
            except psutil.NoSuchProcess:
                break
            servers: dict[str, int] = {}
            evalscope = 0
            for proc in procs:
                seen = self.peaks.get(proc.pid) or dict(zip(("role", "label"), role_of(proc, self.root_pid)))
                seen["hwm"] = max(seen.get("hwm", 0), status_kib(proc.pid, "VmHWM") * 1024)
                self.peaks[proc.pid] = seen
                if seen["role"] == "evalscope":
                    evalscope += status_kib(proc.pid, "VmRSS") * 1024
                if seen["role"] == "vllm" and tick % 5 == 0:
                    try:
                        pss = proc.memory_full_info().pss
                    except Exception:  # noqa: BLE001 (likewise)
                        pss = 0
                    servers[seen["label"]] = servers.get(seen["label"], 0) + pss
            for server, pss in servers.items():
                self.vllm_pss[server] = max(self.vllm_pss.get(server, 0), pss)
            if servers:
                self.serving_total = max(self.serving_total, sum(servers.values()) + evalscope)
            tick += 1
            time.sleep(0.2)


def run_measured(args: list[str], env: dict, log: Path) -> Watch:
    with open(log, "a") as out:
        out.write(f"\n$ alignflow {' '.join(args)}\n")
        out.flush()
        proc = subprocess.Popen([ALIGNFLOW, *args], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        watch = Watch(proc.pid)
        watch.start()
        code = proc.wait()
        watch.stop.set()
        watch.join()
    if code != 0:
        raise SystemExit(f"alignflow {' '.join(args)} failed with exit code {code}; see {log}")
    return watch


# ---- the two models' pipelines --------------------------------------------------------------------------

def steps_for(spec_path: Path) -> list[tuple[str, list[str]]]:
    """(what is new in this run, --skip flags): trainers and merge; + quantize; + evaluate, judge, deploy."""
    serving = ["--skip", "evaluate", "--skip", "gate", "--skip", "deploy"]
    return [("trainers, merge", ["--skip", "quantize", *serving]), ("quantize", serving), ("serving", [])]


def smol_spec(folder: Path, data: Path, store: Path) -> str:
    limit = {"trainer_args": {"max_steps": SMOL_STEPS}}
    stages = {
        "sft": {"tuner": "lora", "batch_size": 8, "max_length": 256, **limit},
        "reward": {"batch_size": 4, "max_length": 256, **limit},
        "dpo": {"tuner": "lora", "batch_size": 4, "max_length": 256, **limit},
        "quantize": {"method": "w8a8", "calibration_samples": 32, "max_length": 256},
        "evaluate": {"metric": "rouge", "max_tokens": 16, "batch_size": 8, "limit": 8},
        "judge": {"prompts": 16, "max_tokens": 16, "batch_size": 8},
        "deploy": {"host": "127.0.0.1", "port": 0, "max_model_len": 1024, "load_test": None},
    }
    return json.dumps({"name": "smol", "model": str(folder), "store": str(store),
                       "data": {"sft": str(data / "sft.jsonl"), "preference": str(data / "preference.jsonl"),
                                "eval": str(data / "eval.jsonl")}, "stages": stages}, indent=1)


def smol_data(folder: Path, out: Path, max_length: int = 256) -> Path:
    """Rows whose rendered length is just under max_length: every batch has the shapes the estimate assumes
    (the reward trainer drops longer pairs, so preference rows must fit rather than be cut)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    words = "the quick brown fox jumps over a lazy dog while seven tired owls watch from an old oak".split()

    def text(n: int, shift: int = 0) -> str:
        return " ".join(words[(k + shift) % len(words)] for k in range(n))

    def length(messages: list[dict]) -> int:
        return len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])

    def fill(prompt: list[dict], budget: int, shift: int) -> str:
        n = budget
        while n > 1 and length(prompt + [{"role": "assistant", "content": text(n, shift)}]) > budget:
            n -= max(1, (length(prompt + [{"role": "assistant", "content": text(n, shift)}]) - budget) // 2)
        return text(n, shift)

    out.mkdir(parents=True, exist_ok=True)
    rows = {"sft": [], "preference": [], "eval": []}
    for k in range(64):
        user = [{"role": "user", "content": f"question {k}: describe the scene"}]
        rows["sft"].append({"messages": user + [{"role": "assistant", "content": text(2 * max_length)}]})
        chosen, rejected = fill(user, max_length - 2, 0), fill(user, max_length - 2, 5)
        rows["preference"].append({"prompt": user, "chosen": [{"role": "assistant", "content": chosen}],
                                   "rejected": [{"role": "assistant", "content": rejected}]})
        rows["eval"].append({"question": f"question {k}: " + text(max_length // 2), "answer": "the quick"})
    for split, items in rows.items():
        (out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    return out


# ---- estimate vs measured --------------------------------------------------------------------------------

def estimates_for(spec_file: Path) -> dict[str, object]:
    from flows.spec import load_spec
    from tasks import memory

    spec = load_spec(spec_file)
    shape = memory.model_shape(spec.model, getattr(spec, "model_dtype", "float32"))
    found = {"cpu": memory.Device("cpu", "CPU RAM", 0, 0)}
    return {"__shape__": shape, **{e.stage: e for e in memory.estimates(spec, shape, found)}}


def compare(model: str, watches: dict[str, Watch], estimates: dict) -> list[dict]:
    """One row per measured stage: the estimate of its process's peak against the measured peak."""
    rows = []
    trainers = [p for w in watches.values() for p in w.peaks.values() if p["role"] == "trainer"]
    for p in trainers:
        rows.append(row(model, p["label"], "trainer process", estimates[p["label"]].peak, p["hwm"]))
    launchers = [p["hwm"] for w in watches.values() for p in w.peaks.values() if p["role"] == "launcher"]
    if launchers:
        from tasks.memory import OVERHEAD

        rows.append(row(model, "(launcher)", "accelerate launch", OVERHEAD["launcher"], max(launchers)))
    for group, stage in (("trainers, merge", "merge"), ("quantize", "quantize"), ("serving", "judge")):
        flow = next((p for p in watches[group].peaks.values() if p["role"] == "flow"), None) \
            if group in watches else None
        if flow and stage in estimates:
            rows.append(row(model, stage, "flow process", estimates[stage].peak, flow["hwm"]))
    serving = watches.get("serving")
    if serving:
        rows += serving_rows(model, serving, estimates)
    return rows


def serving_rows(model: str, serving: Watch, estimates: dict) -> list[dict]:
    """Each vLLM server against the estimate for the model it serves (quantized or not), EvalScope's child,
    and the evaluate stage's need (servers alive at once, and the child) against the peak of their sum."""
    from tasks import memory

    shape = estimates["__shape__"]
    rows = []
    for server, pss in sorted(serving.vllm_pss.items(), key=lambda item: int(item[0].rsplit("@", 1)[1])):
        folder = Path(server.rsplit("@", 1)[0])
        method = "w8a8" if "quantization_config" in json.loads((folder / "config.json").read_text()) else "none"
        estimate = memory.served_weight_bytes(shape, method) + memory.vllm_kv_bytes() + memory.OVERHEAD["vllm"]
        label = "quantized" if method != "none" else "full weights"
        rows.append(row(model, f"vLLM server ({label})", "its processes, PSS", estimate, pss))
    evalscope = [p["hwm"] for p in serving.peaks.values() if p["role"] == "evalscope"]
    if evalscope:
        rows.append(row(model, "(EvalScope child)", "evaluate's child", memory.OVERHEAD["evalscope"], max(evalscope)))
    if "evaluate" in estimates and serving.serving_total:
        rows.append(row(model, "evaluate: need", "servers + EvalScope", estimates["evaluate"].need,
                        serving.serving_total))
    return rows


def row(model: str, stage: str, process: str, estimate: float, measured: float) -> dict:
    return {"model": model, "stage": stage, "process": process, "estimate GiB": f"{estimate / GIB:.2f}",
            "measured GiB": f"{measured / GIB:.2f}", "ratio": f"{estimate / measured:.2f}" if measured else "-"}


# ---- more shapes of train_sft, on its own ------------------------------------------------------------------

SFT_VARIANTS = [  # (label, stages.sft settings): the recipe the trainer child runs, on the SmolLM2 run's tokens
    ("train_sft, LoRA, dropout 0", {"tuner": "lora", "batch_size": 8, "max_length": 256, "lora": {"dropout": 0.0}}),
    ("train_sft, LoRA, batch 4", {"tuner": "lora", "batch_size": 4, "max_length": 256, "lora": {"dropout": 0.0}}),
    ("train_sft, LoRA, checkpointing", {"tuner": "lora", "batch_size": 8, "max_length": 256,
                                        "trainer_args": {"gradient_checkpointing": True}}),
    ("train_sft, full", {"tuner": "full", "batch_size": 8, "max_length": 256}),
    ("train_sft, full, checkpointing", {"tuner": "full", "batch_size": 8, "max_length": 256,
                                        "trainer_args": {"gradient_checkpointing": True}}),
]


def sft_variants(work: Path, env: dict) -> list[dict]:
    """Each variant's child recipe (`python -m tasks.trainer job.json`, as `accelerate launch` starts it)
    in a process of its own; its peak resident memory from wait4."""
    from flows.spec import parse_spec
    from storage import open_store
    from tasks import memory

    store = open_store(str(work / "store-smol"), work / "cache")
    tokens = store.get_dir(store.ref("smol/tokens-sft")) / "tokens.parquet"
    base = store.get_dir(store.ref("smol/base-model"))
    shape, rows = memory.model_shape(str(base)), []
    for label, settings in SFT_VARIANTS:
        settings = dict(settings, trainer_args={**settings.get("trainer_args", {}), "max_steps": 2})
        spec = parse_spec({"name": "smol", "model": str(base), "data": {"sft": str(tokens)},
                           "stages": {"sft": settings}})
        estimate = memory.estimates(spec, shape, {"cpu": memory.Device("cpu", "CPU RAM", 0, 0)})[0]
        scratch = Path(tempfile.mkdtemp(dir=work, prefix="sft-variant-"))
        job = {"config": spec.stages.sft.model_dump(), "model_chain": [str(base)], "data": str(tokens),
               "output": str(scratch / "output"), "workdir": str(scratch), "stage": "train_sft", "stage_module": "sft"}
        (scratch / "job.json").write_text(json.dumps(job))
        proc = subprocess.Popen([sys.executable, "-m", "tasks.trainer", str(scratch / "job.json")], cwd=ROOT,
                                env=dict(env, DS_ACCELERATOR="cpu"), stdout=subprocess.DEVNULL,
                                stderr=subprocess.STDOUT)
        _, code, usage = os.wait4(proc.pid, 0)
        if code:
            raise SystemExit(f"{label}: the trainer recipe failed (status {code}); job: {scratch / 'job.json'}")
        rows.append(row("smol", label, "trainer recipe", estimate.peak, usage.ru_maxrss * 1024))
        print(f"smol: {label}: {rows[-1]}", file=sys.stderr, flush=True)
    return rows


def run_model(model: str, spec_file: Path, env: dict, log: Path) -> list[dict]:
    watches = {}
    for group, skips in steps_for(spec_file):
        started = time.monotonic()
        watches[group] = run_measured(["run", str(spec_file), *skips], env, log)
        print(f"{model}: {group}: {time.monotonic() - started:.0f}s", file=sys.stderr)
    subprocess.run([ALIGNFLOW, "serve", "stop", "--all"], env=env, capture_output=True, timeout=180)
    return compare(model, watches, estimates_for(spec_file))


# ---- the formulas on GPU sizes (docs/MEMORY.md; not measured here) ---------------------------------------

GPU_MODELS = {  # config.json values of two public models
    "Llama-3.1-8B": dict(layers=32, hidden=4096, intermediate=14336, heads=32, kv_heads=8, head_dim=128,
                         vocab=128256, tied=False, dtype="bfloat16", family="llama"),
    "Qwen2.5-7B": dict(layers=28, hidden=3584, intermediate=18944, heads=28, kv_heads=4, head_dim=128,
                       vocab=152064, tied=False, dtype="bfloat16", attention_bias=True, family="qwen2"),
}
GPU_CASES = [  # (label, sft settings, processes)
    ("LoRA r16, b4 x 2048", {"tuner": "lora", "batch_size": 4, "max_length": 2048}, 1),
    ("QLoRA r16, b4 x 2048", {"tuner": "qlora", "batch_size": 4, "max_length": 2048}, 1),
    ("full, b4 x 2048", {"tuner": "full", "batch_size": 4, "max_length": 2048}, 1),
    ("full, ZeRO-3 x 8 GPUs", {"tuner": "full", "batch_size": 4, "max_length": 2048,
                               "resources": {"processes": 8, "deepspeed": "zero3"}}, 8),
    ("LoRA r16, b4 x 2048, no checkpointing", {"tuner": "lora", "batch_size": 4, "max_length": 2048,
                                               "trainer_args": {"gradient_checkpointing": False}}, 1),
]


def gpu_table() -> list[dict]:
    """train_sft's estimate per GPU for a 7B and an 8B model in bf16, against 24 and 80 GiB cards."""
    from flows.spec import parse_spec
    from tasks import memory

    rows = []
    for name, dims in GPU_MODELS.items():
        shape = memory.Shape(**dims, origin="config.json")
        for label, sft, _ in GPU_CASES:
            spec = parse_spec({"name": "gpu", "model": "./model", "data": {"sft": "builtin://reverse/sft"},
                               "stages": {"sft": sft}})
            found = {"cpu": memory.Device("cpu", "CPU RAM", 0, 0),
                     "cuda": memory.Device("cuda", "GPU", 0, 80 * GIB)}
            e = memory.estimates(spec, shape, found)[0]
            p = {k: v / GIB for k, v in e.parts.items()}
            rows.append({"model": name, "train_sft": label, "trainable": e.trainable,
                         "weights": f"{p.get('weights', 0):.1f}", "grads": f"{p.get('gradients', 0):.1f}",
                         "optim": f"{p.get('optimizer', 0):.1f}", "activ": f"{p.get('activations', 0):.1f}",
                         "logits": f"{p.get('logits', 0):.1f}", "peak GiB": f"{e.peak / GIB:.1f}",
                         "24 GiB": "fits" if e.peak <= 24 * GIB else "no",
                         "80 GiB": "fits" if e.peak <= 80 * GIB else "no"})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smol", type=Path, help="a float32 SmolLM2-135M-Instruct folder (e.g. /tmp/smol-hf)")
    parser.add_argument("--only-smol", action="store_true", help="skip the tiny model")
    parser.add_argument("--keep", type=Path, help="work here and keep it (default: a temporary folder)")
    parser.add_argument("--gpu-table", action="store_true", help="print docs/MEMORY.md's GPU table (the formulas "
                                                                 "only: nothing runs) and exit")
    args = parser.parse_args()
    from alignflow.service import server
    from alignflow.tables import format_table

    if args.gpu_table:
        print(format_table(gpu_table(), ["model", "train_sft", "trainable", "weights", "grads", "optim", "activ",
                                         "logits", "peak GiB", "24 GiB", "80 GiB"]))
        return 0

    work = args.keep or Path(tempfile.mkdtemp(prefix="alignflow-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, ALIGNFLOW_CACHE=str(work / "cache"), ALIGNFLOW_HOME=str(work / "state"),
               PREFECT_HOME=str(work / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
               HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", ALIGNFLOW_MEMORY_CHECK="off")
    os.environ.update({k: env[k] for k in ("PREFECT_HOME", "ALIGNFLOW_HOME", "ALIGNFLOW_CACHE")})
    started = server.start_server(database=None, port=0)
    env["PREFECT_API_URL"] = started["api_url"]
    log, rows = work / "runs.log", []
    columns = ["model", "stage", "process", "estimate GiB", "measured GiB", "ratio"]

    def add(found: list[dict]) -> None:  # each model's rows as soon as it is done: a long run cut short keeps them
        rows.extend(found)
        print(format_table(found, columns), file=sys.stderr, flush=True)

    try:
        if not args.only_smol:
            demo = work / "demo.yaml"
            demo.write_text((ROOT / "deployments/demo.yaml").read_text().replace(".alignflow/store",
                                                                                 str(work / "store-demo")))
            add(run_model("tiny", demo, env, log))
        if args.smol:
            spec = work / "smol.yaml"
            spec.write_text(smol_spec(args.smol, smol_data(args.smol, work / "smol-data"), work / "store-smol"))
            add(run_model("smol", spec, env, log))
            add(sft_variants(work, env))
    finally:
        from alignflow.processes import stop_group
        import signal

        stop_group(started["pid"], signal.SIGTERM)
    print(format_table(rows, columns))
    print(f"\nruns: {log}; specs and stores: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
