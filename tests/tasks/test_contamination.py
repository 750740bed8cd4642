"""Finding evaluation rows inside training rows: 13-grams after normalisation, short rows whole."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alignflow.errors import DataError
from tasks.contamination import N, EvalIndex, EvalSets, Match, words
from tasks.convert import ConvertRules, DataSource, convert_sources, describe

PASSAGE = ("The quick brown fox jumps over the lazy dog while the farmer counts his sheep in the "
           "morning light")  # 19 words


def index_of(*texts: str) -> EvalIndex:
    index = EvalIndex()
    for row, text in enumerate(texts):
        index.add("qa", row, text)
    return index


def test_a_short_question_copied_recased_and_respaced_is_found_but_not_inside_another():
    index = index_of("reverse: a b c", "reverse: b h g f f")
    assert index.find(["REVERSE :   b  H g\tf f"]) == Match("qa", 1, "reverse: b h g f f")
    assert index.find(["reverse: b h g f f x"]) is None  # another question that begins the same way
    assert index.find(["reverse: a b"]) is None


def test_a_long_passage_is_found_by_any_13_words_of_it_and_not_by_12():
    index = index_of(PASSAGE)
    w = PASSAGE.split()
    inside = "Some preamble. " + " ".join(w[3:3 + N]).upper() + " -- and more text after it."
    assert index.find(["unrelated", inside]) == Match("qa", 0, PASSAGE)
    assert index.find([" ".join(w[3:3 + N - 1])]) is None


def test_an_empty_or_punctuation_only_row_is_never_indexed_nor_matched():
    index = index_of("", "?!  ...")
    assert len(index) == 0
    assert index.find(["", "!!"]) is None


def test_the_first_row_keeps_a_shared_ngram():
    index = index_of(PASSAGE, PASSAGE + " again")
    assert index.find([PASSAGE]).row == 0


WORDS = st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyzéß0123456789", min_size=1, max_size=8),
                 min_size=1, max_size=30)
SEPARATORS = st.sampled_from([" ", "  ", "\t", " \n ", ", ", " - ", "; ", "\u00a0", "! "])


@settings(max_examples=200, deadline=None)
@given(WORDS, st.data())
def test_any_copy_with_other_case_spacing_and_punctuation_is_found(w, data):
    original = " ".join(w)
    seps = [data.draw(SEPARATORS) for _ in w]
    copy = "".join(part.upper() if data.draw(st.booleans()) else part for part in
                   (x for pair in zip(w, seps) for x in pair))
    assert words(copy) == words(original)
    found = index_of(original).find([copy])
    assert found is not None and found.text == original


@settings(max_examples=200, deadline=None)
@given(WORDS, WORDS)
def test_a_row_sharing_no_word_with_the_eval_set_is_never_found(eval_words, train_words):
    eval_set = {y for e in eval_words for y in words(e)}
    train = [x for x in train_words if not set(words(x)) & eval_set]
    if not train:
        return
    assert index_of(" ".join(eval_words)).find([" ".join(train)]) is None


def test_normalisation_drops_punctuation_and_folds_case():
    assert words("Straße, STRASSE!") == ("strasse", "strasse")
    assert words("Reverse:  A\u00a0b-C!") == ("reverse", "a", "b", "c")


# ---- in the convert stage --------------------------------------------------------------------------

EVAL = [{"question": f"reverse: {q}", "answer": q[::-1]}
        for q in ("a b c", "d e f g", "h i j", "k l m n o")]


def chat(question: str, answer: str = "x") -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def eval_index(tmp_path, folders: dict | None = None) -> EvalIndex:
    split = tmp_path / "eval-split"
    split.mkdir(exist_ok=True)
    (split / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in EVAL))
    return EvalSets(None, folders or {}).index(split, tmp_path / "sets")


def convert_against(tmp_path, rows: list[dict], contamination: str, kind: str = "sft", **sets):
    data = tmp_path / "new.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / f"out-{contamination}"
    report = convert_sources(kind, [DataSource(source=str(data))], ConvertRules(contamination=contamination), out,
                             tmp_path / "scratch", evals=eval_index(tmp_path, **sets))
    return report.as_dict(), out


def read(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_drop_quarantines_a_recased_respaced_copy_with_the_eval_row_it_holds(tmp_path):
    rows = [chat("REVERSE:  D   E f G", "g f e d"), chat("reverse: d e f"), chat("please reverse: a b c now"),
            chat("z", "Reverse : k-l-m-n-o")]
    counts, out = convert_against(tmp_path, rows, "drop")
    assert (counts["rows"], counts["contaminated"], counts["bad"]) == (2, 2, 0)
    assert [r["messages"][0]["content"] for r in read(out / "data.jsonl")] == ["reverse: d e f",
                                                                               "please reverse: a b c now"]
    quarantined = read(out / "quarantine.jsonl")
    assert [(q["line"], q["matches"]) for q in quarantined] == [
        (1, {"set": "qa", "row": 2, "text": "reverse: d e f g"}),
        (4, {"set": "qa", "row": 4, "text": "reverse: k l m n o"})]  # an answer that is a question counts too
    assert quarantined[0]["reason"] == "contaminated: holds row 2 of evaluation set qa: 'reverse: d e f g'"
    assert quarantined[0]["row"] == rows[0]
    assert "2 holding evaluation rows" in describe(counts)


def test_fail_lists_each_row_and_writes_nothing(tmp_path):
    with pytest.raises(DataError) as err:
        convert_against(tmp_path, [chat("x"), chat("Reverse: H I J")], "fail")
    assert f"{tmp_path / 'new.jsonl'}:2: holds row 3 of evaluation set qa: 'reverse: h i j'" in str(err.value)
    assert "data.contamination: drop" in str(err.value)
    assert not (tmp_path / "out-fail" / "data.jsonl").exists()


@pytest.mark.parametrize("mode", ["warn", "off"])
def test_warn_keeps_and_counts_them_off_does_not_look(tmp_path, mode):
    counts, out = convert_against(tmp_path, [chat("x"), chat("Reverse: H I J")], mode)
    assert counts["rows"] == 2 and counts["contaminated"] == (mode == "warn")
    assert not (out / "quarantine.jsonl").exists()


def test_preference_prompts_and_mcq_folder_questions_are_checked(tmp_path):
    folder = tmp_path / "mcq"
    folder.mkdir()
    (folder / "trivia_val.csv").write_text("id,question,A,B,C,D,answer\n0,Which planet is largest?,a,b,c,d,A\n")
    pair = {"prompt": [{"role": "user", "content": "which PLANET is largest"}],
            "chosen": [{"role": "assistant", "content": "Jupiter"}],
            "rejected": [{"role": "assistant", "content": "Mars"}]}
    other = dict(pair, prompt=[{"role": "user", "content": "Which planet is smallest?"}])
    counts, out = convert_against(tmp_path, [pair, other], "drop", kind="preference",
                                  folders={"trivia": str(folder)})
    assert counts["contaminated"] == 1
    assert read(out / "quarantine.jsonl")[0]["matches"] == {"set": "trivia/trivia", "row": 2,
                                                            "text": "Which planet is largest?"}
