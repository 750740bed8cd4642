"""`PipelineSpec`: the validated YAML that names a pipeline's model, data, stages and store.

Each stage's config lives beside its stage (`tasks/sft.py: SFTStage`, ...); this module assembles them.
The same pydantic models validate a YAML file, `--set` overrides and what the dashboard's run form sends,
and give that form its fields, defaults, descriptions and ranges. Validation collects every problem with
its field path, the valid range and a "did you mean" before any work starts:

    spec has 2 problems:
      - stages.dpo.betta: unknown field; did you mean 'beta'?
      - stages.sft.epochs: -1 is out of range (valid: > 0)
"""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import Field, ValidationError, field_validator

from alignflow.errors import ConfigError
from alignflow.home import STORE
from alignflow.names import DATASET_PATTERN, FRIENDLY, NAME_PATTERN, is_valid
from flows.spec_yaml import apply_override, read_spec_file
from tasks.config import StageConfig, valid_range
from tasks.convert import ConvertRules, DataSource
from tasks.compare import CompareStage
from tasks.cpo import CPOStage
from tasks.deploy import DeployStage
from tasks.dpo import DPOStage
from tasks.evaluate import EvaluateStage
from tasks.gate import GateStage
from tasks.grpo import GRPOStage
from tasks.judge import JudgeStage
from tasks.kto import KTOStage
from tasks.merge import MergeStage
from tasks.orpo import ORPOStage
from tasks.quantize import QuantizeStage
from tasks.reward import RewardStage
from tasks.sft import SFTStage


class Stages(StageConfig):
    """A stage runs when it is set (an empty mapping: on, with its defaults) and is skipped when empty."""

    sft: Optional[SFTStage] = Field(None, description="supervised fine-tuning (needs data.sft)")
    reward: Optional[RewardStage] = Field(None, description="reward model (needs data.preference)")
    dpo: Optional[DPOStage] = Field(None, description="DPO on the SFT result (needs data.preference)")
    kto: Optional[KTOStage] = Field(None, description="KTO on good/bad answers (needs data.preference: pairs or "
                                                      "unpaired rows)")
    orpo: Optional[ORPOStage] = Field(None, description="ORPO, reference-free (needs data.preference)")
    cpo: Optional[CPOStage] = Field(None, description="CPO or SimPO, reference-free (needs data.preference)")
    grpo: Optional[GRPOStage] = Field(None, description="GRPO with the reward model and rule-based rewards")
    merge: MergeStage = Field(default_factory=MergeStage, description="folds adapters into full weights")
    quantize: Optional[QuantizeStage] = Field(None, description="post-training quantization")
    evaluate: Optional[EvaluateStage] = Field(None, description="EvalScope on the eval split (needs data.eval)")
    judge: Optional[JudgeStage] = Field(default_factory=JudgeStage,
                                        description="the reward model's win rate of the candidate over the SFT policy "
                                                    "(runs with stages.reward and stages.evaluate; empty: off)")
    compare: Optional[CompareStage] = Field(None, description="an LLM judge: the candidate's answers against the "
                                                              "production model's, in both orders (runs with "
                                                              "stages.evaluate once something is in production)")
    gate: Optional[GateStage] = Field(None, description="rules a candidate must pass to replace production")
    deploy: Optional[DeployStage] = Field(None, description="serve the result behind vLLM")


Sources = Union[str, DataSource, list[Union[str, DataSource]]]
BLOCK_SLUG = r"^[a-z0-9-]+/[A-Za-z0-9_.-]+$"  # a Prefect block: TYPE/NAME
SPLITS = ("sft", "preference", "eval")


