"""The rule that `extra_args` may not set again what deploy decides, for any engine whose server reads its
command line with argparse: the engine keeps the last value, so `--host 0.0.0.0` after deploy's own would
bind every interface, keyless.

>>> DECIDED = {"--host": "use stages.deploy.host", "--port": "use stages.deploy.port"}
>>> extra_args_problems(["--tensor-parallel-size", "2"], DECIDED, "vLLM")
[]
>>> extra_args_problems(["--host=0.0.0.0"], DECIDED, "vLLM")[0][:62]
'stages.deploy.extra_args: --host is set by the deploy stage; u'
"""

from __future__ import annotations

# what every engine's server is told by deploy itself, and what to set instead
DECIDED = {
    "--host": "use stages.deploy.host",
    "--port": "use stages.deploy.port",
    "--api-key": "use stages.deploy.api_key: env:VARIABLE or secret:BLOCK (on the command line the key would "
                 "show in `ps`, the serve record, the deployment artifact, its lineage and the flow run's "
                 "parameters)",
    "--served-model-name": "deploy serves the model under the pipeline's name",
    "--chat-template": "deploy passes the template the model was trained with (its folder's)",
}


def extra_args_problems(args: list[str], decided: dict[str, str], label: str) -> list[str]:
    """What in `extra_args` would override an option in `decided` (option: what to set instead), read as
    argparse reads it: `_` is `-` (`--api_key`), `--opt=value` and `--opt.key value` name `--opt`, and an
    unambiguous prefix names the option (`--ho` is `--host`). Values are never quoted back: one may be a
    secret."""
    problems = []
    for i, arg in enumerate(args):
        if arg == "--" or (i == 0 and is_value(arg)):
            what = "what follows" if arg == "--" else "it"
            problems.append(f"stages.deploy.extra_args[{i}]: {label} would read {what} as a positional model, "
                            "and deploy gives the model; start with an option, e.g. ['--tensor-parallel-size', "
                            "'2']")
            break
        problems += [problem for problem in [decided_option(arg, decided, label)] if problem]
    return problems


def is_value(arg: str) -> bool:
    """Not an option: '2', 'a=b', '-1'."""
    return not arg.startswith("-") or arg == "-" or arg[1:2].isdigit() or arg[1:2] == "."


def decided_option(arg: str, decided: dict[str, str], label: str) -> str | None:
    """The problem with `arg` if it names an option deploy sets: '--host=0.0.0.0' -> '... --host ...'."""
    if not arg.startswith("--"):
        return None  # no short option of the engines' stands for one deploy sets
    written = arg.split("=", 1)[0]
    name = "--" + written[2:].split(".", 1)[0].replace("_", "-")
    hits = [option for option in decided if option.startswith(name)] if len(name) > 2 else []
    if not hits:
        return None
    fixes = "; ".join(decided[hit] for hit in hits)
    if written == hits[0]:
        return f"stages.deploy.extra_args: {written} is set by the deploy stage; {fixes}"
    return (f"stages.deploy.extra_args: {label} reads {written} as {' or '.join(hits)} ('_' as '-', and an "
            f"unambiguous prefix as the whole option), which the deploy stage sets; {fixes}")
