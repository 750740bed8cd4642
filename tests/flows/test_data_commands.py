"""`alignflow data inspect` and `alignflow data convert` as a user reads them: the detected format and the
numbers, for every format; a bad file's exit code and listing; nothing half-written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignflow.cli import main

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "Paris."}]
EXAMPLES = {  # format -> (kind, one realistic row)
    "messages": ("sft", {"messages": MESSAGES}),
    "sharegpt": ("sft", {"conversations": [{"from": "human", "value": "Capital of France?"},
                                           {"from": "gpt", "value": "Paris."}]}),
    "alpaca": ("sft", {"instruction": "Capital of France?", "input": "One word.", "output": "Paris."}),
    "query-response": ("sft", {"query": "Capital of France?", "response": "Paris.", "history": []}),
    "prompt-completion": ("sft", {"prompt": "Capital of France?", "completion": "Paris."}),
    "hh-rlhf": ("preference", {"chosen": "\n\nHuman: Capital of France?\n\nAssistant: Paris.",
                               "rejected": "\n\nHuman: Capital of France?\n\nAssistant: Lyon."}),
    "ultrafeedback": ("preference", {"instruction": "Capital of France?", "completions": [
        {"response": "Paris.", "overall_score": 9}, {"response": "Lyon.", "overall_score": 2}]}),
    "swift-rejected": ("preference", {"messages": MESSAGES, "rejected_response": "Lyon."}),
    "pairwise": ("preference", {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon."}),
    "multiple-choice": ("eval", {"question": "Capital of France?", "A": "Lyon", "B": "Paris", "C": "Nice",
                                 "D": "Lille", "answer": "B"}),
}


def variants(row: dict, n: int) -> list[dict]:
    """n distinct rows of the same shape (a number appended to every string of the row)."""
    def tag(value, i):
        if isinstance(value, str):
            return value.replace("France?", f"France? ({i})") if "France?" in value else value
        if isinstance(value, list):
            return [tag(v, i) for v in value]
        if isinstance(value, dict):
            return {k: tag(v, i) for k, v in value.items()}
        return value
    return [tag(row, i) for i in range(n)]


def inspect(capsys, *args: str) -> dict[str, str]:
    assert main(["data", "inspect", *args]) == 0
    lines = capsys.readouterr().out.splitlines()
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in lines if not line.startswith(" "))}


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_inspect_names_the_detected_format_and_counts_rows(name, tmp_path, capsys):
    kind, row = EXAMPLES[name]
    path = tmp_path / "rows.jsonl"
    rows = variants(row, 4)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows + rows[:1]))  # + one duplicate
    facts = inspect(capsys, str(path))
    assert facts["kind"].startswith(kind) and facts[f"format of {path}"] == name
    assert (facts["read"], facts["rows"], facts["duplicates"], facts["bad"]) == ("5", "4", "1", "0")


def test_inspect_measures_tokens_and_truncation_with_a_model(tmp_path, capsys):
    path = tmp_path / "chat.jsonl"
    rows = [{"query": "reverse: " + " ".join("abcdefgh"[: n]), "response": " ".join(reversed("abcdefgh"[: n]))}
            for n in range(1, 9)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    facts = inspect(capsys, str(path), "--kind", "sft", "--model", "builtin://tiny-qwen2", "--max-length", "20")
    lengths = dict(zip(*[iter(facts["tokens"].split())] * 2))
    assert int(lengths["min"]) < 20 < int(lengths["max"])
    assert 0 < int(facts["truncated at 20"]) < 8 and facts["no answer left"] == "0"
    as_json = main(["data", "inspect", str(path), "--json", "--model", "builtin://tiny-qwen2", "--max-length", "20"])
    numbers = json.loads(capsys.readouterr().out)
    assert as_json == 0 and numbers["tokens"]["truncated"] == int(facts["truncated at 20"])


def test_inspect_lists_every_problem_and_still_reports(tmp_path, capsys):
    path = tmp_path / "mixed.jsonl"
    path.write_text('{"prompt": "a", "chosen": "x", "rejected": "y"}\nnot json\n'
                    '{"prompt": "b", "chosen": "same", "rejected": "same"}\n')
    assert main(["data", "inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{path}:2: not valid JSON" in out and f"{path}:3: chosen and rejected are identical" in out
    assert "rows:" in out and "bad:" in out


def test_convert_exits_2_listing_bad_rows_and_writes_nothing(tmp_path, capsys):
    source = tmp_path / "in.jsonl"
    source.write_text('{"query": "q", "response": "a"}\n{"query": 1, "response": "a"}\n')
    out = tmp_path / "out" / "sft.jsonl"
    assert main(["data", "convert", str(source), "--kind", "sft", "-o", str(out)]) == 2
    assert f"{source}:2: 'query' must be a string" in capsys.readouterr().err
    assert not out.exists() and list(out.parent.iterdir()) == []
    assert main(["data", "convert", str(source), "--kind", "sft", "--on-bad-rows", "skip", "-o", str(out)]) == 0
    assert [json.loads(line)["messages"][0]["content"] for line in open(out)] == ["q"]
    quarantined = [json.loads(line) for line in open(tmp_path / "out" / "sft.quarantine.jsonl")]
    assert [(q["line"], q["row"]) for q in quarantined] == [(2, {"query": 1, "response": "a"})]
    assert json.loads((tmp_path / "out" / "sft.report.json").read_text())["bad"] == 1


def convert_cli(*args: str) -> int:
    return main(["data", "convert", *args])


def test_inspect_of_a_file_of_only_bad_rows_exits_2_listing_them(tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "chosen": "same", "rejected": "same"}\n'
                    '{"prompt": "b", "chosen": "x", "rejected": " "}\n')
    assert main(["data", "inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert "empty after conversion" in err and "Traceback" not in err
    assert f"{path}:1: chosen and rejected are identical" in err
    assert f"{path}:2: the answer in 'rejected' is empty" in err
    path.write_text("not json\n[1, 2]\n")
    assert main(["data", "inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:1: not valid JSON" in err and f"{path}:2: expected a JSON object, got list" in err


def test_convert_keeps_the_quarantine_when_every_row_is_bad(tmp_path, capsys):
    source = tmp_path / "in.jsonl"
    source.write_text('{"query": 1, "response": "a"}\n{"query": "q", "response": ""}\n')
    out = tmp_path / "out" / "sft.jsonl"
    assert convert_cli(str(source), "--kind", "sft", "--on-bad-rows", "skip", "-o", str(out)) == 2
    err = capsys.readouterr().err
    kept = tmp_path / "out" / "sft.quarantine.jsonl"
    assert "empty after conversion" in err and str(kept) in err and f"{source}:2: " in err
    assert [json.loads(line)["line"] for line in open(kept)] == [1, 2]
    assert sorted(p.name for p in out.parent.iterdir()) == ["sft.quarantine.jsonl"]


def test_convert_refuses_an_output_that_is_an_input(tmp_path, capsys):
    row = b'{"query": "q", "response": "a"}\n'
    source, quarantined, folder = tmp_path / "data.jsonl", tmp_path / "old.quarantine.jsonl", tmp_path / "raw"
    folder.mkdir()
    for path in (source, quarantined, folder / "part.jsonl"):
        path.write_bytes(row)
    (tmp_path / "link.jsonl").symlink_to(source)
    (tmp_path / "hard.jsonl").hardlink_to(source)
    cases = [(source, source), (source, tmp_path / "sub" / ".." / "data.jsonl"), (source, tmp_path / "link.jsonl"),
             (tmp_path / "link.jsonl", source), (source, tmp_path / "hard.jsonl"),
             (quarantined, tmp_path / "old.jsonl"),  # its quarantine would be written over the input
             (folder, folder / "clean.jsonl")]  # the next conversion of the folder would read it
    for given, out in cases:
        assert convert_cli(str(given), "--kind", "sft", "-o", str(out)) == 2, (given, out)
        err = capsys.readouterr().err
        assert err.startswith(f"error: -o {out}: would write ") and err.count("\n") == 1
    assert all(path.read_bytes() == row for path in (source, quarantined, folder / "part.jsonl"))
    assert sorted(p.name for p in folder.iterdir()) == ["part.jsonl"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl", "hard.jsonl", "link.jsonl",
                                                          "old.quarantine.jsonl", "raw"]


def test_convert_refuses_an_output_that_is_a_folder(tmp_path, capsys):
    source = tmp_path / "in.jsonl"
    source.write_text('{"query": "q", "response": "a"}\n')
    folder = tmp_path / "out.jsonl"
    folder.mkdir()
    assert convert_cli(str(source), "--kind", "sft", "-o", str(folder)) == 2
    assert capsys.readouterr().err.startswith(f"error: -o {folder}: is a folder")
    assert list(folder.iterdir()) == []


def test_convert_removes_a_quarantine_left_by_an_earlier_conversion(tmp_path, capsys):
    source = tmp_path / "in.jsonl"
    source.write_text('{"query": "q", "response": "a"}\n{"query": 1, "response": "a"}\n')
    out = tmp_path / "sft.jsonl"
    assert convert_cli(str(source), "--kind", "sft", "--on-bad-rows", "skip", "-o", str(out)) == 0
    assert (tmp_path / "sft.quarantine.jsonl").exists()
    source.write_text('{"query": "q", "response": "a"}\n')
    assert convert_cli(str(source), "--kind", "sft", "-o", str(out)) == 0
    assert not (tmp_path / "sft.quarantine.jsonl").exists()
    assert json.loads((tmp_path / "sft.report.json").read_text())["bad"] == 0


@pytest.mark.parametrize("where", ["parent-is-a-file", "proc"])
def test_convert_to_a_folder_that_cannot_be_written_is_one_line_exit_2(tmp_path, capsys, where):
    source = tmp_path / "in.jsonl"
    source.write_text('{"query": "q", "response": "a"}\n')
    out = source / "sft.jsonl" if where == "parent-is-a-file" else Path("/proc/alignflow-test/sft.jsonl")
    assert convert_cli(str(source), "--kind", "sft", "-o", str(out)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: -o {out}: cannot write in {out.parent} (") and err.count("\n") == 1


@pytest.mark.parametrize("value", ["-5", "0", "ten"])
def test_inspect_refuses_a_max_length_that_is_not_positive(tmp_path, capsys, value):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(EXAMPLES["messages"][1]) + "\n")
    with pytest.raises(SystemExit) as exit_:
        main(["data", "inspect", str(path), "--max-length", value])
    assert exit_.value.code == 2 and "--max-length" in capsys.readouterr().err