class DataSpec(StageConfig):
    """Where each split comes from: one source or a list of them. A source is a path or URI (a file or folder,
    s3://, hf://datasets/, modelscope://datasets/, builtin://reverse/SPLIT, or a registered dataset version
    store://NAME@VERSION), or a mapping with `source` plus `format`, `columns` and `max_rows`. docs/DATA.md
    lists the formats."""

    sft: Optional[Sources] = Field(None, description="chat rows: messages, ShareGPT, Alpaca, query/response, "
                                                     "prompt/completion, question/answer")
    preference: Optional[Sources] = Field(None, description="preference pairs: prompt/chosen/rejected, ms-swift "
                                                            "rejected_response, HH-RLHF, UltraFeedback")
    eval: Optional[Sources] = Field(None, description="question/answer or multiple-choice (CEval/CMMLU) rows")
    eval_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="without data.eval: this fraction of the SFT "
                                                                   "rows becomes the eval split (seeded, by content)")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seed of the eval carve-out")
    on_bad_rows: Literal["fail", "skip"] = Field(
        "fail", description="fail: stop before training, listing every bad row as file:line: reason; skip: leave "
                            "them out, kept with their reasons in the dataset's quarantine.jsonl")
    contamination: Literal["drop", "fail", "warn", "off"] = Field(
        "drop", description="training rows that hold an evaluation question (13 words in a row in common after "
                            "normalisation, or the whole of a shorter one; the eval split and mcq sets): drop: "
                            "quarantine them with the row they match; fail: stop, listing them; warn: keep them, "
                            "counted; off: no check")

    def sources(self, split: str) -> list[DataSource]:
        value = getattr(self, split)
        items = value if isinstance(value, list) else [value] if value is not None else []
        return [DataSource(source=i) if isinstance(i, str) else i for i in items]

    def splits(self) -> dict[str, tuple[list[DataSource], ConvertRules]]:
        """Each split's sources and conversion rules; an eval split carved out of the SFT rows when asked."""
        rules = ConvertRules(on_bad_rows=self.on_bad_rows, eval_fraction=self.eval_fraction, seed=self.seed,
                             contamination=self.contamination)
        out = {split: (self.sources(split), rules) for split in SPLITS if self.sources(split)}
        if self.eval is None and self.eval_fraction > 0 and "sft" in out:
            out["sft"] = (out["sft"][0], rules.model_copy(update={"holdout": "train"}))
            out["eval"] = (out["sft"][0], rules.model_copy(update={"holdout": "eval"}))
        return out


class SweepSpec(StageConfig):
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="`alignflow sweep` runs the spec at "
                                       "every combination of these settings, e.g. {stages.dpo.beta: [0.05, 0.1, "
                                       "0.2]}, and ships the best candidate (`alignflow run` ignores it)")

    @field_validator("grid")
    @classmethod
    def _grid(cls, grid: dict) -> dict:
        for key, values in grid.items():
            if not values:
                raise ValueError(f"{key}: no values; list at least one, e.g. {key}: [0.1, 0.2]")
        return grid


class RetrySpec(StageConfig):
    retries: int = Field(2, ge=0, le=20, description="extra attempts for transient failures (never for bad "
                                                     "config or data)")
    delay_seconds: float = Field(10.0, ge=0, le=3600, description="first backoff; doubles each attempt, with "
                                                                  "jitter")


class ScheduleSpec(StageConfig):
    cron: str = Field("0 2 * * *", description="when post-train/PIPELINE:nightly runs (cron syntax; default 02:00)")
    timezone: str = Field("UTC", description="IANA time zone of the cron schedule, e.g. Europe/Berlin")

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        from prefect._internal.schemas.validators import validate_cron_string  # the server's own check

        try:
            return validate_cron_string(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a cron schedule: five fields, minute hour day month weekday, "
                             "e.g. '0 2 * * *' (02:00 daily)") from None

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            close = difflib.get_close_matches(value, sorted(zoneinfo.available_timezones()), n=1)
            raise ValueError(f"{value!r} is not an IANA time zone, e.g. UTC or Europe/Berlin"
                             + (f"; did you mean {close[0]!r}?" if close else "")) from None
        return value


class WatchSpec(StageConfig):
    """Data sources the `watch-data` deployment scans; a change becomes a new dataset version and one event."""

    sources: dict[str, str] = Field(default_factory=dict, description="dataset name -> source (a folder, a file "
                                                                      "or an s3:// prefix), e.g. "
                                                                      "{demo/sft: s3://bucket/incoming/}")
    interval_seconds: float = Field(60.0, ge=5, le=86400, description="seconds between scans")
    settle_seconds: float = Field(5.0, ge=0, le=3600, description="a source must be unchanged this long before "
                                                                  "it is registered, so a burst of files "
                                                                  "becomes one version")


