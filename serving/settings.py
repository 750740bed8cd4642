"""How a pipeline's model is served: the deploy stage's settings, which every engine reads the same way.

Adding an engine adds its name to `Settings.engine`'s `Literal` (and its module, serving/<name>.py).
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from serving.access import KEY_SOURCE, exposure_problems
from serving.engine import engine_for
from serving.load_test import LoadTest

STRICT = ConfigDict(extra="forbid", strict=True, validate_assignment=True)


class Settings(BaseModel):
    """The server's settings; new versions go live without a gap (blue/green)."""

    model_config = STRICT

    engine: Literal["vllm", "sglang"] = Field(
        "vllm", description="the serving engine: vllm, or sglang (its own env: stages.deploy.python or "
                            "$ALIGNFLOW_SERVE_PYTHON)")
    mode: Literal["model", "adapter"] = Field(
        "model", description="model: full weights (merged, or quantized); adapter: the base model plus the "
                             "pipeline's LoRA adapter, on a server shared by every pipeline with that base")
    host: str = Field("127.0.0.1", description="bind address; anything but loopback needs api_key")
    port: int = Field(0, ge=0, le=65535, description="0 picks a free port per server (blue/green); a fixed port "
                                                     "replaces the previous server in place, with a gap")
    api_key: Optional[str] = Field(None, pattern=KEY_SOURCE, description="where the server's api key comes from: "
                                                                        "env:VARIABLE or secret:BLOCK (a Prefect "
                                                                        "Secret block); the key never reaches a log "
                                                                        "or an artifact")
    max_model_len: Optional[int] = Field(None, ge=16, description="context length (empty: the model's)")
    max_lora_rank: int = Field(64, ge=1, le=1024, description="mode adapter: the largest adapter rank the server "
                                                              "accepts at run time")
    max_loras: int = Field(8, ge=1, le=1024, description="mode adapter: adapters a batch may mix")
    start_timeout: float = Field(600.0, gt=0, le=86400, description="seconds to wait for the server's health")
    drain_seconds: float = Field(5.0, ge=0, le=3600, description="after traffic moves, the old server still "
                                                                 "takes requests this long, then finishes what "
                                                                 "it has before it stops")
    drain_timeout: float = Field(120.0, ge=0, le=86400, description="the longest wait for those requests")
    load_test: Optional[LoadTest] = Field(default_factory=LoadTest, description="evalscope perf against the live "
                                                                                "endpoint after each new deploy "
                                                                                "(empty: none)")
    python: Optional[str] = Field(None, description="the serve env's python (empty: $ALIGNFLOW_SERVE_PYTHON, "
                                                    "else .venv-serve beside the project)")
    extra_args: list[str] = Field(default_factory=list, description="appended to the engine's command line, e.g. "
                                                                    "['--tensor-parallel-size', '2']")

    @model_validator(mode="before")
    @classmethod
    def renamed(cls, data):
        """`backend:` is the field's earlier name (specs, and the settings recorded with older deployments)."""
        if isinstance(data, dict) and "backend" in data and "engine" not in data:
            data = {("engine" if k == "backend" else k): v for k, v in data.items()}
        return data

    def problems(self) -> list[str]:
        engine = engine_for(self.engine)
        problems = engine.problems(self) + exposure_problems(self.host, self.api_key)
        if self.mode == "adapter" and not engine.adapters:
            problems.append(f"stages.deploy.mode: adapter: {engine.label} does not serve LoRA adapters here; "
                            "use mode: model (the merged model), or engine: vllm")
        return problems

    def scratch(self) -> Settings:
        """These engine settings for a server only evaluation uses: loopback, any port, no key."""
        return self.model_copy(update={"host": "127.0.0.1", "port": 0, "api_key": None, "mode": "model"})
