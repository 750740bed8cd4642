"""`PipelineSpec`: the validated YAML that names a pipeline's model, data, stages and store.

Validation collects every problem with its field path and a "did you mean" before any work starts:

    spec: 2 problems:
      - stages.dpo.betta: unknown field; did you mean 'beta'?
      - stages.sft.epochs: expected a number, got 'three'

docs/CONFIG.md documents every field; the dataclasses below are its source of truth.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from alignflow.errors import ConfigError


@dataclass
class LoraSpec:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"


@dataclass
class SFTStage:
    tuner: Literal["lora", "qlora", "full"] = "lora"
    epochs: float = 1.0
    learning_rate: float = 2.0e-4
    batch_size: int = 8  # per device
    max_length: int = 1024  # tokens; longer rows are truncated
    lora: LoraSpec = field(default_factory=LoraSpec)
    trainer_args: dict = field(default_factory=dict)  # forwarded to trl.SFTConfig as is


@dataclass
class RewardStage:
    epochs: float = 1.0
    learning_rate: float = 1.0e-4
    batch_size: int = 8
    max_length: int = 1024
    eval_fraction: float = 0.1  # held-out pairs for the pairwise accuracy
    trainer_args: dict = field(default_factory=dict)  # forwarded to trl.RewardConfig


@dataclass
class DPOStage:
    tuner: Literal["lora", "full"] = "lora"
    beta: float = 0.1
    epochs: float = 1.0
    learning_rate: float = 5.0e-5
    batch_size: int = 8
    max_length: int = 1024
    lora: LoraSpec = field(default_factory=LoraSpec)
    trainer_args: dict = field(default_factory=dict)  # forwarded to trl.DPOConfig


@dataclass
class MergeStage:
    tolerance: float = 1.0e-3  # max |logit difference| allowed between merged and adapter model


@dataclass
class QuantizeStage:
    method: Literal["w8a8", "w4a16", "none"] = "w8a8"
    calibration_samples: int = 64
    max_length: int = 512


@dataclass
class EvaluateStage:
    metric: Literal["exact_match", "rouge"] = "exact_match"
    max_tokens: int = 64
    batch_size: int = 16
    limit: Optional[int] = None  # evaluate only the first N rows (None: all)


@dataclass
class GateStage:
    min_score: float = 0.0  # the candidate's primary score must reach this
    min_gain_over_base: float = 0.0  # ... beat the base model by at least this much
    max_regression: float = 0.0  # ... and not score below the production model by more than this


@dataclass
class DeployStage:
    backend: Literal["vllm"] = "vllm"
    host: str = "127.0.0.1"
    port: int = 0  # 0: pick a free port
    max_model_len: Optional[int] = None
    start_timeout: float = 300.0  # seconds to wait for /health
    python: Optional[str] = None  # the serve env's python; default: .venv-serve beside the project
    extra_args: list[str] = field(default_factory=list)  # forwarded to the vLLM server command line


@dataclass
class Stages:
    sft: Optional[SFTStage] = None
    reward: Optional[RewardStage] = None
    dpo: Optional[DPOStage] = None
    merge: MergeStage = field(default_factory=MergeStage)
    quantize: Optional[QuantizeStage] = None
    evaluate: Optional[EvaluateStage] = None
    gate: Optional[GateStage] = None
    deploy: Optional[DeployStage] = None


@dataclass
class DataSpec:
    sft: Optional[str] = None  # messages rows
    preference: Optional[str] = None  # prompt/chosen/rejected rows
    eval: Optional[str] = None  # question/answer rows


@dataclass
class RetrySpec:
    retries: int = 2  # extra attempts for transient failures
    delay_seconds: float = 10.0  # first backoff; doubles each attempt, with jitter


@dataclass
class PipelineSpec:
    name: str
    model: str
    data: DataSpec = field(default_factory=DataSpec)
    stages: Stages = field(default_factory=Stages)
    store: str = ".alignflow/store"
    storage: Optional[str] = None  # a saved prefect-aws AwsCredentials block for an s3:// store
    retry: RetrySpec = field(default_factory=RetrySpec)

    def to_dict(self) -> dict:
        """Plain data that `parse_spec` turns back into this spec (skipped stages are left out, since a
        stage written with no settings means "on, with defaults")."""
        raw = dataclasses.asdict(self)
        raw["stages"] = {k: v for k, v in raw["stages"].items() if v is not None}
        return raw


NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")


# ---- loading -------------------------------------------------------------------------------------

def load_spec(path: str | Path, overrides: list[str] = (), store: str | None = None,
              skip: list[str] = ()) -> PipelineSpec:
    """Read a YAML spec, apply `--set a.b=v` overrides, `--store` and `--skip STAGE`, validate, return it."""
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file; pass the path of a pipeline spec (see deployments/demo.yaml)",
                          "command line") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}", str(path)) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level", str(path))
    for item in overrides:
        apply_override(raw, item)
    if store:
        raw["store"] = store
    stages = raw.get("stages") if isinstance(raw.get("stages"), dict) else {}
    for name in skip:
        if name not in {f.name for f in dataclasses.fields(Stages)}:
            close = difflib.get_close_matches(name, [f.name for f in dataclasses.fields(Stages)], n=1)
            raise ConfigError(f"--skip {name}: no such stage" + (f"; did you mean {close[0]!r}?" if close else ""),
                              "command line")
        stages.pop(name, None)
    return parse_spec(raw, source=str(path))


def apply_override(raw: dict, item: str) -> None:
    """`apply_override(d, "stages.dpo.beta=0.2")` sets d["stages"]["dpo"]["beta"] = 0.2 (YAML-typed)."""
    import yaml

    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set stages.dpo.beta=0.2", "command line")
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {item!r}: {part} is not a mapping", "command line")
    node[leaf] = yaml.safe_load(value)


def parse_spec(raw: dict, source: str = "spec") -> PipelineSpec:
    problems: list[str] = []
    spec = _build(PipelineSpec, raw, "", problems)
    if not problems:
        problems += _cross_checks(spec)
    if problems:
        raise ConfigError(problems, source)
    return spec


def _cross_checks(spec: PipelineSpec) -> list[str]:
    problems = []
    if not NAME_RE.match(spec.name):
        problems.append(f"name: {spec.name!r} must be lowercase letters, digits, '-', '_' or '.'")
    needs = {"sft": "sft", "reward": "preference", "dpo": "preference", "evaluate": "eval"}
    for stage, split in needs.items():
        if getattr(spec.stages, stage) is not None and getattr(spec.data, split) is None:
            problems.append(f"stages.{stage}: needs data.{split}, which is not set")
    if spec.storage and not spec.store.startswith("s3://"):
        problems.append("storage: names credentials for an s3:// store, but store is a folder")
    if spec.stages.gate and not spec.stages.evaluate:
        problems.append("stages.gate: needs stages.evaluate, which is not set")
    return problems


def _build(cls, raw: Any, path: str, problems: list[str]):
    if not isinstance(raw, dict):
        problems.append(f"{path or 'spec'}: expected a mapping, got {type(raw).__name__} {raw!r}")
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known fields: {', '.join(fields)}"
            problems.append(f"{_join(path, key)}: unknown field{hint}")
    values = {}
    for name, f in fields.items():
        sub = _join(path, name)
        if name in raw:
            values[name] = _convert(hints[name], raw[name], sub, problems)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            problems.append(f"{sub}: required field is missing")
    try:
        return cls(**{k: v for k, v in values.items() if v is not _INVALID})
    except TypeError:
        return None  # a required field is missing; already reported


_INVALID = object()


def _convert(hint, value, path: str, problems: list[str]):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if value is None and not (len(options) == 1 and dataclasses.is_dataclass(options[0])):
            return None  # a stage written with no settings (`evaluate:`) is on, with its defaults
        if len(options) == 1:
            return _convert(options[0], value, path, problems)
        for option in options:  # e.g. str | list[str]: the first that fits
            trial: list[str] = []
            result = _convert(option, value, path, trial)
            if not trial:
                return result
        problems.append(f"{path}: expected {_describe(hint)}, got {value!r}")
        return _INVALID
    if dataclasses.is_dataclass(hint):
        return _build(hint, {} if value is None else value, path, problems) or _INVALID
    if origin is Literal:
        if value not in args:
            close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            hint_text = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(f"{path}: {value!r} is not one of {', '.join(map(repr, args))}{hint_text}")
            return _INVALID
        return value
    expected = origin or hint
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, expected) or (expected in (int, float) and isinstance(value, bool)):
        problems.append(f"{path}: expected {_describe(hint)}, got {value!r}")
        return _INVALID
    if expected is list and args and not all(isinstance(v, args[0]) for v in value):
        problems.append(f"{path}: expected {_describe(hint)}, got {value!r}")
        return _INVALID
    return value


def _describe(hint) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a mapping"}
    if hint in names:
        return names[hint]
    if typing.get_origin(hint) is list:
        return f"a list of {_describe(typing.get_args(hint)[0]).split(' ', 1)[-1]}s"
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint) if a is not type(None))
    return getattr(hint, "__name__", str(hint))


def _join(path: str, key) -> str:
    return f"{path}.{key}" if path else str(key)