class ServiceSpec(StageConfig):
    """How the pipeline runs as a service: `alignflow deploy` applies it to the Prefect server."""

    nightly: ScheduleSpec = Field(default_factory=ScheduleSpec, description="the nightly retraining schedule")
    watch: WatchSpec = Field(default_factory=WatchSpec, description="new-data sensor")
    accelerator_limit: str = Field("alignflow-accelerator", description="Prefect global concurrency limit held by "
                                                                        "training, quantize and evaluate")
    accelerator_slots: int = Field(1, ge=1, le=1024, description="how many of those stages may run at once on the "
                                                                 "machines that share the limit")
    notify: Optional[str] = Field(None, pattern=BLOCK_SLUG,
                                  description="a saved Prefect notification block ('slack-webhook/alerts', "
                                                    "'custom-webhook/ops') told when a run fails or a gate rejects")


class PipelineSpec(StageConfig):
    """One pipeline: base model, data, stages and store. `alignflow run SPEC.yaml` runs it."""

    name: str = Field(pattern=NAME_PATTERN, description="lowercase letters, digits, '-', '_', '.'; prefixes "
                                                        "every artifact (demo/sft) and names the served model")
    model: str = Field(description="base model: builtin://tiny-qwen2, a local folder, "
                                   "modelscope://owner/name[@rev], hf://owner/name[@rev], or a GGUF file: "
                                   "./model.gguf, s3://bucket/model.gguf, pkg://package/model.gguf")
    model_dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="the float type a GGUF model is dequantized to (other sources keep theirs)")
    data: DataSpec = Field(default_factory=DataSpec, description="where each split comes from")
    stages: Stages = Field(default_factory=Stages, description="what to run; a stage left empty is skipped")
    store: str = Field(STORE, description="artifact store: a folder or s3://bucket/prefix")
    storage: Optional[str] = Field(None, description="for an s3:// store: a saved prefect-aws AwsCredentials "
                                                     "block to use instead of the AWS environment")
    retry: RetrySpec = Field(default_factory=RetrySpec, description="retries of transient failures")
    sweep: Optional[SweepSpec] = Field(None, description="a grid of settings for `alignflow sweep`")
    service: ServiceSpec = Field(default_factory=ServiceSpec, description="schedules, data watching, "
                                                                          "concurrency and notifications")

    def to_dict(self) -> dict:
        """Plain JSON data (flow parameters) that `parse_spec` turns back into this spec."""
        return self.model_dump(mode="json")


FRIENDLY_PATTERNS = {**FRIENDLY, BLOCK_SLUG: "must name a saved Prefect block as TYPE/NAME, e.g. slack-webhook/alerts"}


# ---- loading -------------------------------------------------------------------------------------

def load_spec(path: str | Path, overrides: list[str] = (), store: str | None = None,
              skip: list[str] = (), before_work: bool = False) -> PipelineSpec:
    """Read a YAML spec, apply `--set a.b=v` overrides, `--store` and `--skip STAGE`, validate, return it.
    Every problem (the file's, the overrides', the spec's) is reported at once, in one ConfigError;
    `before_work` adds whether what the spec names is there (flows/preflight.py)."""
    path = Path(path)
    raw, problems = read_spec_file(path), []
    for item in overrides:
        try:
            apply_override(raw, item)
        except ConfigError as exc:
            problems += exc.problems
    if store is not None:
        if store.strip():
            raw["store"] = store
        else:
            problems.append("--store: empty; pass a folder or s3://bucket/prefix, or leave --store out")
    stages = raw.get("stages") if isinstance(raw.get("stages"), dict) else {}
    for name in stages:  # in YAML, `evaluate:` with nothing after it means "on, with defaults"
        if stages[name] is None:
            stages[name] = {}
    problems += skip_stages(raw, skip)
    try:
        spec = parse_spec(raw, source=str(path), before_work=before_work)
    except ConfigError as exc:
        problems += exc.problems
    if problems:
        raise ConfigError(problems, str(path))
    return spec


