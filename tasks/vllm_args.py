"""vLLM's command line as the deploy stage builds it: the options the stage decides itself, and the rule
that `extra_args` may not set them again (vLLM keeps the last value, so `--host 0.0.0.0` after ours would
bind every interface, keyless).

>>> extra_args_problems(["--tensor-parallel-size", "2"])
[]
>>> extra_args_problems(["--host=0.0.0.0"])[0][:62]
'stages.deploy.extra_args: --host is set by the deploy stage; u'
"""

from __future__ import annotations

# vLLM options the deploy stage sets itself, and what to set instead: given again in extra_args they would win
# (vLLM keeps the last) and undo what the stage decided, e.g. `--host 0.0.0.0` binds every interface, keyless
DECIDED_OPTIONS = {
    "--host": "use stages.deploy.host",
    "--port": "use stages.deploy.port",
    "--api-key": "use stages.deploy.api_key: env:VARIABLE or secret:BLOCK (on the command line the key would "
                 "show in `ps`, the serve record, the deployment artifact, its lineage and the flow run's "
                 "parameters)",
    "--served-model-name": "deploy serves the model under the pipeline's name",
    "--model": "deploy serves the model the stage is given",
    "--chat-template": "deploy passes the template the model was trained with (its folder's)",
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


def extra_args_problems(args: list[str]) -> list[str]:
    """What in `extra_args` would override an option the deploy stage sets, read as vLLM's parser reads it:
    `_` is `-` (`--api_key`), `--opt=value` and `--opt.key value` name `--opt`, and an unambiguous prefix
    names the option (`--ho` is `--host`). Values are never quoted back: one may be a secret."""
    problems = []
    for i, arg in enumerate(args):
        if arg == "--" or (i == 0 and is_value(arg)):
            what = "what follows" if arg == "--" else "it"
            problems.append(f"stages.deploy.extra_args[{i}]: vLLM would read {what} as a positional model, and "
                            "deploy gives the model; start with an option, e.g. ['--tensor-parallel-size', '2']")
            break
        problems += [problem for problem in [decided_option(arg)] if problem]
    return problems


def is_value(arg: str) -> bool:
    """Not an option: '2', 'a=b', '-1'."""
    return not arg.startswith("-") or arg == "-" or arg[1:2].isdigit() or arg[1:2] == "."


def decided_option(arg: str) -> str | None:
    """The problem with `arg` if it names an option deploy sets: '--host=0.0.0.0' -> '... --host ...'."""
    if not arg.startswith("--"):
        return None  # no short option of vLLM's stands for one deploy sets
    written = arg.split("=", 1)[0]
    name = "--" + written[2:].split(".", 1)[0].replace("_", "-")
    hits = [option for option in DECIDED_OPTIONS if option.startswith(name)] if len(name) > 2 else []
    if not hits:
        return None
    fixes = "; ".join(DECIDED_OPTIONS[hit] for hit in hits)
    if written == hits[0]:
        return f"stages.deploy.extra_args: {written} is set by the deploy stage; {fixes}"
    return (f"stages.deploy.extra_args: vLLM reads {written} as {' or '.join(hits)} ('_' as '-', and an "
            f"unambiguous prefix as the whole option), which the deploy stage sets; {fixes}")
