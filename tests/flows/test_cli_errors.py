"""One path for user errors: every command, given something it cannot use, exits 2 with one `error:` message
and no traceback, and writes nothing. The table below must cover every subcommand the parser knows."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from alignflow.cli import build_parser, main

MISSING = "/nonexistent/alignflow"


def subcommands(parser: argparse.ArgumentParser, prefix: tuple = ()) -> set[tuple[str, ...]]:
    """Every leaf command the parser knows, e.g. ('artifacts', 'ls')."""
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not actions:
        return {prefix}
    return {leaf for name, sub in actions[0].choices.items() for leaf in subcommands(sub, (*prefix, name))}


def bad_calls(tmp: Path) -> dict[tuple[str, ...], list[str]]:
    """For each command, an argument list it must refuse (ALIGNFLOW_HOME is a file in these tests)."""
    spec = tmp / "spec.yaml"
    spec.write_text("name: p\nmodel: builtin://tiny-qwen2\ndata: {sft: ./no-such.jsonl}\nstages: {sft: {}}\n")
    return {
        ("run",): ["run", str(spec), "--store", str(tmp / "store")],
        ("demo",): ["demo", "--set", "stages.sft.epochs=-1", "--store", str(tmp / "store")],
        ("plan",): ["plan", str(spec), "--store", str(tmp / "store")],
        ("sweep",): ["sweep", str(spec), "--grid", "stages.sft.epochs", "--store", str(tmp / "store")],
        ("artifacts", "ls"): ["artifacts", "--store", MISSING, "ls"],
        ("artifacts", "show"): ["artifacts", "--store", MISSING, "show", "demo/sft@1"],
        ("artifacts", "get"): ["artifacts", "--store", MISSING, "get", "demo/sft", str(tmp / "out")],
        ("artifacts", "promote"): ["artifacts", "--store", MISSING, "promote", "demo/sft@1", "prod"],
        ("artifacts", "rollback"): ["artifacts", "--store", MISSING, "rollback", "demo/sft", "prod"],
        ("artifacts", "verify"): ["artifacts", "--store", MISSING, "verify"],
        ("artifacts", "history"): ["artifacts", "--store", MISSING, "history", "demo"],
        ("storage", "up"): ["storage", "up"],
        ("storage", "down"): ["storage", "down"],
        ("storage", "status"): ["storage", "status"],
        ("server", "up"): ["server", "up"],
        ("server", "down"): ["server", "down"],
        ("server", "status"): ["server", "status"],
        ("server", "logs"): ["server", "logs"],
        ("deploy",): ["deploy", str(tmp / "no-such.yaml")],
        ("undeploy",): ["undeploy", "Not A Pipeline"],
        ("data", "add"): ["data", "add", "demo/x\n", str(spec)],
        ("data", "scan"): ["data", "scan", str(tmp / "no-such.yaml")],
        ("data", "inspect"): ["data", "inspect", str(tmp / "no-such.jsonl")],
        ("data", "convert"): ["data", "convert", str(spec), "--kind", "sft", "-o", str(tmp / "out.txt")],
        ("serve", "ls"): ["serve", "ls"],
        ("serve", "url"): ["serve", "url", "../../x"],
        ("serve", "logs"): ["serve", "logs", "../../x"],
        ("serve", "stop"): ["serve", "stop", "../../x"],
        ("serve", "rollback"): ["serve", "rollback", "../../x"],
        ("serve", "k8s"): ["serve", "k8s", "../../x"],
        ("ray", "up"): ["ray", "up"],
        ("ray", "down"): ["ray", "down"],
        ("ray", "status"): ["ray", "status"],
        ("ray", "k8s"): ["ray", "k8s", str(tmp / "no-such.yaml")],
    }


def test_the_table_covers_every_command(tmp_path):
    assert subcommands(build_parser()) == set(bad_calls(tmp_path))


@pytest.mark.parametrize("command", sorted(bad_calls(Path("/tmp"))), ids=" ".join)
def test_every_command_refuses_bad_input_with_one_message_and_exit_2(command, tmp_path, monkeypatch, capsys):
    home = tmp_path / "home-is-a-file"
    home.write_text("")
    monkeypatch.setenv("ALIGNFLOW_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    argv = bad_calls(tmp_path)[command]
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


@pytest.mark.parametrize("argv", [["data", "inspect", "x", "--max-length", "-5"], ["server", "logs", "-n", "0"],
                                  ["server", "up", "--slots", "0"], ["server", "up", "--port", "70000"],
                                  ["frobnicate"]])
def test_argument_types_are_checked_by_the_parser(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_a_home_that_cannot_be_created_is_named(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("ALIGNFLOW_HOME", str(blocker / "below"))
    assert main(["serve", "ls"]) == 2
    assert "ALIGNFLOW_HOME" in capsys.readouterr().err
    assert os.path.isfile(blocker)


def test_debug_shows_the_error_with_its_cause_chained(tmp_path):
    from alignflow.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        main(["--debug", "plan", str(tmp_path / "no-such.yaml")])
    assert isinstance(err.value.__cause__, FileNotFoundError)