def skip_stages(raw: dict, skip: list[str]) -> list[str]:
    """`--skip STAGE`: the stage is off for this run (null, as the dashboard's form sends it)."""
    problems = []
    for name in skip:
        if name == "merge":
            problems.append("--skip merge: merge is not optional: it runs when an adapter must become full weights "
                            "(for evaluate, quantize or deploy). To serve the adapter itself, set "
                            "stages.deploy.mode: adapter and leave out stages.quantize")
        elif name not in Stages.model_fields:
            close = difflib.get_close_matches(name, list(Stages.model_fields), n=1)
            problems.append(f"--skip {name}: no such stage" + (f"; did you mean {close[0]!r}?" if close else
                                                                f"; stages: {', '.join(Stages.model_fields)}"))
        elif isinstance(raw.setdefault("stages", {}), dict):
            raw["stages"][name] = None
    return problems


def parse_spec(raw: Any, source: str = "spec", before_work: bool = False) -> PipelineSpec:
    """Validate plain data (YAML, flow parameters, the dashboard's form) into a PipelineSpec, or raise one
    ConfigError listing every problem; `before_work` adds the checks of what it names (flows/preflight.py):
    the model, the data, the store, the serve env."""
    if isinstance(raw, PipelineSpec):
        raw = raw.to_dict()
    if not isinstance(raw, dict):
        raise ConfigError(f"expected a mapping, got {type(raw).__name__}", source)
    try:
        spec = PipelineSpec.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc.errors(), raw), source) from None
    problems = cross_checks(spec)
    if before_work:
        from flows.preflight import preflight

        problems += preflight(spec)
    if problems:
        raise ConfigError(problems, source)
    return spec


def cross_checks(spec: PipelineSpec) -> list[str]:
    """Rules that span fields: a stage needs its data split, a gate needs an evaluation, ..."""
    problems = unmet_needs(spec) + format_problems(spec.data)
    problems += [problem for _, config in spec.stages if config is not None for problem in config.problems()]
    problems += trainer_args_problems(spec.stages)
    problems += serving_problems(spec.stages) + gated_sets_problems(spec.stages)
    if spec.storage and not spec.store.startswith("s3://"):
        problems.append("storage: names credentials for an s3:// store, but store is a folder")
    for name in spec.service.watch.sources:
        if not is_valid("dataset", name):
            problems.append(f"service.watch.sources.{name!r}: {FRIENDLY_PATTERNS[DATASET_PATTERN]}")
    return problems


def gated_sets_problems(stages: Stages) -> list[str]:
    """The gate's max_drop and max_set_regression name sets the evaluation has."""
    if stages.gate is None or stages.evaluate is None:
        return []
    names = ["qa"] + [s.name for s in stages.evaluate.sets]
    rules = {"max_drop": stages.gate.max_drop, "max_set_regression": stages.gate.max_set_regression}
    return [f"stages.gate.{rule}.{name}: no such evaluation set; stages.evaluate has {', '.join(names)}"
            for rule, drops in rules.items() for name in drops if name not in names]


def trainer_args_problems(stages: Stages) -> list[str]:
    """Keys of a trainer's `trainer_args` that its TRL config class does not take (read from TRL's source)."""
    from tasks.trl_args import unknown_args

    return [problem for name, config in stages if getattr(config, "trl_config", None)
            for problem in unknown_args(config.trl_config, config.trainer_args, f"stages.{name}.trainer_args")]


def unmet_needs(spec: PipelineSpec) -> list[str]:
    """What each stage that runs needs, as it declares (tasks/config.py: Declaration), and the spec lacks."""
    problems, splits = [], spec.data.splits()
    for name, config in spec.stages:
        for need in config.needs() if config is not None else ():
            section, _, what = need.partition(".")
            if section == "data" and what not in splits:
                hint = " (or data.eval_fraction with data.sft)" if what == "eval" else ""
                problems.append(f"stages.{name}: needs data.{what}{hint}, which is not set")
            elif section == "stages" and getattr(spec.stages, what) is None:
                problems.append(f"stages.{name}: needs stages.{what}, which is not set")
    return problems


