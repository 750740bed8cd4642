"""SGLang (0.5.23): its OpenAI-compatible server, `python -m sglang.launch_server`, in a serve env of its own
(`pip install sglang==0.5.23` on a CUDA 13 host; stages.deploy.python or $ALIGNFLOW_SERVE_PYTHON names it).

What differs from vLLM, and how alignflow keeps the engine invariants (serving/engine.py):
  - SGLang reads its api key from `--api-key` only. The server is started through a few lines of `python -c`
    that move the key from the environment (KEY_VARIABLE) into the parser's argv inside the process: `ps`
    and /proc/PID/cmdline never show it, and neither do the record or the deployment artifact.
  - /v1/models names the base model by its served name, not its folder; `/model_info` gives the folder,
    which is how `served_folder` tells the digest a server serves.
  - Adapters: SGLang serves LoRA adapters, but its OpenAI API addresses one as `<base>:<adapter>` (or by a
    `lora_path` field), not as a model of its own under the pipeline's name, which is how alignflow serves
    and switches adapters. `mode: adapter` is refused at spec time; merge the adapter (mode: model).
  - Its CPU backend (SGLANG_USE_CPU_ENGINE=1, `--device cpu`) needs `sgl-kernel` built from source for the
    host's CPU: no CPU wheel is published. On a host without a GPU it is asked for all the same, and fails
    with SGLang's own message when the kernel is missing.
"""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass, field

from serving.access import http_json
from serving.engine import Launch
from serving.options import DECIDED, extra_args_problems

KEY_VARIABLE = "ALIGNFLOW_SGLANG_API_KEY"
# the server's module, run with the key (when set) appended to its argv inside the process
LAUNCH = ("import os, runpy, sys; key = os.environ.pop(%r, None); sys.argv += ['--api-key', key] if key else []; "
          "runpy.run_module('sglang.launch_server', run_name='__main__', alter_sys=True)" % KEY_VARIABLE)
DECIDED_OPTIONS = DECIDED | {
    "--admin-api-key": "use stages.deploy.api_key (one key guards the server)",
    "--model-path": "deploy serves the model the stage is given",
    "--model": "deploy serves the model the stage is given",
    "--context-length": "use stages.deploy.max_model_len",
    "--enable-lora": "SGLang serves no adapter under the pipeline's name: deploy the merged model (mode: model)",
    "--lora-paths": "SGLang serves no adapter under the pipeline's name: deploy the merged model (mode: model)",
    "--config": "give the options in extra_args themselves (an SGLang config file can set any option, the ones "
                "deploy sets included)",
}
REQUESTS = re.compile(r"^sglang:num_(running|queue)_reqs\{[^}]*\}\s+([0-9.e+]+)", re.M)


@dataclass(frozen=True)
class Sglang:
    name: str = "sglang"
    label: str = "SGLang"
    package: str = "sglang"
    install: str = "pip install sglang==0.5.23 in a python of its own, on a CUDA 13 host"
    image: str = "lmsysorg/sglang:v0.5.23"
    key_variable: str = KEY_VARIABLE
    health_path: str = "/health"  # 200 once it generated a token
    stop_signal: int = signal.SIGTERM
    adapters: bool = False
    prompt_logprobs: bool = False  # vLLM's /tokenize with messages and prompt_logprobs have no SGLang twin
    # compressed-tensors checkpoints its GPU kernels load; its CPU backend is not offered here (see above)
    quantizations: dict = field(default_factory=lambda: {"cpu": (), "gpu": ("w8a8", "fp8", "w4a16",
                                                                             "int8_weight_only")})

    def problems(self, settings) -> list[str]:
        return extra_args_problems(list(settings.extra_args), DECIDED_OPTIONS, self.label)

    def entrypoint(self, python: str) -> list[str]:
        return [python, "-c", LAUNCH]

    def arguments(self, launch: Launch) -> list[str]:
        args = ["--model-path", launch.model, "--served-model-name", launch.served_name, "--host", launch.host,
                "--port", str(launch.port), "--enable-metrics"]
        if launch.chat_template:
            args += ["--chat-template", launch.chat_template]
        if launch.max_model_len:
            args += ["--context-length", str(launch.max_model_len)]
        if not launch.gpu:
            args += ["--device", "cpu"]
        return args + list(launch.extra_args)

    def environment(self, cache_dir: str, key: str | None, adapters: bool, gpu: bool) -> dict[str, str | None]:
        return {"HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1", self.key_variable: key or None,
                "SGLANG_USE_CPU_ENGINE": None if gpu else "1"}

    def load_adapter(self, root: str, name: str, folder: str, key: str | None, replace: bool) -> None:
        raise NotImplementedError("SGLang adapters are refused at spec time (see serving/sglang.py)")

    def unload_adapter(self, root: str, name: str, key: str | None) -> None:
        raise NotImplementedError("SGLang adapters are refused at spec time (see serving/sglang.py)")

    def served_folder(self, root: str, key: str | None, card: dict) -> str | None:
        try:
            return http_json(f"{root}/model_info", key=key).get("model_path")
        except (OSError, ValueError):
            return None

    def requests_in_flight(self, metrics: str) -> int | None:
        found = REQUESTS.findall(metrics)
        return int(sum(float(value) for _, value in found)) if found else None


ENGINE = Sglang()
