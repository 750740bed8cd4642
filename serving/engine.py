"""The seam between alignflow's serving lifecycle and a serving engine (vLLM, SGLang).

An engine is a module `serving/<name>.py` with a module-level `ENGINE` that satisfies `Engine`, and its name
in `Settings.engine`'s `Literal` (serving/settings.py): `engine_for(name)` imports the module on first use.
LmDeploy would be a third such module (`serving/lmdeploy.py`: `lmdeploy serve api_server`, its `--backend
turbomind|pytorch`, its adapters given at start only).

What every engine must keep, whatever its flags are called:
  - A served folder is named by digest: the model (and an adapter) reach the server as the store's folder
    for that digest, and `served_folder` reads back from the live server which folder a model name serves,
    so `lifecycle.serves` can tell which artifact it serves.
  - A key never goes in argv: the api key reaches the server by environment (`environment(key=...)`), never
    as a command-line argument, which `ps`, the record, the deployment artifact and its lineage would show.
  - The options deploy decides (bind address, port, key, served name, model, template, context length,
    adapters) are never set again by `extra_args`: `problems` refuses them, read as the engine's own parser
    reads them.
  - One process group per server, stopped by `stop_signal` (then SIGKILL), and healthy when `health_path`
    answers 200.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Protocol, runtime_checkable


@dataclasses.dataclass(frozen=True)
class AdapterLaunch:
    """A LoRA adapter served from the start under `name`, on the launch's model."""

    name: str
    folder: str
    max_rank: int
    max_loras: int


@dataclasses.dataclass(frozen=True)
class Launch:
    """What one server serves and how, in the engine's neutral terms: everything `Engine.command` turns into
    a command line. Kept in the server's record, so the Kubernetes export renders the same server again
    with the pod's paths."""

    model: str  # the model's folder (named by its digest)
    served_name: str
    host: str
    port: int
    chat_template: str | None = None  # a file: the template the model was trained with
    max_model_len: int | None = None
    adapter: AdapterLaunch | None = None
    extra_args: tuple[str, ...] = ()
    gpu: bool = True  # the host has one (an engine may need to be told to run on the CPU)

    @classmethod
    def from_json(cls, data: dict) -> Launch:
        adapter = data.get("adapter")
        fields = {**data, "adapter": AdapterLaunch(**adapter) if adapter else None,
                  "extra_args": tuple(data.get("extra_args") or ())}
        return cls(**fields)


@runtime_checkable
class Engine(Protocol):
    """A serving engine behind an OpenAI-compatible HTTP server (/v1/models, /v1/chat/completions)."""

    name: str  # the value of stages.deploy.engine
    label: str  # how logs and errors name it: "vLLM"
    package: str  # what the serve env's python must import: "vllm"
    install: str  # how a user installs it there, for the error that says it is missing
    image: str  # the container image `alignflow serve k8s` runs by default
    key_variable: str  # the environment variable the server reads its api key from
    health_path: str  # answers 200 once the server takes requests
    stop_signal: int  # what stops the server promptly (SIGKILL follows when it lingers)
    adapters: bool  # serves LoRA adapters, from the start and loaded at run time
    prompt_logprobs: bool  # scores a given text (/tokenize, prompt_logprobs): evaluation's answer_by likelihood
    quantizations: dict[str, tuple[str, ...]]  # stages.quantize.method values it serves, per target cpu|gpu

    def problems(self, settings) -> list[str]:
        """What in stages.deploy (serving/settings.py `Settings`) this engine cannot do or must refuse (an
        extra_args option that deploy sets itself; an unsupported mode), each naming the field and the fix."""
        ...

    def entrypoint(self, python: str) -> list[str]:
        """The command that starts the server, before its arguments: [python, "-m", ...]."""
        ...

    def arguments(self, launch: Launch) -> list[str]:
        """The server's arguments for `launch` (never the api key)."""
        ...

    def environment(self, cache_dir: str, key: str | None, adapters: bool, gpu: bool) -> dict[str, str | None]:
        """Variables the server needs on top of a credential-free environment (None unsets one): the key as
        `key_variable`, caches under `cache_dir`, what adapters at run time need, host-specific settings."""
        ...

    def load_adapter(self, root: str, name: str, folder: str, key: str | None, replace: bool) -> None:
        """Serve the adapter in `folder` as `name` on the running server at `root`, without a restart;
        `replace`: `name` is loaded already and is swapped. Raises StageError with the server's answer."""
        ...

    def unload_adapter(self, root: str, name: str, key: str | None) -> None:
        """Stop serving the adapter `name`; a server that is gone, or no longer has it, is no error."""
        ...

    def served_folder(self, root: str, key: str | None, card: dict) -> str | None:
        """The folder the server at `root` serves under the /v1/models entry `card` (None: cannot tell)."""
        ...

    def requests_in_flight(self, metrics: str) -> int | None:
        """Requests running or queued, read from the server's Prometheus /metrics text; None if not found."""
        ...


ENGINES: dict[str, Engine] = {}


def engine_for(name: str) -> Engine:
    """The engine `name` (stages.deploy.engine): `serving/<name>.py`'s ENGINE, imported on first use."""
    if name not in ENGINES:
        try:
            module = importlib.import_module(f"serving.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"serving.{name}":
                raise
            from alignflow.errors import ConfigError

            raise ConfigError(f"stages.deploy.engine: no serving engine {name!r} (serving/{name}.py does not "
                              "exist); see serving/engine.py for what an engine provides", "spec") from None
        register(module.ENGINE)
    return ENGINES[name]


def register(engine: Engine) -> Engine:
    """Add `engine` to the registry under its name, checking it has everything `Engine` asks for."""
    if not isinstance(engine, Engine):
        missing = [n for n in dir(Engine) if not n.startswith("_") and not hasattr(engine, n)]
        raise TypeError(f"{engine!r} is not a serving engine: it lacks {', '.join(missing)}")
    ENGINES[engine.name] = engine
    return engine