def policy_trainers() -> list[str]:
    """The stages that train the model to be served, in the flow's order: sft, dpo, kto, ..."""
    from tasks.config import stage_fields
    from tasks.trainer import TrainingStage

    return [name for name, kind in stage_fields(Stages).items()
            if issubclass(kind, TrainingStage) and kind.makes_policy]


def likelihood_problems(stages: Stages) -> list[str]:
    """`answer_by: likelihood` through the server needs an engine that returns the prompt's log-probabilities."""
    from serving.engine import engine_for

    if not stages.evaluate or stages.evaluate.engine != "vllm" or not stages.deploy:
        return []
    engine = engine_for(stages.deploy.engine)
    return [] if engine.prompt_logprobs else [
        f"stages.evaluate.sets[{i}].answer_by: likelihood scores each option through the server's prompt "
        f"log-probabilities, which {engine.label} does not return; set stages.evaluate.engine: llm_ckpt, or "
        "answer_by: generation" for i, s in enumerate(stages.evaluate.sets) if s.answer_by == "likelihood"]


# the stages whose settings are there unless the spec empties them: they run whenever they apply
ALWAYS_SET = tuple(name for name, info in Stages.model_fields.items() if info.default_factory is not None)


def serving_problems(stages: Stages) -> list[str]:
    """The serving engine runs the quantized format and scores options by likelihood when evaluation asks
    it to; `deploy.mode: adapter` serves the adapter the last trainer made, unquantized."""
    if problems := likelihood_problems(stages):
        return problems
    if stages.quantize:
        engine = stages.deploy.engine if stages.deploy else "vllm"
        if problems := stages.quantize.serving_problems(engine):
            return problems
    if not stages.deploy or stages.deploy.mode != "adapter":
        return []
    last = next((name for name in reversed(policy_trainers()) if getattr(stages, name) is not None), None)
    if last is None or getattr(stages, last).tuner == "full":
        what = f"stages.{last} trains full weights" if last else "no stage trains"
        return [f"stages.deploy.mode: adapter serves a LoRA adapter, but {what}; set tuner: lora on the last "
                "trainer, or deploy with mode: model"]
    if stages.quantize and stages.quantize.method != "none":
        return ["stages.deploy.mode: adapter serves the adapter on its unquantized base; stages.quantize makes "
                "full weights: drop one of them"]
    return []


