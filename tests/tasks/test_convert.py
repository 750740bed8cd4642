"""Dataset conversion: every row format and file type into canonical rows, with the roles, turn order and
preference side of each answer checked; bad rows named by file and line; the eval carve-out; several sources."""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from alignflow.errors import ConfigError, DataError
from tasks.builtin import reverse_task
from tasks.convert import ConvertRules, DataSource, convert_sources

_names = itertools.count()


# ---- helpers -------------------------------------------------------------------------------------

def jsonl_text(rows: list) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def table_text(rows: list[dict], delimiter: str) -> str:
    """CSV/TSV as spreadsheets and pandas write them: nested values as JSON cells, missing ones empty."""
    fields = list(dict.fromkeys(k for r in rows for k in r))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fields, delimiter=delimiter, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: v if isinstance(v, str) else json.dumps(v, ensure_ascii=False) for k, v in r.items()})
    return buffer.getvalue()


def write(path: Path, rows: list, lines: bool = False) -> Path:
    """Rows as the file type the name says (.jsonl, .json, .csv, .tsv, .parquet, any + .gz); `lines`: JSON lines
    whatever the name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    name = path.name.removesuffix(".gz")
    if name.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
        return path
    if name.endswith(".json") and not lines:
        text = json.dumps(rows, ensure_ascii=False, indent=2)
    elif name.endswith((".csv", ".tsv")):
        text = table_text(rows, "\t" if name.endswith(".tsv") else ",")
    else:
        text = jsonl_text(rows)
    data = text.encode()
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@dataclass
class Converted:
    rows: list[dict]
    counts: dict  # Report.as_dict()
    out: Path

    @property
    def formats(self) -> list[str]:
        return [f for s in self.counts["sources"] for f in s["formats"].values()]


def convert_files(tmp_path: Path, kind: str, *sources: Path | DataSource, **rules) -> Converted:
    specs = [s if isinstance(s, DataSource) else DataSource(source=str(s)) for s in sources]
    out = tmp_path / f"out-{next(_names)}"
    report = convert_sources(kind, specs, ConvertRules(**rules), out, tmp_path / "scratch")
    return Converted(read_jsonl(out / "data.jsonl"), report.as_dict(), out)


def convert_rows(tmp_path: Path, kind: str, rows: list, name: str = "data.jsonl", **source) -> Converted:
    path = write(tmp_path / f"in-{next(_names)}" / name, rows)
    return convert_files(tmp_path, kind, DataSource(source=str(path), **source))


def failure(tmp_path: Path, kind: str, *sources: Path | DataSource, **rules) -> str:
    with pytest.raises(DataError) as err:
        convert_files(tmp_path, kind, *sources, **rules)
    return str(err.value)


def turns(msgs: list[dict]) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in msgs]


def pairs(rows: list[dict]) -> list[tuple[list, str, str]]:
    """Each preference row as (prompt turns, chosen answer, rejected answer); one assistant message per side."""
    out = []
    for r in rows:
        assert [m["role"] for m in r["chosen"] + r["rejected"]] == ["assistant", "assistant"]
        out.append((turns(r["prompt"]), r["chosen"][0]["content"], r["rejected"][0]["content"]))
    return out


# ---- SFT formats ---------------------------------------------------------------------------------

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_current_weather", "description": "Get the current weather in a given location",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"},
                                                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["location"]}}}


def test_openai_messages_keep_system_turn_order_and_tool_calls(tmp_path):
    chat = {"messages": [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "What is the capital of Australia?"},
        {"role": "assistant", "content": "Canberra."},
        {"role": "user", "content": "And its population?"},
        {"role": "assistant", "content": "About 470,000 people (2023)."}]}
    tools = {"tools": [WEATHER_TOOL], "messages": [
        {"role": "user", "content": "What's the weather like in Boston right now?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_abc123", "type": "function", "function": {
            "name": "get_current_weather", "arguments": "{\"location\": \"Boston, MA\", \"unit\": \"celsius\"}"}}]},
        {"role": "tool", "tool_call_id": "call_abc123", "name": "get_current_weather",
         "content": "{\"temperature\": 22, \"condition\": \"sunny\"}"},
        {"role": "assistant", "content": "It is sunny in Boston, 22 °C."}]}
    result = convert_rows(tmp_path, "sft", [chat, tools])
    assert result.formats == ["messages"]
    assert result.rows[0] == chat
    assert result.rows[1] == {"tools": [WEATHER_TOOL], "messages": [
        {"role": "user", "content": "What's the weather like in Boston right now?"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "call_abc123", "type": "function", "function": {
            "name": "get_current_weather", "arguments": {"location": "Boston, MA", "unit": "celsius"}}}]},
        {"role": "tool", "tool_call_id": "call_abc123", "name": "get_current_weather",
         "content": "{\"temperature\": 22, \"condition\": \"sunny\"}"},
        {"role": "assistant", "content": "It is sunny in Boston, 22 °C."}]}


def test_sharegpt_roles_function_calls_and_observations(tmp_path):
    vicuna = {"id": "identity_7", "conversations": [
        {"from": "system", "value": "A chat between a curious user and an artificial intelligence assistant."},
        {"from": "human", "value": "Who wrote 'Pride and Prejudice'?"},
        {"from": "gpt", "value": "Jane Austen, in 1813."},
        {"from": "human", "value": "Name another of her novels."},
        {"from": "gpt", "value": "Emma."}]}
    glaive = {"system": "You can call functions.", "tools": json.dumps([WEATHER_TOOL["function"]]), "conversations": [
        {"from": "human", "value": "Is it raining in Paris?"},
        {"from": "function_call", "value": json.dumps({"name": "get_current_weather",
                                                       "arguments": {"location": "Paris"}})},
        {"from": "observation", "value": "{\"condition\": \"light rain\"}"},
        {"from": "gpt", "value": "Yes, there is light rain in Paris."}]}
    result = convert_rows(tmp_path, "sft", [vicuna, glaive])
    assert result.formats == ["sharegpt"]
    assert turns(result.rows[0]["messages"]) == [
        ("system", "A chat between a curious user and an artificial intelligence assistant."),
        ("user", "Who wrote 'Pride and Prejudice'?"), ("assistant", "Jane Austen, in 1813."),
        ("user", "Name another of her novels."), ("assistant", "Emma.")]
    assert result.rows[1] == {"tools": [WEATHER_TOOL["function"]], "messages": [
        {"role": "system", "content": "You can call functions."},
        {"role": "user", "content": "Is it raining in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "get_current_weather", "arguments": {"location": "Paris"}}}]},
        {"role": "tool", "content": "{\"condition\": \"light rain\"}"},
        {"role": "assistant", "content": "Yes, there is light rain in Paris."}]}


def test_alpaca_input_system_and_history(tmp_path):
    rows = [
        {"instruction": "Give three tips for staying healthy.", "input": "",
         "output": "1. Eat a balanced diet.\n2. Exercise regularly.\n3. Get enough sleep."},
        {"instruction": "Translate the sentence into French.", "input": "The cat sleeps on the sofa.",
         "output": "Le chat dort sur le canapé.", "system": "You are a professional translator.",
         "history": [["Translate 'good morning' into French.", "Bonjour."],
                     ["And 'good night'?", "Bonne nuit."]]}]
    result = convert_rows(tmp_path, "sft", rows)
    assert result.formats == ["alpaca"]
    assert turns(result.rows[0]["messages"]) == [
        ("user", "Give three tips for staying healthy."),
        ("assistant", "1. Eat a balanced diet.\n2. Exercise regularly.\n3. Get enough sleep.")]
    assert turns(result.rows[1]["messages"]) == [
        ("system", "You are a professional translator."),
        ("user", "Translate 'good morning' into French."), ("assistant", "Bonjour."),
        ("user", "And 'good night'?"), ("assistant", "Bonne nuit."),
        ("user", "Translate the sentence into French.\n\nThe cat sleeps on the sofa."),
        ("assistant", "Le chat dort sur le canapé.")]


@pytest.mark.parametrize("fmt, row, expected", [
    ("query-response",
     {"system": "You are a helpful assistant.", "query": "How many legs does a spider have?",
      "response": "Eight.", "history": [["Is a spider an insect?", "No, it is an arachnid."]]},
     [("system", "You are a helpful assistant."), ("user", "Is a spider an insect?"),
      ("assistant", "No, it is an arachnid."), ("user", "How many legs does a spider have?"), ("assistant", "Eight.")]),
    ("prompt-completion",
     {"prompt": "Write a haiku about autumn.", "completion": "Crimson leaves drifting\nwhispers of the cooling wind\n"
                                                             "the year exhales slow"},
     [("user", "Write a haiku about autumn."),
      ("assistant", "Crimson leaves drifting\nwhispers of the cooling wind\nthe year exhales slow")]),
    ("question-answer",
     {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
                  "How many clips did Natalia sell altogether in April and May?",
      "answer": "Natalia sold 48/2 = 24 clips in May.\nAltogether she sold 48+24 = 72 clips.\n#### 72"},
     [("user", "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
               "How many clips did Natalia sell altogether in April and May?"),
      ("assistant", "Natalia sold 48/2 = 24 clips in May.\nAltogether she sold 48+24 = 72 clips.\n#### 72")]),
])
def test_single_turn_sft_formats(tmp_path, fmt, row, expected):
    result = convert_rows(tmp_path, "sft", [row])
    assert result.formats == [fmt]
    assert result.rows == [{"messages": [{"role": r, "content": c} for r, c in expected]}]


# ---- preference formats --------------------------------------------------------------------------

def test_pairwise_strings_and_conversations(tmp_path):
    strings = {"prompt": "Explain why the sky is blue in one sentence.",
               "chosen": "Air molecules scatter short blue wavelengths of sunlight more than red ones.",
               "rejected": "Because it reflects the ocean."}
    conversation = {"prompt": [{"role": "system", "content": "Answer as a careful chemist."},
                               {"role": "user", "content": "Can I mix bleach and ammonia to clean?"}],
                    "chosen": [{"role": "assistant", "content": "No: together they release toxic chloramine gas."}],
                    "rejected": [{"role": "assistant", "content": "Yes, it makes a stronger cleaner."}]}
    full = {"chosen": [{"role": "user", "content": "What is 15% of 80?"}, {"role": "assistant", "content": "12."}],
            "rejected": [{"role": "user", "content": "What is 15% of 80?"}, {"role": "assistant", "content": "15."}]}
    result = convert_rows(tmp_path, "preference", [strings, conversation, full])
    assert result.formats == ["pairwise"]
    assert pairs(result.rows) == [
        ([("user", "Explain why the sky is blue in one sentence.")],
         "Air molecules scatter short blue wavelengths of sunlight more than red ones.",
         "Because it reflects the ocean."),
        ([("system", "Answer as a careful chemist."), ("user", "Can I mix bleach and ammonia to clean?")],
         "No: together they release toxic chloramine gas.", "Yes, it makes a stronger cleaner."),
        ([("user", "What is 15% of 80?")], "12.", "15.")]


def test_swift_messages_with_rejected_response(tmp_path):
    row = {"messages": [{"role": "system", "content": "You are a helpful assistant."},
                        {"role": "user", "content": "Tell me a fun fact about octopuses."},
                        {"role": "assistant", "content": "Octopuses have three hearts and blue blood."}],
           "rejected_response": "Octopuses are a kind of fish."}
    result = convert_rows(tmp_path, "preference", [row])
    assert result.formats == ["swift-rejected"]
    assert pairs(result.rows) == [
        ([("system", "You are a helpful assistant."), ("user", "Tell me a fun fact about octopuses.")],
         "Octopuses have three hearts and blue blood.", "Octopuses are a kind of fish.")]


def test_hh_rlhf_transcripts_share_the_prompt_turns(tmp_path):
    shared = ("\n\nHuman: How do I make pour-over coffee?\n\nAssistant: Heat water to about 93 °C, rinse the "
              "filter, add medium-fine grounds and pour slowly in circles.\n\nHuman: How much coffee should I use?")
    multi = {"chosen": shared + "\n\nAssistant: About 15 grams of coffee for 250 ml of water, a 1:16 ratio.",
             "rejected": shared + "\n\nAssistant: Just use as much as you like."}
    single = {"chosen": "\n\nHuman: What's a good name for a goldfish?\n\nAssistant: How about Bubbles or Goldie?",
              "rejected": "\n\nHuman: What's a good name for a goldfish?\n\nAssistant: Fish don't need names."}
    result = convert_rows(tmp_path, "preference", [multi, single])
    assert result.formats == ["hh-rlhf"]
    assert pairs(result.rows) == [
        ([("user", "How do I make pour-over coffee?"),
          ("assistant", "Heat water to about 93 °C, rinse the filter, add medium-fine grounds and pour slowly in "
                        "circles."),
          ("user", "How much coffee should I use?")],
         "About 15 grams of coffee for 250 ml of water, a 1:16 ratio.", "Just use as much as you like."),
        ([("user", "What's a good name for a goldfish?")], "How about Bubbles or Goldie?", "Fish don't need names.")]


def _ratings(*values: str) -> dict:
    aspects = ("helpfulness", "honesty", "instruction_following", "truthfulness")
    return {a: {"Rating": v, "Rationale": "..."} for a, v in zip(aspects, values)}


def test_ultrafeedback_best_against_worst_and_ties_skipped(tmp_path):
    scored = {"source": "evol_instruct", "instruction": "Name the largest planet in the solar system.",
              "models": ["gpt-4", "alpaca-7b", "llama-2-13b-chat"], "completions": [
                  {"model": "alpaca-7b", "response": "Saturn.", "overall_score": 3.0, "critique": "Wrong."},
                  {"model": "gpt-4", "response": "Jupiter, with a mass of 318 Earths.", "overall_score": 9.0},
                  {"model": "llama-2-13b-chat", "response": "Jupiter.", "overall_score": 7.5}]}
    annotated = {"source": "flan_v2", "instruction": "Is 91 a prime number?", "completions": [
        {"model": "ultralm-13b", "response": "Yes, 91 is prime.", "annotations": _ratings("1", "2", "1", "2")},
        {"model": "wizardlm-70b", "response": "No: 91 = 7 × 13.", "annotations": _ratings("5", "5", "5", "5")},
        {"model": "falcon-40b", "response": "No, it is odd.", "annotations": _ratings("3", "N/A", "4", "3")}]}
    tied = {"instruction": "Say hello.", "completions": [{"response": "Hello!", "overall_score": 8.0},
                                                         {"response": "Hi there!", "overall_score": 8.0}]}
    result = convert_rows(tmp_path, "preference", [scored, tied, annotated])
    assert result.formats == ["ultrafeedback"]
    assert pairs(result.rows) == [
        ([("user", "Name the largest planet in the solar system.")], "Jupiter, with a mass of 318 Earths.", "Saturn."),
        ([("user", "Is 91 a prime number?")], "No: 91 = 7 × 13.", "Yes, 91 is prime.")]
    c = result.counts
    assert (c["read"], c["rows"], c["skipped"], c["bad"]) == (3, 2, 1, 0)


def test_ultrafeedback_binarized(tmp_path):
    prompt = "Write a one-line Python expression that reverses a string s."
    row = {"prompt": prompt, "prompt_id": "5f0e3d", "score_chosen": 9.0, "score_rejected": 4.0,
           "chosen": [{"role": "user", "content": prompt}, {"role": "assistant", "content": "s[::-1]"}],
           "rejected": [{"role": "user", "content": prompt}, {"role": "assistant", "content": "s.reverse()"}],
           "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": "s[::-1]"}]}
    result = convert_rows(tmp_path, "preference", [row])
    assert result.formats == ["pairwise"]
    assert pairs(result.rows) == [([("user", prompt)], "s[::-1]", "s.reverse()")]


# ---- eval formats --------------------------------------------------------------------------------

def test_eval_question_answer(tmp_path):
    row = {"question": "Janet's ducks lay 16 eggs per day. She eats three for breakfast and bakes muffins with four. "
                       "She sells the rest for $2 each. How much does she make every day?",
           "answer": "16 - 3 - 4 = 9 eggs are sold.\n9 * 2 = $18.\n#### 18"}
    result = convert_rows(tmp_path, "eval", [row])
    assert result.formats == ["qa"]
    assert result.rows == [row]


CHOICE_QUESTION = "Which gas makes up most of Earth's atmosphere?"
CHOICES = ["Oxygen", "Nitrogen", "Carbon dioxide", "Argon"]
CHOICE_PROMPT = (f"{CHOICE_QUESTION}\nA. Oxygen\nB. Nitrogen\nC. Carbon dioxide\nD. Argon\nAnswer:")


@pytest.mark.parametrize("row", [
    pytest.param({"id": 12, "question": CHOICE_QUESTION, "A": "Oxygen", "B": "Nitrogen", "C": "Carbon dioxide",
                  "D": "Argon", "answer": "B", "explanation": "Nitrogen is about 78% of the atmosphere."}, id="ceval"),
    pytest.param({"Question": CHOICE_QUESTION, "A": "Oxygen", "B": "Nitrogen", "C": "Carbon dioxide", "D": "Argon",
                  "Answer": "B"}, id="cmmlu"),
    pytest.param({"question": CHOICE_QUESTION, "options": CHOICES, "answer": "b"}, id="options"),
    pytest.param({"question": CHOICE_QUESTION, "choices": CHOICES, "answer": 1}, id="mmlu-index"),
])
def test_multiple_choice_forms(tmp_path, row):
    result = convert_rows(tmp_path, "eval", [row])
    assert result.formats == ["multiple-choice"]
    assert result.rows == [{"question": CHOICE_PROMPT, "answer": "B", "choices": CHOICES}]


def test_ceval_chinese_from_csv(tmp_path):
    rows = [{"id": "0", "question": "下列哪个城市是中国的首都？", "A": "上海", "B": "北京", "C": "广州", "D": "深圳",
             "answer": "B", "explanation": "北京是中华人民共和国的首都。"}]
    result = convert_rows(tmp_path, "eval", rows, name="val.csv")
    assert result.rows == [{"question": "下列哪个城市是中国的首都？\nA. 上海\nB. 北京\nC. 广州\nD. 深圳\nAnswer:",
                            "answer": "B", "choices": ["上海", "北京", "广州", "深圳"]}]


# ---- rows that do not fit their format -----------------------------------------------------------

GOOD_CHAT = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}


@pytest.mark.parametrize("kind, good, bad, reason", [
    ("sft", GOOD_CHAT, {"messages": [{"role": "robot", "content": "beep"}]}, "'messages[0].role' is 'robot'"),
    ("sft", GOOD_CHAT, {"messages": [{"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Hi"}]},
     "must end with an assistant message"),
    ("sft", GOOD_CHAT, {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                                     {"role": "assistant", "content": "c"}]}, "two user messages in a row"),
    ("sft", GOOD_CHAT, {"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"},
                                     {"role": "assistant", "content": "c"}]}, "system message may only come first"),
    ("sft", {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
     {"conversations": [{"from": "bot", "value": "a"}]}, "'conversations[0].from' is 'bot'"),
    ("sft", {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
     {"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": "get_weather(Paris)"},
                        {"from": "observation", "value": "rain"}, {"from": "gpt", "value": "a"}]},
     "function_call must be JSON"),
    ("sft", {"instruction": "q", "output": "a"}, {"instruction": "q", "output": "a", "history": [["only a question"]]},
     "'history[0]' must be a [query, response] pair"),
    ("sft", {"instruction": "q", "output": "a"}, {"instruction": "Summarise the text.", "input": ""},
     "missing field 'output'"),
    ("preference", {"prompt": "p", "chosen": "good", "rejected": "bad"}, {"prompt": "p", "chosen": "same",
                                                                         "rejected": "same"}, "identical"),
    ("preference", {"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: b"},
     {"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: other\n\nAssistant: b"},
     "must share the prompt turns"),
    ("preference", {"instruction": "q", "completions": [{"response": "a", "overall_score": 1},
                                                        {"response": "b", "overall_score": 2}]},
     {"instruction": "q", "completions": ["a", "b"]}, "at least two rated answers"),
    ("preference", {"instruction": "q", "completions": [{"response": "a", "overall_score": 1},
                                                        {"response": "b", "overall_score": 2}]},
     {"instruction": "q", "completions": [{"response": "a"}, {"response": "b"}]}, "no overall_score"),
    ("eval", {"question": "q", "A": "x", "B": "y", "answer": "A"}, {"question": "q", "A": "x", "B": "y", "answer": "E"},
     "'answer' is 'E'; expected one of A, B"),
    ("eval", {"question": "q", "A": "x", "B": "y", "answer": "A"},
     {"question": "Pick a number.", "options": [str(n) for n in range(11)], "answer": "A"}, "needs 2 to 10 options"),
])
def test_a_row_that_does_not_fit_is_named_by_file_line_and_reason(tmp_path, kind, good, bad, reason):
    path = write(tmp_path / "bad.jsonl", [good, bad, good])
    message = failure(tmp_path, kind, path)
    assert f"{path}:2: " in message and reason in message
    assert f"{path}:1:" not in message and f"{path}:3:" not in message


# ---- file types ----------------------------------------------------------------------------------

ALPACA_ROWS = [
    {"instruction": "Rewrite the sentence in the passive voice.", "input": "The committee approved the budget.",
     "output": "The budget was approved by the committee.", "system": "", "history": []},
    {"instruction": "Explain, in two lines, what a CSV file is.", "input": "",
     "output": "A plain-text table: one record per line,\nfields separated by commas (\"comma-separated values\").",
     "system": "You are a patient teacher.", "history": [["What is a file format?", "A way of encoding data."]]},
    {"instruction": "把下面的句子翻译成英文。", "input": "我喜欢喝茶。\t😀", "output": "I like drinking tea.",
     "system": "", "history": [["你好", "你好！有什么可以帮你？"], ["Say 'hi'; then stop.", "hi"]]},
]
SHAREGPT_ROWS = [
    {"conversations": [{"from": "human", "value": "Recommend a sci-fi novel, please."},
                       {"from": "gpt", "value": "Try \"The Left Hand of Darkness\" by Ursula K. Le Guin."}]},
    {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "2 + 2?"},
                       {"from": "gpt", "value": "4"}, {"from": "human", "value": "Times 3?"},
                       {"from": "gpt", "value": "12"}]},
]
FILE_TYPES = ["data.json", "lines.json", "data.csv", "data.tsv", "data.parquet", "data.jsonl.gz",
              "data.csv.gz", "folder"]


def write_as(tmp_path: Path, file_type: str, rows: list[dict]) -> Path:
    """The rows as one file type; `lines.json` is JSON lines under a .json name; `folder` spreads them over a
    .jsonl, a .csv and a .parquet file (read in name order) next to files that are not data."""
    where = tmp_path / f"in-{next(_names)}"
    if file_type == "folder":
        write(where / "part-0.jsonl", rows[:1])
        write(where / "part-1.csv", rows[1:2])
        write(where / "sub" / "part-2.parquet", rows[2:])
        (where / "README.md").write_text("# notes\n")
        write(where / ".hidden.jsonl", [{"broken": True}])
        return where
    return write(where / file_type, rows, lines=file_type == "lines.json")


@pytest.mark.parametrize("rows", [ALPACA_ROWS, SHAREGPT_ROWS], ids=["alpaca", "sharegpt"])
@pytest.mark.parametrize("file_type", FILE_TYPES)
def test_every_file_type_gives_the_same_rows(tmp_path, rows, file_type):
    expected = convert_files(tmp_path, "sft", write_as(tmp_path, "data.jsonl", rows)).rows
    assert len(expected) == len(rows)
    result = convert_files(tmp_path, "sft", write_as(tmp_path, file_type, rows))
    assert result.rows == expected
    assert result.counts["read"] == len(rows) and result.counts["bad"] == 0
    assert set(result.formats) == {"alpaca" if "instruction" in rows[0] else "sharegpt"}


def test_alpaca_rows_through_a_file_keep_their_turns(tmp_path):
    """The reference the file-type test compares against is itself right: the CSV history column decoded."""
    rows = convert_files(tmp_path, "sft", write_as(tmp_path, "data.csv", ALPACA_ROWS)).rows
    assert turns(rows[2]["messages"]) == [("user", "你好"), ("assistant", "你好！有什么可以帮你？"),
                                          ("user", "Say 'hi'; then stop."), ("assistant", "hi"),
                                          ("user", "把下面的句子翻译成英文。\n\n我喜欢喝茶。\t😀"),
                                          ("assistant", "I like drinking tea.")]
    assert rows[1]["messages"][0] == {"role": "system", "content": "You are a patient teacher."}


def test_folder_names_each_file_and_its_format(tmp_path):
    folder = tmp_path / "mixed"
    write(folder / "a.jsonl", ALPACA_ROWS[:1])
    (folder / "b.json").write_text(json.dumps({"data": SHAREGPT_ROWS}))  # the {"data": [...]} wrapper
    result = convert_files(tmp_path, "sft", folder)
    assert result.counts["sources"][0]["formats"] == {str(folder / "a.jsonl"): "alpaca",
                                                      str(folder / "b.json"): "sharegpt"}
    assert [turns(r["messages"])[-1][1] for r in result.rows] == [
        "The budget was approved by the committee.", "Try \"The Left Hand of Darkness\" by Ursula K. Le Guin.", "12"]


# ---- format override and column mapping ----------------------------------------------------------

def test_format_override_beats_detection(tmp_path):
    row = {"instruction": "Answer as a pirate.", "output": "Arr!", "query": "Where is the treasure?",
           "response": "Buried on Skull Island, matey."}
    assert convert_rows(tmp_path, "sft", [row]).formats == ["alpaca"]
    result = convert_rows(tmp_path, "sft", [row], format="query-response")
    assert turns(result.rows[0]["messages"]) == [
        ("user", "Where is the treasure?"), ("assistant", "Buried on Skull Island, matey.")]


def test_format_override_reads_a_file_whose_first_row_is_bad(tmp_path):
    rows = [{"question": "Capital of Peru?"}, {"question": "Capital of Chile?", "answer": "Santiago"}]
    path = write(tmp_path / "qa.jsonl", rows)
    assert "are not a known eval format" in failure(tmp_path, "eval", path)
    result = convert_files(tmp_path, "eval", DataSource(source=str(path), format="qa"), on_bad_rows="skip")
    assert result.rows == [rows[1]] and result.counts["bad"] == 1


def test_columns_map_their_fields_to_ours(tmp_path):
    dolly = {"instruction": "When did Virgin Australia start operating?",
             "context": "Virgin Australia commenced services on 31 August 2000 as Virgin Blue.",
             "response": "Virgin Australia started operating on 31 August 2000.", "category": "closed_qa"}
    result = convert_rows(tmp_path, "sft", [dolly], columns={"context": "input", "response": "output"})
    assert result.formats == ["alpaca"]
    assert turns(result.rows[0]["messages"]) == [
        ("user", "When did Virgin Australia start operating?\n\nVirgin Australia commenced services on 31 August 2000 "
                 "as Virgin Blue."),
        ("assistant", "Virgin Australia started operating on 31 August 2000.")]
    arena = {"question": "Is a tomato a fruit?", "answer_a": "Botanically, yes: it is a berry.",
             "answer_b": "No, it is a vegetable."}
    result = convert_rows(tmp_path, "preference", [arena], columns={"question": "prompt", "answer_a": "chosen",
                                                                    "answer_b": "rejected"})
    assert pairs(result.rows) == [([("user", "Is a tomato a fruit?")], "Botanically, yes: it is a berry.",
                                   "No, it is a vegetable.")]


def test_unknown_layout_names_the_fields_found_and_the_known_formats(tmp_path):
    path = write(tmp_path / "dolly.jsonl", [{"instruction": "Hi", "context": "", "response": "Hello"}])
    message = failure(tmp_path, "sft", path)
    assert str(path) in message and "['context', 'instruction', 'response']" in message
    assert all(name in message for name in ("messages", "sharegpt", "alpaca", "query-response", "prompt-completion"))
    assert "columns:" in message and "format:" in message


def test_unknown_format_name_is_a_config_error(tmp_path):
    path = write(tmp_path / "d.jsonl", [GOOD_CHAT])
    with pytest.raises(ConfigError, match="'openai' is not a sft format; sft formats: messages, sharegpt"):
        convert_files(tmp_path, "sft", DataSource(source=str(path), format="openai"))


# ---- bad rows, quarantine, duplicates, encodings -------------------------------------------------

def write_mixed(path: Path) -> Path:
    """An Alpaca file with five bad rows (lines 3, 4, 5, 6, 8), a blank line and one duplicate (line 10)."""
    good = [{"instruction": f"Spell the number {n} in words.", "input": "", "output": word}
            for n, word in ((1, "one"), (2, "two"), (3, "three"), (4, "four"))]
    lines = [json.dumps(good[0]).encode(), json.dumps(good[1]).encode(),
             json.dumps({"instruction": "Spell 5.", "input": "", "output": 5}).encode(),
             b"{instruction: 'Spell 6.'}",
             json.dumps(["Spell 7.", "seven"]).encode(),
             b'{"instruction": "Spell 8.", "input": "", "output": "eight \xff"}',
             json.dumps(good[2]).encode(),
             json.dumps({"instruction": "Spell 9."}).encode(),
             b"",
             json.dumps(good[0]).encode(),
             json.dumps(good[3]).encode()]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


MIXED_BAD = {3: "'output' must be a string, got int", 4: "not valid JSON", 5: "expected a JSON object, got list",
             6: "not UTF-8: byte 0xff", 8: "missing field 'output'"}


def test_fail_lists_every_bad_row_and_writes_no_data(tmp_path):
    path = write_mixed(tmp_path / "bad.jsonl")
    message = failure(tmp_path, "sft", path)
    assert message.startswith("sft data has 5 bad rows of 10:")
    listed = [line.strip() for line in message.splitlines() if line.startswith(f"  {path}:")]
    assert [int(line.removeprefix(f"{path}:").split(":")[0]) for line in listed] == list(MIXED_BAD)
    for line, (number, reason) in zip(listed, MIXED_BAD.items()):
        assert line.startswith(f"{path}:{number}: {reason}")
    assert "on_bad_rows: skip" in message
    outs = list(tmp_path.glob("out-*"))
    assert outs and not any((o / "data.jsonl").exists() or (o / "quarantine.jsonl").exists() for o in outs)


def test_fail_lists_twenty_bad_rows_and_counts_the_rest(tmp_path):
    bad = [{"messages": [{"role": "user", "content": f"question {i}"}]} for i in range(25)]
    path = write(tmp_path / "bad.jsonl", [GOOD_CHAT] + bad)
    message = failure(tmp_path, "sft", path)
    assert "25 bad rows of 26" in message
    assert [n for n in range(1, 27) if f"{path}:{n}: " in message] == list(range(2, 22))
    assert message.count("must end with an assistant message") == 20
    assert "  ... and 5 more\n" in message


def test_skip_quarantines_exactly_the_bad_rows(tmp_path):
    path = write_mixed(tmp_path / "bad.jsonl")
    result = convert_files(tmp_path, "sft", path, on_bad_rows="skip")
    quarantined = read_jsonl(result.out / "quarantine.jsonl")
    assert [(q["file"], q["line"]) for q in quarantined] == [(str(path), n) for n in MIXED_BAD]
    assert all(q["reason"].startswith(MIXED_BAD[q["line"]]) for q in quarantined)
    assert [q["row"] for q in quarantined] == [{"instruction": "Spell 5.", "input": "", "output": 5}, None, None, None,
                                               {"instruction": "Spell 9."}]
    assert [turns(r["messages"])[-1][1] for r in result.rows] == ["one", "two", "three", "four"]
    c = result.counts
    assert (c["read"], c["rows"], c["bad"], c["duplicates"], c["skipped"]) == (10, 4, 5, 1, 0)
    assert c["rows"] + c["bad"] + c["duplicates"] + c["skipped"] == c["read"]


def test_no_quarantine_file_when_every_row_is_good(tmp_path):
    result = convert_rows(tmp_path, "sft", [GOOD_CHAT])
    assert not (result.out / "quarantine.jsonl").exists()


def test_exact_duplicates_are_removed_and_counted(tmp_path):
    row = {"prompt": "Suggest a name for a bakery.", "chosen": "Rise & Shine Bakery", "rejected": "Bakery"}
    reordered = {"rejected": "Bakery", "chosen": "Rise & Shine Bakery", "prompt": "Suggest a name for a bakery."}
    near = dict(row, rejected="Bakery!")
    result = convert_rows(tmp_path, "preference", [row, row, reordered, near, row])
    assert pairs(result.rows) == [([("user", "Suggest a name for a bakery.")], "Rise & Shine Bakery", "Bakery"),
                                  ([("user", "Suggest a name for a bakery.")], "Rise & Shine Bakery", "Bakery!")]
    assert (result.counts["read"], result.counts["duplicates"]) == (5, 3)


def test_counts_add_up_with_bad_rows_duplicates_and_ties(tmp_path):
    good = {"instruction": "Pick the better haiku.", "completions": [{"response": "A", "overall_score": 7},
                                                                     {"response": "B", "overall_score": 4}]}
    tie = {"instruction": "Say hi.", "completions": [{"response": "hi", "overall_score": 5},
                                                     {"response": "hello", "overall_score": 5}]}
    bad = {"instruction": "Say bye.", "completions": [{"response": "bye", "overall_score": 5}]}
    path = write(tmp_path / "uf.jsonl", [good, tie, bad, good, tie])
    result = convert_files(tmp_path, "preference", path, on_bad_rows="skip")
    c = result.counts
    assert (c["read"], c["rows"], c["bad"], c["duplicates"], c["skipped"]) == (5, 1, 1, 1, 2)
    assert pairs(result.rows) == [([("user", "Pick the better haiku.")], "A", "B")]


def encoded(kind: str) -> bytes:
    text = jsonl_text([GOOD_CHAT, GOOD_CHAT])
    return {"utf-16": text.encode("utf-16"), "utf-16-le": text.encode("utf-16-le"),
            "binary": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8, "gzip": gzip.compress(text.encode())}[kind]


@pytest.mark.parametrize("kind, expected", [
    ("utf-16", "{path}:1: the file is UTF-16"),
    ("utf-16-le", "{path}:1: a NUL byte: this is a binary file (or UTF-16 without a byte-order mark)"),
    ("binary", "{path}:3: a NUL byte: this is a binary file"),  # after the PNG header's two newlines
    ("gzip", "{path}: is gzip-compressed but not named .gz; rename it to {name}.gz"),
])
@pytest.mark.parametrize("name", ["train.jsonl", "train.csv", "train.json"])
def test_a_file_that_is_not_utf8_text_is_a_data_error(tmp_path, kind, expected, name):
    path = tmp_path / name
    path.write_bytes(encoded(kind))
    message = failure(tmp_path, "sft", path)
    assert expected.format(path=path, name=name) in message
    if kind != "gzip":
        assert "UTF-8" in message


def write_with_bad_byte(path: Path, rows: int, bad_line: int) -> Path:
    """Question/answer rows (a header line first in a CSV) with one byte that is not UTF-8 on `bad_line`."""
    table = [{"question": f"What is {n} plus {n}?", "answer": f"{n} plus {n} is {2 * n}."} for n in range(rows)]
    text = table_text(table, ",") if path.suffix == ".csv" else jsonl_text(table)
    lines = text.encode().split(b"\n")
    lines[bad_line - 1] = lines[bad_line - 1].replace(b" plus ", b" plus\xe9", 1)
    path.write_bytes(b"\n".join(lines))
    return path


@pytest.mark.parametrize("name", ["eval.jsonl", "eval.csv"])
def test_a_line_that_is_not_utf8_is_one_bad_row(tmp_path, name):
    """The line is the file's, even hundreds of lines (many read-ahead buffers) into the file."""
    path = write_with_bad_byte(tmp_path / name, rows=600, bad_line=450)
    result = convert_files(tmp_path, "eval", path, on_bad_rows="skip")
    [quarantined] = read_jsonl(result.out / "quarantine.jsonl")
    assert (quarantined["file"], quarantined["line"]) == (str(path), 450)
    assert quarantined["reason"].startswith("not UTF-8: byte 0xe9")
    assert (result.counts["rows"], result.counts["bad"]) == (599, 1)
    assert f"{path}:450: not UTF-8" in failure(tmp_path, "eval", path)


