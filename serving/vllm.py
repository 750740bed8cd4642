"""vLLM: its OpenAI-compatible server, its environment, runtime LoRA adapters and metrics, the quantization
formats its kernels run, and its offline engine (`generate`, for the sample stage). Everything that is
vLLM's own lives here; the lifecycle around it (serving/lifecycle.py, serving/rollout.py) is the engines'.
"""

from __future__ import annotations

import json
import os
import re
import signal
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path

from alignflow.errors import StageError
from alignflow.processes import run_logged, tail
from serving.access import http_json
from serving.engine import Launch
from serving.options import DECIDED, extra_args_problems

# options the deploy stage sets itself, and what to set instead: given again in extra_args they would win
# (vLLM keeps the last) and undo what the stage decided, e.g. `--host 0.0.0.0` binds every interface, keyless
DECIDED_OPTIONS = DECIDED | {
    "--model": "deploy serves the model the stage is given",
    "--max-model-len": "use stages.deploy.max_model_len",
    "--enable-lora": "use stages.deploy.mode: adapter",
    "--no-enable-lora": "use stages.deploy.mode: model",
    "--max-lora-rank": "use stages.deploy.max_lora_rank",
    "--max-loras": "use stages.deploy.max_loras",
    "--lora-modules": "use stages.deploy.mode: adapter (the pipeline's adapter is served under its name)",
    "--generation-config": "deploy uses the model folder's own generation settings",
    "--config": "give the options in extra_args themselves (a vLLM config file can set any option, the ones "
                "deploy sets included)",
}
REQUESTS = re.compile(r"^vllm:num_requests_(running|waiting)\{[^}]*\}\s+([0-9.e+]+)", re.M)


@dataclass(frozen=True)
class Vllm:
    name: str = "vllm"
    label: str = "vLLM"
    package: str = "vllm"
    install: str = "`make setup` creates .venv-serve with it; on a GPU host `make SERVE_PACKAGE=vllm setup`"
    image: str = "vllm/vllm-openai:latest"
    key_variable: str = "VLLM_API_KEY"
    health_path: str = "/health"
    stop_signal: int = signal.SIGINT  # vLLM stops on SIGINT in under a second
    adapters: bool = True
    prompt_logprobs: bool = True
    # its kernels: the x86 CPU build runs int8 (w8a8) and, by its fallback, fp8; the weight-only int4/int8
    # GPTQ formats need the GPU kernels
    quantizations: dict = field(default_factory=lambda: {"cpu": ("w8a8", "fp8"),
                                                         "gpu": ("w8a8", "w4a16", "int8_weight_only", "fp8")})

    def problems(self, settings) -> list[str]:
        return extra_args_problems(list(settings.extra_args), DECIDED_OPTIONS, self.label)

    def entrypoint(self, python: str) -> list[str]:
        return [python, "-m", "vllm.entrypoints.openai.api_server"]

    def arguments(self, launch: Launch) -> list[str]:
        args = ["--model", launch.model, "--served-model-name", launch.served_name, "--host", launch.host,
                "--port", str(launch.port), "--generation-config", "auto"]
        if launch.chat_template:  # the template used in training, never a guess of the server's
            args += ["--chat-template", launch.chat_template]
        if launch.max_model_len:
            args += ["--max-model-len", str(launch.max_model_len)]
        if launch.adapter:
            lora = launch.adapter
            args += ["--enable-lora", "--max-lora-rank", str(lora.max_rank), "--max-loras", str(lora.max_loras),
                     "--lora-modules", f"{lora.name}={lora.folder}"]
        return args + list(launch.extra_args)

    def environment(self, cache_dir: str, key: str | None, adapters: bool, gpu: bool) -> dict[str, str | None]:
        env = {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
               "VLLM_CACHE_ROOT": str(Path(cache_dir) / "vllm"), self.key_variable: key or None,
               "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True" if adapters else None}  # adapters load at run time
        if gpu:
            return env
        return env | {name: os.environ.get(name, value) for name, value in CPU_DEFAULTS.items()}

    def load_adapter(self, root: str, name: str, folder: str, key: str | None, replace: bool) -> None:
        payload = {"lora_name": name, "lora_path": folder, "load_inplace": replace}  # in flight: the old one
        try:
            http_json(f"{root}/v1/load_lora_adapter", payload, timeout=120, key=key)
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:2000]
            raise StageError(f"deploy: the vLLM server at {root} refused adapter {name} from {folder}: "
                             f"HTTP {exc.code}: {detail}") from None

    def unload_adapter(self, root: str, name: str, key: str | None) -> None:
        try:
            http_json(f"{root}/v1/unload_lora_adapter", {"lora_name": name}, timeout=60, key=key)
        except (OSError, ValueError):
            pass  # gone already, or the server is going: nothing to unload

    def served_folder(self, root: str, key: str | None, card: dict) -> str | None:
        return card.get("root")  # the model's folder, or the adapter's

    def requests_in_flight(self, metrics: str) -> int | None:
        found = REQUESTS.findall(metrics)
        return int(sum(float(value) for _, value in found)) if found else None