def format_problems(data: DataSpec) -> list[str]:
    """A named `format:` must be one of the split's formats."""
    from tasks import formats

    problems = []
    for split in SPLITS:
        value = getattr(data, split)
        for i, item in enumerate(data.sources(split)):
            kind = "sft" if split == "eval" and data.eval is None else split
            if item.format != "auto" and item.format not in formats.names(kind):
                where = f"data.{split}" + (f"[{i}]" if isinstance(value, list) else "")
                close = difflib.get_close_matches(item.format, formats.names(kind), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                problems.append(f"{where}.format: {item.format!r} is not a {kind} format (auto, "
                                f"{', '.join(formats.names(kind))}){hint}")
    return problems


# ---- turning pydantic's errors into ours ---------------------------------------------------------

TYPE_WORDS = {"int": "an integer", "float": "a number", "string": "a string", "bool": "true or false",
              "dict": "a mapping", "model": "a mapping", "model_attributes": "a mapping", "list": "a list"}


def describe_errors(errors: list[dict], raw: dict) -> list[str]:
    """One line per problem: `path: what is wrong (the valid range or choices)`. Errors of a union's
    members (`str | list[str]`) become one line for the field."""
    problems, seen_unions = [], set()
    for err in errors:
        model, path, rest = _walk(PipelineSpec, err["loc"])
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
        if rest:  # a union member's error: report the field once
            if where not in seen_unions:
                seen_unions.add(where)
                problems.append(f"{where}: {_describe_union(model, path[-1], err['input'])}")
            continue
        problems.append(f"{where}: {_describe(err, model, path)}")
    return problems


def _walk(model, loc: tuple) -> tuple[type, list, list]:
    """Follow an error location through the models: (the model owning the last field, path, leftover).
    A leftover is a union member's tag, e.g. ('str',) for `target_modules: str | list[str]`."""
    owner, current, path = model, model, []
    for i, part in enumerate(loc):
        if _is_model(current):
            owner = current
            path.append(part)
            field = current.model_fields.get(part)
            if field is None:
                return owner, path, []
            current = _unwrap_optional(field.annotation)
        elif typing.get_origin(current) in (dict, list):
            path.append(part)  # a key or an index: on to the item's type (a model in `sets: list[EvalSet]`)
            current = _unwrap_optional(typing.get_args(current)[-1])
        else:
            return owner, path, list(loc[i:])
    return owner, path, []


def _is_model(hint) -> bool:
    return isinstance(hint, type) and issubclass(hint, StageConfig)


def _unwrap_optional(hint):
    """Optional[SFTStage] -> SFTStage; anything else unchanged."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1 else hint


def _describe(err: dict, model, path: list) -> str:
    kind, value = err["type"], err.get("input")
    if kind == "extra_forbidden":
        fields = list(model.model_fields) if model else []
        close = difflib.get_close_matches(str(path[-1]), fields, n=1)
        return "unknown field" + (f"; did you mean {close[0]!r}?" if close else f"; known fields: {', '.join(fields)}")
    if kind == "missing":
        return "required field is missing"
    if kind == "literal_error":
        choices = _choices(model, path[-1])
        close = difflib.get_close_matches(str(value), choices, n=1)
        return f"{value!r} is not one of {', '.join(map(repr, choices))}" + (
            f"; did you mean {close[0]!r}?" if close else "")
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"{value!r} is out of range (valid: {valid_range(model, path[-1])})"
    if kind == "string_pattern_mismatch":
        pattern = err.get("ctx", {}).get("pattern", "")
        return f"{value!r} {FRIENDLY_PATTERNS.get(pattern, f'does not match {pattern}')}"
    base = kind.split("_")[0] if not kind.startswith("model_attributes") else "model_attributes"
    if kind.startswith(("int", "float", "string", "bool", "dict", "list", "model")):
        word = TYPE_WORDS.get(base, TYPE_WORDS.get(kind.rsplit("_", 1)[0], base))
        if base == "list":
            word = _union_words(model, path[-1]) if model and path else "a list"
        return f"expected {word}, got {value!r}"
    if kind == "value_error":  # a model's own rule: its message says it all
        return err["msg"].removeprefix("Value error, ")
    return f"{err['msg']} (got {value!r})"


def _choices(model, field: str) -> list[str]:
    hint = model.model_fields[field].annotation if model and field in model.model_fields else None
    return [str(a) for a in typing.get_args(hint)]


def _describe_union(model, field: str, value) -> str:
    """`loss_type: 'ipoo'` -> "'ipoo' is not one of 'sigmoid', ... (or a list of them); did you mean 'ipo'?"."""
    literals = [a for a in typing.get_args(model.model_fields[field].annotation) if typing.get_origin(a) is Literal]
    if not literals or not isinstance(value, str):
        return f"expected {_union_words(model, field)}, got {value!r}"
    choices = [str(c) for c in typing.get_args(literals[0])]
    close = difflib.get_close_matches(value, choices, n=1)
    return (f"{value!r} is not one of {', '.join(map(repr, choices))} (or a list of them)"
            + (f"; did you mean {close[0]!r}?" if close else ""))


def _union_words(model, field: str) -> str:
    hint = model.model_fields[field].annotation
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false", dict: "a mapping"}
    words = []
    for option in typing.get_args(hint) or (hint,):
        if option is type(None):
            continue
        if typing.get_origin(option) is list:
            words.append(f"a list of {names.get(typing.get_args(option)[0], 'value').split(' ', 1)[-1]}s")
        else:
            words.append(names.get(option, getattr(option, "__name__", str(option))))
    return " or ".join(words)