def test_csv_bad_bytes_in_a_multiline_cell_and_in_the_header(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_bytes(b'question,answer\nWhat is 1+1?,2\n"A poem:\nroses \xe9 red\nviolets",ok\nWhat is 2+2?,4\n')
    result = convert_files(tmp_path, "eval", path, on_bad_rows="skip")
    assert [(q["line"], q["reason"][:20]) for q in read_jsonl(result.out / "quarantine.jsonl")] == \
        [(4, "not UTF-8: byte 0xe9")]
    assert result.rows == [{"question": "What is 1+1?", "answer": "2"}, {"question": "What is 2+2?", "answer": "4"}]
    path.write_bytes(b"qu\xe9stion,answer\nWhat is 1+1?,2\n")
    assert f"{path}:1: the header is not UTF-8: byte 0xe9" in failure(tmp_path, "eval", path)


# ---- the eval carve-out --------------------------------------------------------------------------

def conversions(n: int) -> list[dict]:
    return [{"instruction": f"Convert {c} degrees Celsius to Fahrenheit.", "input": "",
             "output": f"{c} °C is {c * 9 / 5 + 32:g} °F."} for c in range(n)]


def carve(tmp_path: Path, source: Path, seed: int = 0) -> tuple[Converted, Converted]:
    rules = {"eval_fraction": 0.1, "seed": seed}
    return (convert_files(tmp_path, "sft", source, holdout="train", **rules),
            convert_files(tmp_path, "eval", source, holdout="eval", **rules))


def test_eval_carve_out_is_disjoint_complete_deterministic_and_sized(tmp_path):
    source = write(tmp_path / "c2f.jsonl", conversions(1000))
    train, evals = carve(tmp_path, source)
    train_questions = [r["messages"][0]["content"] for r in train.rows]
    eval_questions = [r["question"] for r in evals.rows]
    assert not set(train_questions) & set(eval_questions)
    assert sorted(train_questions + eval_questions) == sorted(r["instruction"] for r in conversions(1000))
    assert 60 <= len(eval_questions) <= 140
    assert (train.counts["held_out"], evals.counts["held_out"]) == (len(eval_questions), len(train_questions))
    again_train, again_eval = carve(tmp_path, source)
    assert (again_train.rows, again_eval.rows) == (train.rows, evals.rows)
    assert carve(tmp_path, source, seed=1)[1].rows != evals.rows


def test_carved_eval_rows_are_question_answer(tmp_path):
    source = write(tmp_path / "c2f.jsonl", conversions(200))
    train, evals = carve(tmp_path, source)
    answers = {r["instruction"]: r["output"] for r in conversions(200)}
    assert evals.rows and all(set(r) == {"question", "answer"} for r in evals.rows)
    assert all(r["answer"] == answers[r["question"]] for r in evals.rows)
    assert all(turns(r["messages"])[0][0] == "user" and len(r["messages"]) == 2 for r in train.rows)


# ---- several sources, max_rows -------------------------------------------------------------------

def test_max_rows_per_source(tmp_path):
    path = write(tmp_path / "c2f.jsonl", conversions(10))
    result = convert_files(tmp_path, "sft", DataSource(source=str(path), max_rows=4),
                           DataSource(source="builtin://reverse/sft", max_rows=3))
    assert [s["read"] for s in result.counts["sources"]] == [4, 3]
    assert [r["messages"][0]["content"] for r in result.rows[:4]] == [r["instruction"] for r in conversions(4)]
    assert result.rows[4:] == reverse_task.splits()["sft"][:3]
    assert result.counts["sources"][1]["formats"] == {"builtin://reverse/sft": "messages"}


def test_several_sources_in_one_split_drop_duplicates_across_them(tmp_path):
    alpaca = write(tmp_path / "a.jsonl", conversions(3))
    same_as_sharegpt = [{"conversations": [{"from": "human", "value": r["instruction"]},
                                           {"from": "gpt", "value": r["output"]}]} for r in conversions(5)[1:]]
    sharegpt = write(tmp_path / "b.csv", same_as_sharegpt)
    result = convert_files(tmp_path, "sft", alpaca, sharegpt)
    assert [r["messages"][1]["content"] for r in result.rows] == [r["output"] for r in conversions(5)]
    assert [(s["formats"], s["rows"], s["duplicates"]) for s in result.counts["sources"]] == [
        ({str(alpaca): "alpaca"}, 3, 0), ({str(sharegpt): "sharegpt"}, 2, 2)]


def test_builtin_splits_do_not_overlap():
    splits = reverse_task.splits()
    train = {r["messages"][0]["content"] for r in splits["sft"]}
    pref = {r["prompt"][0]["content"] for r in splits["preference"]}
    evals = {r["question"] for r in splits["eval"]}
    assert not (train & evals) and not (pref & evals) and not (train & pref)
    assert len(evals) == reverse_task.SIZES["eval"]


# ---- values that look like something else ------------------------------------------------------

def test_a_csv_answer_that_looks_like_json_stays_text(tmp_path):
    rows = [{"instruction": "List the first three integers as JSON", "output": "[1, 2, 3]"},
            {"instruction": "A person as JSON", "output": '{"name": "Ada"}'}]
    for name in ("data.csv", "data.jsonl"):
        converted = convert_rows(tmp_path, "sft", rows, name)
        assert [r["messages"][-1]["content"] for r in converted.rows] == ["[1, 2, 3]", '{"name": "Ada"}']


def test_one_json_lines_row_under_a_json_name_is_a_row_not_a_wrapper(tmp_path):
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    path = write(tmp_path / "one.json", [row], lines=True)
    assert convert_files(tmp_path, "sft", path).rows == [row]


def test_numeric_eval_answers_become_text_from_every_file_type(tmp_path):
    rows = [{"question": "6 * 7?", "answer": 42}, {"question": "12 / 4?", "answer": 3}]
    for name in ("e.jsonl", "e.parquet", "e.csv"):
        assert convert_rows(tmp_path, "eval", rows, name).rows == [
            {"question": "6 * 7?", "answer": "42"}, {"question": "12 / 4?", "answer": "3"}]


def test_sharegpt_parallel_function_calls_become_one_assistant_turn(tmp_path):
    calls = [{"name": "weather", "arguments": {"city": "Oslo"}}, {"name": "weather", "arguments": {"city": "Rome"}}]
    row = {"conversations": [{"from": "human", "value": "Weather in Oslo and Rome?"},
                             {"from": "function_call", "value": json.dumps(calls)},
                             {"from": "observation", "value": '["4C", "18C"]'},
                             {"from": "gpt", "value": "Oslo 4C, Rome 18C."}]}
    msgs = convert_rows(tmp_path, "sft", [row]).rows[0]["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "tool", "assistant"]
    assert [c["function"]["arguments"]["city"] for c in msgs[1]["tool_calls"]] == ["Oslo", "Rome"]


def test_an_empty_answer_is_a_bad_row(tmp_path):
    rows = [{"query": "Say nothing", "response": " "}, {"query": "Say hi", "response": "hi"}]
    message = failure(tmp_path, "sft", write(tmp_path / "e.jsonl", rows))
    assert "e.jsonl:1: 'messages[1]': the assistant message is empty" in message


# ---- rows that are one bad row each, never the end of the dataset ----------------------------------

DEEP_ARRAYS, DEEP_OBJECTS = "[" * 100_000, '{"a":' * 100_000


def test_a_line_nested_too_deeply_is_one_bad_row_kept_with_its_text(tmp_path):
    path = tmp_path / "deep.jsonl"
    path.write_text(jsonl_text([GOOD_CHAT]) + DEEP_ARRAYS + "\n" + DEEP_OBJECTS + "\n")
    result = convert_files(tmp_path, "sft", path, on_bad_rows="skip")
    assert result.rows == [GOOD_CHAT] and result.counts["bad"] == 2
    assert [(q["line"], q["reason"].split(":")[0], q["row"], q["text"])
            for q in read_jsonl(result.out / "quarantine.jsonl")] == [
        (2, "nested too deeply", None, DEEP_ARRAYS), (3, "nested too deeply", None, DEEP_OBJECTS)]
    assert f"{path}:2: nested too deeply" in failure(tmp_path, "sft", path)


def test_a_json_document_nested_too_deeply_is_a_data_error_naming_the_file(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text('[{"messages": ' + DEEP_ARRAYS)
    assert failure(tmp_path, "sft", path).startswith(f"{path}: nested too deeply")


DEEP_TOOL_CALL = {"messages": [
    {"role": "user", "content": "Call it."},
    {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f", "arguments": DEEP_ARRAYS}}]},
    {"role": "tool", "content": "done"}, {"role": "assistant", "content": "Done."}]}


@pytest.mark.parametrize("name, row", [("cell.csv", {"messages": DEEP_ARRAYS}),
                                       ("arguments.jsonl", DEEP_TOOL_CALL)], ids=["csv-cell", "tool-arguments"])
def test_a_value_nested_too_deeply_within_a_row_is_one_bad_row(tmp_path, name, row):
    """JSON text inside a row (a CSV cell, a tool call's arguments) is decoded by the format, after reading."""
    path = write(tmp_path / name, [GOOD_CHAT, row])
    result = convert_files(tmp_path, "sft", path, on_bad_rows="skip")
    assert len(result.rows) == 1 and result.counts["bad"] == 1
    assert f"{path}:" in failure(tmp_path, "sft", path) and "nested too deeply" in failure(tmp_path, "sft", path)


def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


def test_a_row_too_deep_to_write_is_a_bad_row_quarantined_as_its_text(tmp_path, monkeypatch):
    """A row that was read (e.g. from Parquet) but is deeper than JSON can write: one bad row."""
    from tasks import convert as convert_module
    from tasks.readers import Record

    deep = dict(GOOD_CHAT, tools=nested(100_000))
    monkeypatch.setattr(convert_module, "records", lambda path, shown: iter([
        Record(shown, 1, GOOD_CHAT), Record(shown, 2, deep, text="the line as read")]))
    (tmp_path / "deep.jsonl").write_text("")
    result = convert_files(tmp_path, "sft", tmp_path / "deep.jsonl", on_bad_rows="skip")
    assert result.rows == [GOOD_CHAT]
    [quarantined] = read_jsonl(result.out / "quarantine.jsonl")
    assert (quarantined["line"], quarantined["row"], quarantined["text"]) == (2, None, "the line as read")
    assert quarantined["reason"].startswith("nested too deeply")


def cut_gzip(tmp_path: Path, name: str, how: str) -> Path:
    """2000 Alpaca rows as `name`, the gzip stream cut in half or with 64 bytes damaged in its middle."""
    data = write(tmp_path / "whole" / name, conversions(2000)).read_bytes()
    data = data if data[:2] == b"\x1f\x8b" else gzip.compress(data)  # `write` leaves Parquet uncompressed
    middle = len(data) // 2
    broken = data[:middle] if how == "cut" else data[:middle] + bytes(b ^ 0xA5 for b in data[middle:middle + 64]) \
        + data[middle + 64:]
    path = tmp_path / name
    path.write_bytes(broken)
    return path


@pytest.mark.parametrize("how", ["cut", "damaged"])
@pytest.mark.parametrize("name", ["data.jsonl.gz", "data.csv.gz", "data.tsv.gz", "data.json.gz", "data.parquet.gz"])
def test_a_truncated_or_damaged_gzip_is_a_data_error_naming_file_and_line(tmp_path, name, how):
    path = cut_gzip(tmp_path, name, how)
    message = failure(tmp_path, "sft", path, on_bad_rows="skip")
    where, _, why = message.partition(": the gzip stream ends early (truncated or corrupt): ")
    assert why and message.endswith("; re-download or re-compress it") and "\n" not in message
    if name == "data.parquet.gz":  # a binary file has no lines
        assert where == str(path)
    else:
        assert where.startswith(f"{path}:") and int(where.removeprefix(f"{path}:")) > 1
    assert not any((o / "data.jsonl").exists() for o in tmp_path.glob("out-*"))


EMPTY_PREFERENCES = [  # (row, reason)
    ({"prompt": " ", "chosen": "Paris.", "rejected": "Lyon."}, "'prompt' is empty"),
    ({"prompt": "Capital of France?", "chosen": "", "rejected": "Lyon."}, "the answer in 'chosen' is empty"),
    ({"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "\n\t"}, "the answer in 'rejected' is empty"),
    ({"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " "}],
      "chosen": [{"role": "assistant", "content": "Paris."}], "rejected": [{"role": "assistant", "content": "Lyon."}]},
     "'prompt[1]': the user message is empty"),
    ({"chosen": [{"role": "user", "content": ""}, {"role": "assistant", "content": "Paris."}],
      "rejected": [{"role": "user", "content": ""}, {"role": "assistant", "content": "Lyon."}]},
     "'chosen[0]': the user message is empty"),
    ({"messages": [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": " "}],
      "rejected_response": "Lyon."}, "the answer in 'messages[1]' is empty"),
    ({"messages": [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."}],
      "rejected_response": ""}, "the answer in 'rejected_response' is empty"),
    ({"chosen": "\n\nHuman: \n\nAssistant: Paris.", "rejected": "\n\nHuman: \n\nAssistant: Lyon."},
     "'chosen[0]': the user message is empty"),
    ({"chosen": "\n\nHuman: Capital of France?\n\nAssistant: Paris.", "rejected": "\n\nHuman: Capital of France?"
                                                                                  "\n\nAssistant:  "},
     "the answer in 'rejected' is empty"),
    ({"instruction": " ", "completions": [{"response": "Paris.", "overall_score": 9},
                                          {"response": "Lyon.", "overall_score": 2}]}, "'instruction' is empty"),
    ({"instruction": "Capital of France?", "completions": [{"response": "Paris.", "overall_score": 9},
                                                           {"response": "", "overall_score": 2}]},
     "the answer in 'completions[1].response' is empty"),
    ({"prompt": "", "completion": "Paris.", "label": True}, "'prompt' is empty"),
    ({"prompt": "Capital of France?", "completion": " ", "label": False}, "the answer in 'completion' is empty"),
]


@pytest.mark.parametrize("row, reason", EMPTY_PREFERENCES, ids=[
    "prompt", "chosen", "rejected", "prompt-turn", "shared-turn", "swift-chosen", "swift-rejected", "hh-prompt",
    "hh-rejected", "uf-instruction", "uf-response", "kto-prompt", "kto-completion"])
def test_an_empty_prompt_or_answer_in_a_preference_row_is_a_bad_row(tmp_path, row, reason):
    path = write(tmp_path / "pref.jsonl", [row])
    fmt = "unpaired" if "label" in row else "auto"
    assert f"{path}:1: {reason}" in failure(tmp_path, "preference", DataSource(source=str(path), format=fmt))


@pytest.mark.parametrize("row", [
    {"messages": [{"role": "user", "content": " "}, {"role": "assistant", "content": "Hello!"}]},
    {"conversations": [{"from": "human", "value": ""}, {"from": "gpt", "value": "Hello!"}]},
    {"instruction": "\n", "input": "", "output": "Hello!"},
], ids=["messages", "sharegpt", "alpaca"])
def test_an_empty_user_message_in_sft_is_a_bad_row(tmp_path, row):
    path = write(tmp_path / "sft.jsonl", [row, GOOD_CHAT])
    message = failure(tmp_path, "sft", path)
    assert f"{path}:1: " in message and "the user message is empty" in message


def test_a_file_of_only_bad_rows_lists_them_in_the_empty_error(tmp_path):
    rows = [{"prompt": f"Question {n}?", "chosen": "same", "rejected": "same"} for n in range(25)]
    path = write(tmp_path / "pref.jsonl", rows)
    message = failure(tmp_path, "preference", path, on_bad_rows="skip")
    assert "empty after conversion" in message
    assert f"{path}:1: chosen and rejected are identical" in message and f"{path}:20: " in message
    assert "  ... and 5 more" in message
    [out] = tmp_path.glob("out-*")
    assert not (out / "data.jsonl").exists() and len(read_jsonl(out / "quarantine.jsonl")) == 25


def test_the_quarantine_keeps_the_text_of_lines_that_are_not_rows(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b'{"query": "q", "response": "a"}\n{query: "no quotes"}\n[1, 2]\n"just text \xff"\n')
    result = convert_files(tmp_path, "sft", path, on_bad_rows="skip")
    assert [(q["line"], q["row"], q["text"]) for q in read_jsonl(result.out / "quarantine.jsonl")] == [
        (2, None, '{query: "no quotes"}'), (3, None, "[1, 2]"), (4, None, '"just text \ufffd"')]


def test_a_key_given_twice_is_a_bad_row(tmp_path):
    path = tmp_path / "twice.jsonl"
    path.write_text('{"prompt": "a", "prompt": "b", "chosen": "x", "rejected": "y"}\n'
                    '{"prompt": "c", "chosen": [{"role": "assistant", "content": "x", "content": "z"}], '
                    '"rejected": "y"}\n'
                    '{"prompt": "d", "chosen": "x", "rejected": "y"}\n')
    message = failure(tmp_path, "preference", path)
    assert f"{path}:1: duplicate key 'prompt'" in message and f"{path}:2: duplicate key 'content'" in message
    assert f"{path}:3:" not in message
    document = tmp_path / "twice.json"
    document.write_text('[{"prompt": "d", "chosen": "x", "rejected": "y"},\n'
                        ' {"prompt": "a", "chosen": "x", "rejected": "y", "chosen": "z"}]')
    message = failure(tmp_path, "preference", document)
    assert f"{document}:2: duplicate key 'chosen'" in message and f"{document}:1:" not in message


def test_a_csv_header_naming_a_column_twice_is_a_data_error(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_text("question,answer,answer\nWhat is 1+1?,2,3\n")
    assert failure(tmp_path, "eval", path).startswith(f"{path}:1: the header names the column 'answer' twice")


@pytest.mark.parametrize("row", [{"question": "  ", "answer": "4"}, {"question": "2+2?", "answer": ""},
                                 {"query": "2+2?", "response": "\n"}])
def test_an_eval_row_with_an_empty_question_or_answer_is_a_bad_row(tmp_path, row):
    path = tmp_path / "eval.jsonl"
    path.write_text(json.dumps(row) + "\n" + json.dumps({"question": "1+1?", "answer": "2"}) + "\n")
    with pytest.raises(DataError, match="eval.jsonl:1: .* is empty"):
        convert_sources("eval", [DataSource(source=str(path))], ConvertRules(), tmp_path / "out", tmp_path / "s")
