"""The compare stage's reading and writing around EvalScope's judging: the pairs it is fed, the verdicts it
reads back from EvalScope's review rows (as EvalScope 1.14 writes them), the results and the dashboard view.
The judging itself runs in tests/integration/test_compare.py, against a served judge."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alignflow.errors import StageError
from tasks.compare import CompareStage, comparison_markdown, judgements, judge_settings, pairs, summary_of, verdicts


def predictions(folder, answers: dict[int, tuple[str, str]]):
    """An evaluate report's qa predictions, as EvalScope writes them."""
    (folder / "qa").mkdir(parents=True)
    with open(folder / "qa" / "predictions-alignflow_qa_default.jsonl", "w") as f:
        for index, (question, answer) in answers.items():
            f.write(json.dumps({"index": index, "messages": [
                {"role": "system", "content": "be brief"}, {"role": "user", "content": question},
                {"role": "assistant", "content": answer}],
                "model_output": {"choices": [{"message": {"role": "assistant", "content": answer}}]}}) + "\n")
    return folder


def review(index: int, original: str | None, swapped: str | None, status: str = "success") -> dict:
    """EvalScope's review row for one pair: a judge attempt per placement."""
    attempts = [{"status": status if verdict else "parse_error", "placement": placement,
                 "raw_response": json.dumps({"reasoning": "r", "verdict": verdict}) if verdict else "I cannot say",
                 "parsed_value": {"reasoning": "r", "verdict": verdict} if verdict else None}
                for placement, verdict in (("original", original), ("swapped", swapped))]
    return {"index": index, "sample_score": {"score": {"metadata": {"judge_attempts": attempts}}}}


def test_pairs_join_both_models_answers_by_question(tmp_path):
    candidate = predictions(tmp_path / "c", {0: ("q0", "c0"), 1: ("q1", "c1"), 2: ("q2", "c2")})
    production = predictions(tmp_path / "p", {1: ("q1", "p1"), 0: ("q0", "p0"), 2: ("q2", "p2")})
    assert pairs(candidate, production, None) == [
        {"index": 0, "question": "q0", "candidate": "c0", "production": "p0"},
        {"index": 1, "question": "q1", "candidate": "c1", "production": "p1"},
        {"index": 2, "question": "q2", "candidate": "c2", "production": "p2"}]
    assert [p["index"] for p in pairs(candidate, production, 2)] == [0, 1]


def test_answers_to_other_questions_are_refused_naming_the_cause(tmp_path):
    candidate = predictions(tmp_path / "c", {0: ("q0", "c0"), 1: ("q1", "c1")})
    production = predictions(tmp_path / "p", {0: ("q0", "p0"), 1: ("another question", "p1")})
    with pytest.raises(StageError, match="did not answer the same questions.*index 1.*one eval split"):
        pairs(candidate, production, None)
    with pytest.raises(StageError, match="0 in common"):
        pairs(candidate, predictions(tmp_path / "empty", {}), None)


def test_each_pair_gets_its_two_verdicts_and_the_result_they_make():
    rows = [{"index": i, "question": f"q{i}", "candidate": "c" * (i + 1), "production": "p"} for i in range(5)]
    reviews = [review(0, "A>>B", "B>A"), review(1, "A>B", "A>B"), review(2, "B>>A", "A>B"), review(3, "A=B", "A=B"),
               review(4, "A>B", None)]
    judged = judgements(rows, reviews)
    assert [j["result"] for j in judged] == ["win", "tie", "loss", "tie", None]
    assert judged[1]["candidate_as_a"] == {"verdict": "A>B", "reasoning": "r",
                                           "reply": '{"reasoning": "r", "verdict": "A>B"}'}
    assert judged[4]["candidate_as_b"] == {"verdict": None, "reasoning": "", "reply": "I cannot say"}
    summary = summary_of(judged, 0.95)
    assert (summary["wins"], summary["ties"], summary["losses"], summary["unjudged"]) == (1, 2, 1, 1)
    assert summary["win_rate"] == 0.5


def test_a_pair_the_judge_was_never_asked_about_is_unjudged():
    [row] = judgements([{"index": 0, "question": "q", "candidate": "c", "production": "p"}], [])
    assert row["result"] is None and row["candidate_as_a"]["reply"] == "(not asked)"


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                        st.sampled_from(["sample_score", "score", "metadata", "judge_attempts", "status", "placement",
                                         "parsed_value", "verdict", "reasoning", "raw_response", "original",
                                         "swapped", "success"]), inner, max_size=4), max_leaves=20))
def test_any_review_row_reads_as_verdicts_or_none(row):
    if not isinstance(row, dict):
        row = {"sample_score": row}
    for side in verdicts(row):
        assert side["verdict"] in (None, "A>>B", "A>B", "A=B", "B>A", "B>>A")
        assert isinstance(side["reasoning"], str) and isinstance(side["reply"], str)


def test_the_judge_is_greedy_and_held_to_the_verdict_schema():
    job = {"name": "judge", "url": "http://127.0.0.1:9/v1", "config": CompareStage(judge="j", max_tokens=300,
                                                                                     reasoning_chars=50).model_dump()}
    [model] = judge_settings(job)["models"]
    generation = model["generation_config"]
    assert generation["temperature"] == 0 and generation["max_tokens"] == 300
    schema = generation["extra_body"]["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["reasoning"]["maxLength"] == 50
    assert schema["properties"]["verdict"]["enum"] == ["A>>B", "A>B", "A=B", "B>A", "B>>A"]
    assert judge_settings(job)["position_swap"] == "on" and model["api_url"] == job["url"]
    free = dict(job, config=CompareStage(judge="j", structured=False).model_dump())
    assert "extra_body" not in judge_settings(free)["models"][0]["generation_config"]


def test_the_dashboard_shows_each_prompt_with_both_verdicts():
    rows = [{"index": i, "question": f"question | {i}", "candidate": "long\nanswer " * 20, "production": ""}
            for i in range(3)]
    judged = judgements(rows, [review(0, "A>B", "B>A"), review(1, "A>B", "A>B")])
    markdown = comparison_markdown(judged, summary_of(judged, 0.95), "p/eval-candidate@2", "p/eval-candidate@1",
                                   "judge-model", rows=2)
    assert "| 0 | question \\| 0 |" in markdown and "| (empty) | A>B | B>A | win |" in markdown
    assert "| A>B | A>B | tie |" in markdown and "The first 2 of 3 prompts" in markdown
    assert "win 1 / tie 1 / loss 0 of 2 (1 unjudged)" in markdown and "positions swapped" in markdown
