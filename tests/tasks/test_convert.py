"""Dataset conversion: accepted shapes, canonical output, and errors that point at the row."""

from __future__ import annotations

import json

import pytest

from alignflow.errors import DataError, SourceError
from tasks.builtin import reverse_task
from tasks.convert import load_source, to_eval, to_preference, to_sft


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_common_sft_shapes_become_messages():
    expected = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert to_sft({"query": "q", "response": "a"})["messages"] == expected
    assert to_sft({"instruction": "q", "output": "a"})["messages"] == expected
    sharegpt = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    assert to_sft(sharegpt)["messages"] == expected
    assert to_sft({"messages": expected}) == {"messages": expected}


def test_preference_strings_become_conversations_and_identical_pairs_are_refused():
    row = to_preference({"prompt": "p", "chosen": "good", "rejected": "bad"})
    assert row["prompt"] == [{"role": "user", "content": "p"}]
    assert row["rejected"] == [{"role": "assistant", "content": "bad"}]
    with pytest.raises(ValueError, match="identical"):
        to_preference({"prompt": "p", "chosen": "x", "rejected": "x"})


def test_eval_rows_from_messages():
    assert to_eval({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}) == \
        {"question": "q", "answer": "a"}


def test_malformed_row_names_file_line_and_reason(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [{"query": "q", "response": "a"}, {"messages": [{"role": "robot"}]}])
    with pytest.raises(DataError) as err:
        load_source("sft", str(path))
    assert f"{path}:2:" in str(err.value) and "role" in str(err.value)


def test_invalid_json_names_the_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{not json\n')
    with pytest.raises(DataError, match=r"p.jsonl:2: not valid JSON"):
        load_source("preference", str(path))


def test_folder_of_files_is_read_in_order(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"question": "1", "answer": "x"}])
    write_jsonl(tmp_path / "b.jsonl", [{"question": "2", "answer": "y"}])
    assert [r["question"] for r in load_source("eval", str(tmp_path))] == ["1", "2"]


def test_unknown_builtin_and_missing_path_are_source_errors(tmp_path):
    with pytest.raises(SourceError, match="builtin://reverse/sft"):
        load_source("sft", "builtin://nope/sft")
    with pytest.raises(SourceError, match="no such file"):
        load_source("sft", str(tmp_path / "absent.jsonl"))


def test_builtin_splits_do_not_overlap():
    splits = reverse_task.splits()
    train = {r["messages"][0]["content"] for r in splits["sft"]}
    pref = {r["prompt"][0]["content"] for r in splits["preference"]}
    evals = {r["question"] for r in splits["eval"]}
    assert not (train & evals) and not (pref & evals) and not (train & pref)
    assert len(evals) == reverse_task.SIZES["eval"]