# on a host without a GPU, where the caller's environment does not set them
CPU_DEFAULTS = {
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB of KV cache; vLLM's default takes 4
    # vLLM pins its threads to fixed cores by default, so during a blue/green deploy the new server lands on
    # the very core the busy old one spins on and starts 10x slower; unpinned, the OS shares them
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    # vLLM 0.32 on CPU cannot load its own AOT-compiled artifacts and compiles on every start: the older
    # compile cache loads in 3.6 s against 11 s, measured
    "VLLM_USE_AOT_COMPILE": "0",
    # one model worker inside the engine process (--distributed-executor-backend uni, which vLLM on CPU honours
    # only with this set), as on a single GPU: no third process that imports torch and vLLM again; healthy in
    # 48 s instead of 69 s, measured
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
}

ENGINE = Vllm()


class PromptScorer:
    """Tokens and their log-probabilities from a vLLM server: /tokenize renders a chat with the served
    template, /v1/completions with `prompt_logprobs` scores a given token sequence (evaluation's `answer_by:
    likelihood`; an engine without them says `prompt_logprobs = False`)."""

    def __init__(self, url: str, name: str, key: str | None):
        import httpx

        self.root, self.name = url.rstrip("/").removesuffix("/v1"), name
        self.client = httpx.Client(timeout=600, headers={"Authorization": f"Bearer {key}"} if key else {})

    def post(self, path: str, body: dict) -> dict:
        reply = self.client.post(self.root + path, json=dict(body, model=self.name))
        if reply.status_code != 200:
            raise RuntimeError(f"{path} answered {reply.status_code}: {reply.text[:500]}")
        return reply.json()

    def tokens(self, messages: list[dict], answer: bool) -> list[int]:
        return self.post("/tokenize", {"messages": messages, "add_generation_prompt": not answer,
                                       "continue_final_message": answer, "add_special_tokens": False})["tokens"]

    def logprobs(self, sequences: list[list[int]]) -> list[list[float]]:
        """Each token's log-probability given those before it (the first has none)."""
        reply = self.post("/v1/completions", {"prompt": sequences, "max_tokens": 1, "temperature": 0,
                                              "prompt_logprobs": 0})
        out = []
        for choice, ids in zip(sorted(reply["choices"], key=lambda c: c["index"]), sequences):
            steps = choice["prompt_logprobs"][1:]
            out.append([step[str(token)]["logprob"] for step, token in zip(steps, ids[1:])])
        return out


def generate(python: str, env: dict, model_dir: Path, prompts: list[str], sampling: dict, workdir: Path) -> dict:
    """vLLM's offline engine in the serve env (a child process with its own torch): {"completions": [[n
    answers] per prompt], "tokens", "seconds"}. `sampling`: n, temperature, top_p, max_tokens, seed."""
    from serving import vllm_generate

    job, result, log = workdir / "vllm-job.json", workdir / "vllm-result.json", workdir / "vllm.log"
    result.unlink(missing_ok=True)
    job.write_text(json.dumps({"model": str(model_dir), "prompts": prompts, **sampling, "output": str(result)}))
    code = run_logged([python, vllm_generate.__file__, str(job)], log, env, cwd=workdir)
    if code != 0 or not result.exists():
        raise StageError(f"sample: vLLM's offline engine failed (exit code {code}); its log ends:\n{tail(log, 15)}")
    return json.loads(result.read_text())
