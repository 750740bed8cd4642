"""Row formats: each known dataset layout, how it is recognised, and how one row becomes canonical.

Canonical rows (what the trainers and the evaluation read):
    sft         {"messages": [{"role", "content"[, "tool_calls" | "name" | "tool_call_id"]}, ...][, "tools": [...]]}
    preference  {"prompt": [messages], "chosen": [assistant message], "rejected": [assistant message]}
                or, unpaired (KTO), {"prompt": [messages], "completion": [assistant message], "label": true|false}
    eval        {"question": "...", "answer": "..."[, "system": "..."][, "choices": ["...", ...]]}

A file's format is detected from its first row (`detect`) unless the spec names one; `columns` renames the
file's fields to the names below first. A row that does not fit raises RowError, which the convert stage
turns into `file:line: reason` (or a quarantined row, with `on_bad_rows: skip`).

>>> convert("sft", "alpaca", {"instruction": "Add", "input": "2+2", "output": "4"})["messages"][0]["content"]
'Add\\n\\n2+2'
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Callable

ROLES = ("system", "user", "assistant", "tool")
KINDS = ("sft", "preference", "eval")


class RowError(ValueError):
    """Why one row cannot be converted; the caller adds the file and line."""


class SkipRow(Exception):
    """A row that is valid but carries no training signal (an UltraFeedback tie): counted, not an error."""


@dataclass(frozen=True)
class Format:
    name: str
    kind: str
    fields: str  # what a user sees in `data inspect` and in errors
    detect: Callable[[dict], bool]
    convert: Callable[[dict], dict]
    description: str  # markdown: where the layout comes from and how its fields are read (docs/DATA.md's table)


# ---- messages ------------------------------------------------------------------------------------

def _text(value, where: str) -> str:
    if not isinstance(value, str):
        raise RowError(f"'{where}' must be a string, got {type(value).__name__}")
    return value


def _message(m, where: str) -> dict:
    if not isinstance(m, dict):
        raise RowError(f"'{where}' must be a {{role, content}} mapping, got {type(m).__name__}")
    role = m.get("role")
    if role not in ROLES:
        raise RowError(f"'{where}.role' is {role!r}; expected one of {', '.join(ROLES)}")
    content = m.get("content")
    if content is None and m.get("tool_calls"):
        content = ""
    out = {"role": role, "content": _text(content, f"{where}.content")}
    if m.get("tool_calls"):
        if role != "assistant" or not isinstance(m["tool_calls"], list):
            raise RowError(f"'{where}.tool_calls' must be a list on an assistant message")
        out["tool_calls"] = [_tool_call(c, f"{where}.tool_calls[{i}]") for i, c in enumerate(m["tool_calls"])]
    for key in ("name", "tool_call_id"):
        if role == "tool" and isinstance(m.get(key), str):
            out[key] = m[key]
    return out


def _tool_call(call, where: str) -> dict:
    """OpenAI's {"type": "function", "function": {"name", "arguments"}}; arguments become a mapping."""
    function = call.get("function", call) if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise RowError(f"'{where}' must name a function: {{function: {{name, arguments}}}}")
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            raise RowError(f"'{where}.arguments' is not valid JSON: {arguments[:60]!r}") from None
    out = {"type": "function", "function": {"name": function["name"], "arguments": arguments}}
    if isinstance(call.get("id"), str):
        out["id"] = call["id"]
    return out


def listed(value):
    """A list written as JSON text (a CSV cell, a string column) decoded; anything else unchanged."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            decoded = json.loads(value)
        except json.JSONDecodeError:
            return value
        return decoded if isinstance(decoded, list) else value
    return value


def conversation(value):
    """A message list, also from JSON text; a plain answer string stays a string."""
    decoded = listed(value)
    is_messages = isinstance(decoded, list) and decoded and all(isinstance(m, dict) and "role" in m for m in decoded)
    return decoded if is_messages else value


def messages(value, where: str = "messages") -> list[dict]:
    value = listed(value)
    if not isinstance(value, list) or not value:
        raise RowError(f"'{where}' must be a non-empty list of {{role, content}} messages")
    return [_message(m, f"{where}[{i}]") for i, m in enumerate(value)]


def _chat(msgs: list[dict], where: str) -> list[dict]:
    """Checks every SFT conversation gets: it ends with the assistant, and user and assistant alternate."""
    if msgs[-1]["role"] != "assistant":
        raise RowError(f"'{where}' must end with an assistant message: there is nothing to learn otherwise")
    previous = None
    for i, m in enumerate(msgs):
        if m["role"] == "system" and i != 0:
            raise RowError(f"'{where}[{i}]': a system message may only come first")
        if m["role"] in ("user", "assistant") and not m["content"].strip() and not m.get("tool_calls"):
            raise RowError(f"'{where}[{i}]': the {m['role']} message is empty")
        if m["role"] in ("user", "assistant") and m["role"] == previous and not m.get("tool_calls"):
            raise RowError(f"'{where}[{i}]': two {m['role']} messages in a row; turns must alternate")
        previous = m["role"] if m["role"] != "tool" else "user"
    return msgs


def _tools(row: dict) -> dict:
    tools = row.get("tools")
    if isinstance(tools, str) and tools.strip():
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError:
            raise RowError("'tools' is a string but not valid JSON") from None
    if not tools:
        return {}
    if not isinstance(tools, list):
        raise RowError("'tools' must be a list of function schemas")
    return {"tools": tools}


def _history(row: dict, key: str = "history") -> list[dict]:
    """Earlier turns as [[query, response], ...] (Alpaca, ms-swift)."""
    out = []
    for i, pair in enumerate(listed(row.get(key)) or []):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise RowError(f"'{key}[{i}]' must be a [query, response] pair")
        out += [{"role": "user", "content": _text(pair[0], f"{key}[{i}][0]")},
                {"role": "assistant", "content": _text(pair[1], f"{key}[{i}][1]")}]
    return out


def _system(row: dict) -> list[dict]:
    system = row.get("system")
    return [{"role": "system", "content": _text(system, "system")}] if system else []


def _single_turn(row: dict, prompt: str, answer: str) -> dict:
    msgs = _system(row) + _history(row) + [{"role": "user", "content": _text(row[prompt], prompt)},
                                           {"role": "assistant", "content": _text(row[answer], answer)}]
    return {"messages": _chat(msgs, "messages")}


# ---- SFT -----------------------------------------------------------------------------------------

def sft_messages(row: dict) -> dict:
    return {"messages": _chat(messages(row["messages"]), "messages"), **_tools(row)}


SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "function_call": "assistant", "observation": "tool", "tool": "tool"}


def sft_sharegpt(row: dict) -> dict:
    turns = listed(row["conversations"])
    if not isinstance(turns, list) or not turns:
        raise RowError("'conversations' must be a non-empty list of {from, value} turns")
    msgs = _system(row)
    for i, turn in enumerate(turns):
        where = f"conversations[{i}]"
        if not isinstance(turn, dict) or turn.get("from") not in SHAREGPT_ROLES:
            got = turn.get("from") if isinstance(turn, dict) else turn
            raise RowError(f"'{where}.from' is {got!r}; expected one of {', '.join(SHAREGPT_ROLES)}")
        value = _text(turn.get("value"), f"{where}.value")
        if turn["from"] == "function_call":  # one call, or a list of parallel calls (LLaMA-Factory)
            calls = _json(value, where)
            calls = calls if isinstance(calls, list) else [calls]
            msgs.append({"role": "assistant", "content": "",
                         "tool_calls": [_tool_call(c, f"{where}.value[{j}]") for j, c in enumerate(calls)]})
        else:
            msgs.append({"role": SHAREGPT_ROLES[turn["from"]], "content": value})
    return {"messages": _chat(msgs, "conversations"), **_tools(row)}


def _json(text: str, where: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise RowError(f"'{where}.value' of a function_call must be JSON {{name, arguments}}") from None


def sft_alpaca(row: dict) -> dict:
    instruction = _text(row["instruction"], "instruction")
    extra = row.get("input") or ""
    prompt = f"{instruction}\n\n{_text(extra, 'input')}" if extra else instruction
    return _single_turn(dict(row, instruction=prompt), "instruction", "output")


def _pair(prompt: str, answer: str) -> Callable[[dict], dict]:
    return lambda row: _single_turn(row, prompt, answer)


# ---- preference ----------------------------------------------------------------------------------

def _answer(value, where: str) -> list[dict]:
    """One final assistant message, from a string or a message list ending with it."""
    if isinstance(value, str):
        return [{"role": "assistant", "content": value}]
    msgs = messages(value, where)
    if msgs[-1]["role"] != "assistant":
        raise RowError(f"'{where}' must end with an assistant message")
    return [msgs[-1]]


def _as_prompt(value, where: str) -> list[dict]:
    value = conversation(value)
    return [{"role": "user", "content": _filled(value, where)}] if isinstance(value, str) else messages(value, where)


def _pairwise(prompt: list[dict], chosen: list[dict], rejected: list[dict],
              fields: tuple[str, str, str] = ("prompt", "chosen", "rejected")) -> dict:
    """`fields`: where the row holds the prompt, chosen and rejected, for the errors."""
    if not prompt or prompt[-1]["role"] not in ("user", "tool"):
        raise RowError("the prompt must end with a user message")
    _said(prompt, fields[0])
    _answered(chosen, fields[1])
    _answered(rejected, fields[2])
    if chosen[0]["content"] == rejected[0]["content"]:
        raise RowError("chosen and rejected are identical: the pair teaches nothing")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _said(prompt: list[dict], where: str) -> None:
    """Every user and assistant turn of a prompt says something (a tool call counts)."""
    for i, m in enumerate(prompt):
        if m["role"] in ("user", "assistant") and not m["content"].strip() and not m.get("tool_calls"):
            raise RowError(f"'{where}[{i}]': the {m['role']} message is empty")


def _answered(answer: list[dict], where: str) -> None:
    """A preference answer says something (or calls a tool): an empty one teaches nothing."""
    if not answer[0]["content"].strip() and not answer[0].get("tool_calls"):
        raise RowError(f"the answer in '{where}' is empty: it must say something")


def _filled(text: str, where: str) -> str:
    if not text.strip():
        raise RowError(f"'{where}' is empty")
    return text


def _split_conversations(chosen: list[dict], rejected: list[dict]) -> list[dict]:
    """Full conversations that share their turns up to the last answer: the shared turns are the prompt."""
    if chosen[:-1] != rejected[:-1]:
        raise RowError("chosen and rejected conversations differ before their last answer; they must share "
                       "the prompt turns")
    return chosen[:-1]


def pref_pairwise(row: dict) -> dict:
    """prompt/chosen/rejected, strings or conversations; without `prompt`, or with a `prompt` repeated inside
    full conversations (UltraFeedback binarized), the shared turns are the prompt."""
    chosen_raw, rejected_raw = conversation(row["chosen"]), conversation(row["rejected"])
    full = [isinstance(v, list) and any(isinstance(m, dict) and m.get("role") != "assistant" for m in v)
            for v in (chosen_raw, rejected_raw)]
    if all(full):
        chosen_msgs, rejected_msgs = messages(chosen_raw, "chosen"), messages(rejected_raw, "rejected")
        prompt = _split_conversations(chosen_msgs, rejected_msgs)
        return _pairwise(prompt, _answer(chosen_msgs, "chosen"), _answer(rejected_msgs, "rejected"),
                         ("chosen", "chosen", "rejected"))
    if "prompt" not in row:
        raise RowError("'prompt' is missing, and chosen/rejected are not full conversations to take it from")
    return _pairwise(_as_prompt(row["prompt"], "prompt"), _answer(chosen_raw, "chosen"),
                     _answer(rejected_raw, "rejected"))


def pref_swift(row: dict) -> dict:
    """ms-swift: `messages` ending with the chosen answer, plus `rejected_response`."""
    msgs = messages(row["messages"])
    if msgs[-1]["role"] != "assistant":
        raise RowError("'messages' must end with the chosen assistant answer")
    rejected = [{"role": "assistant", "content": _text(row["rejected_response"], "rejected_response")}]
    fields = ("messages", f"messages[{len(msgs) - 1}]", "rejected_response")
    return _pairwise(msgs[:-1], msgs[-1:], rejected, fields)


HH_TURN = re.compile(r"\n\n(Human|Assistant): ?")


def hh_transcript(text: str, where: str) -> list[dict]:
    """'\\n\\nHuman: hi\\n\\nAssistant: hello' -> user/assistant messages."""
    text = _text(text, where)
    parts = HH_TURN.split(text if text.startswith("\n\n") else "\n\n" + text)
    if parts[0].strip() or len(parts) < 3:
        raise RowError(f"'{where}' is not a Human:/Assistant: transcript")
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[speaker], "content": content.strip()} for speaker, content in zip(parts[1::2], parts[2::2])]


def pref_hh(row: dict) -> dict:
    chosen, rejected = hh_transcript(row["chosen"], "chosen"), hh_transcript(row["rejected"], "rejected")
    for name, msgs in (("chosen", chosen), ("rejected", rejected)):
        if msgs[-1]["role"] != "assistant":
            raise RowError(f"'{name}' must end with an Assistant: turn")
    return _pairwise(_split_conversations(chosen, rejected), chosen[-1:], rejected[-1:],
                     ("chosen", "chosen", "rejected"))


def _rating(completion: dict, i: int) -> float:
    score = completion.get("overall_score")
    if isinstance(score, (int, float)):
        return _score(score, f"completions[{i}].overall_score")
    ratings = [a.get("Rating") for a in (completion.get("annotations") or {}).values() if isinstance(a, dict)]
    ratings = [_score(r, f"completions[{i}].annotations") for r in ratings
               if isinstance(r, (int, float)) or (isinstance(r, str) and r.isdigit())]
    if not ratings:
        raise RowError(f"'completions[{i}]' has no overall_score and no annotation ratings")
    return sum(ratings) / len(ratings)


def _score(value, where: str) -> float:
    try:
        return float(value)
    except OverflowError:
        raise RowError(f"'{where}' is {str(value)[:20]}..., too large for a rating") from None


def pref_ultrafeedback(row: dict) -> dict:
    """An instruction with several rated completions: the best against the worst. Ties carry no preference
    and are skipped (counted in the report)."""
    completions = listed(row["completions"])
    if not isinstance(completions, list) or sum(isinstance(c, dict) for c in completions) < 2:
        raise RowError("'completions' must list at least two rated answers, each {response, overall_score} or "
                       "{response, annotations}")
    scored = sorted(((_rating(c, i), i) for i, c in enumerate(completions) if isinstance(c, dict)), reverse=True)
    (best, b), (worst, w) = scored[0], scored[-1]
    if best == worst:
        raise SkipRow("all completions are rated the same")
    best, worst = f"completions[{b}].response", f"completions[{w}].response"
    return _pairwise([{"role": "user", "content": _filled(_text(row["instruction"], "instruction"), "instruction")}],
                     [{"role": "assistant", "content": _text(completions[b].get("response"), best)}],
                     [{"role": "assistant", "content": _text(completions[w].get("response"), worst)}],
                     ("instruction", best, worst))


LABELS = {True: True, False: False, "true": True, "false": False, "1": True, "0": False,  # 1 == True, 0 == False
          "good": True, "bad": False, "yes": True, "no": False}


def pref_unpaired(row: dict) -> dict:
    """One answer judged good or bad (a thumbs up or down): KTO's unpaired feedback."""
    label = row["label"].strip().lower() if isinstance(row["label"], str) else row["label"]
    if label not in LABELS or isinstance(label, float):
        raise RowError(f"'label' is {row['label']!r}; expected true/false (or 1/0, good/bad)")
    prompt = _as_prompt(row["prompt"], "prompt")
    if prompt[-1]["role"] not in ("user", "tool"):
        raise RowError("the prompt must end with a user message")
    _said(prompt, "prompt")
    completion = _answer(conversation(row["completion"]), "completion")
    _answered(completion, "completion")
    return {"prompt": prompt, "completion": completion, "label": LABELS[label]}


# ---- eval ----------------------------------------------------------------------------------------

LETTERS = "ABCDEFGHIJ"
QA_FIELDS = (("question", "answer"), ("query", "response"), ("prompt", "completion"), ("instruction", "output"))


def eval_qa(row: dict) -> dict:
    for q, a in QA_FIELDS:
        if q in row and a in row:
            answer = str(row[a]) if isinstance(row[a], (int, float)) and not isinstance(row[a], bool) else row[a]
            out = {"question": _filled(_text(row[q], q), q), "answer": _filled(_text(answer, a), a)}
            return out | ({"system": _text(row["system"], "system")} if row.get("system") else {})
    msgs = sft_messages(row)["messages"] if "messages" in row else sft_sharegpt(row)["messages"]
    users = [m for m in msgs if m["role"] == "user"]
    system = [m["content"] for m in msgs if m["role"] == "system"]
    if not users:
        raise RowError("the conversation has no user message to ask as the question")
    return {"question": users[-1]["content"], "answer": msgs[-1]["content"],
            **({"system": system[0]} if system else {})}


def eval_choice(row: dict) -> dict:
    """Multiple choice, CEval/CMMLU style: question, options A-D (or a list), the answer's letter."""
    row = {k.lower(): v for k, v in row.items()}
    options = listed(row.get("options", row.get("choices")))
    if options is None:
        options = [row[letter.lower()] for letter in LETTERS if letter.lower() in row]
    if not isinstance(options, list) or not 2 <= len(options) <= len(LETTERS):
        raise RowError(f"a multiple-choice row needs 2 to {len(LETTERS)} options (A, B, ... or an 'options' list), "
                       f"got {len(options) if isinstance(options, list) else type(options).__name__}")
    options = [str(o) if isinstance(o, (int, float)) else _text(o, "options") for o in options]
    answer = row.get("answer")
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(options):
        answer = LETTERS[answer]
    answer = answer.strip().upper() if isinstance(answer, str) else answer
    if answer not in LETTERS[: len(options)]:
        raise RowError(f"'answer' is {row.get('answer')!r}; expected one of {', '.join(LETTERS[:len(options)])}")
    lines = [_text(row["question"], "question")] + [f"{LETTERS[i]}. {o}" for i, o in enumerate(options)]
    return {"question": "\n".join(lines) + "\nAnswer:", "answer": answer, "choices": options}


# ---- the registry --------------------------------------------------------------------------------

def _has(*keys: str) -> Callable[[dict], bool]:
    return lambda row: all(k in row for k in keys)


def _is_hh(row: dict) -> bool:
    return isinstance(row.get("chosen"), str) and "\n\nAssistant:" in row["chosen"] and "prompt" not in row


def _is_choice(row: dict) -> bool:
    keys = {k.lower() for k in row}
    return "question" in keys and "answer" in keys and ({"a", "b"} <= keys or "options" in keys or "choices" in keys)


FORMATS = [
    Format("messages", "sft", "messages[, tools]", _has("messages"), sft_messages,
           description="OpenAI chat messages: roles system, user, assistant and tool; assistant `tool_calls`; "
                       "function schemas in `tools`"),
    Format("sharegpt", "sft", "conversations (from/value)[, system, tools]", _has("conversations"), sft_sharegpt,
           description="ShareGPT and LLaMA-Factory: `{from, value}` turns, `from` one of human, gpt, system, "
                       "function_call, observation"),
    Format("alpaca", "sft", "instruction/input/output[, system, history]", _has("instruction", "output"),
           sft_alpaca,
           description="`input` (may be empty) follows the instruction in the user's turn; `history` holds earlier "
                       "turns as [[query, response], ...]"),
    Format("query-response", "sft", "query/response[, system, history]", _has("query", "response"),
           _pair("query", "response"), description="ms-swift's single turn; `history` as in alpaca"),
    Format("prompt-completion", "sft", "prompt/completion", _has("prompt", "completion"),
           _pair("prompt", "completion"), description="one turn: the prompt is the user's, the completion the answer"),
    Format("question-answer", "sft", "question/answer", _has("question", "answer"), _pair("question", "answer"),
           description="one turn, as prompt-completion"),
    Format("hh-rlhf", "preference", "chosen/rejected Human:/Assistant: transcripts", _is_hh, pref_hh,
           description='Anthropic HH-RLHF: full "\\n\\nHuman: ... \\n\\nAssistant: ..." transcripts; the shared '
                       "turns are the prompt"),
    Format("ultrafeedback", "preference", "instruction + rated completions", _has("instruction", "completions"),
           pref_ultrafeedback,
           description="UltraFeedback: completions rated by `overall_score` or their annotations' ratings; the best "
                       "against the worst, ties skipped and counted"),
    Format("swift-rejected", "preference", "messages + rejected_response", _has("messages", "rejected_response"),
           pref_swift, description="ms-swift: `messages` end with the chosen answer, `rejected_response` is the other"),
    Format("pairwise", "preference", "[prompt/]chosen/rejected (strings or conversations)",
           _has("chosen", "rejected"), pref_pairwise,
           description="TRL: strings or message lists; without `prompt` (or with one repeated inside full "
                       "conversations, as UltraFeedback binarized has) the shared turns are the prompt"),
    Format("unpaired", "preference", "prompt/completion/label", _has("prompt", "completion", "label"), pref_unpaired,
           description="KTO's unpaired feedback: one answer judged good or bad (a thumbs up or down); `label` is "
                       "true/false, 1/0, good/bad or yes/no"),
    Format("multiple-choice", "eval", "question, A/B/C/D (or options), answer letter", _is_choice, eval_choice,
           description="CEval, CMMLU (capitalized keys), MMLU: 2 to 10 options `A`, `B`, ... or an "
                       "`options`/`choices` list; the answer as a letter or an index"),
    Format("qa", "eval", "question/answer (or any SFT format)",
           lambda row: any(_has(q, a)(row) for q, a in QA_FIELDS) or "messages" in row or "conversations" in row,
           eval_qa,
           description="also query/response, prompt/completion or instruction/output, with an optional `system`; "
                       "from an SFT conversation, the last user turn and the last answer"),
]
BY_NAME = {(f.kind, f.name): f for f in FORMATS}


def names(kind: str) -> list[str]:
    return [f.name for f in FORMATS if f.kind == kind]


def find(kind: str, name: str) -> Format:
    if (kind, name) not in BY_NAME:
        raise KeyError(f"format {name!r} is not a {kind} format; {kind} formats: {', '.join(names(kind))}")
    return BY_NAME[(kind, name)]


def detect(kind: str, row: dict) -> Format | None:
    """The first format of `kind` whose fields the row has."""
    return next((f for f in FORMATS if f.kind == kind and f.detect(row)), None)


def expected_fields(kind: str) -> str:
    return "; ".join(f"{f.name}: {f.fields}" for f in FORMATS if f.kind == kind)


def rename(row: dict, columns: dict[str, str]) -> dict:
    """`columns: {their_field: our_field}` applied to one row."""
    return {columns.get(k, k): v for k, v in row.items()} if columns else row


def convert(kind: str, name: str, row: dict) -> dict:
    fmt = find(kind, name)
    try:
        return fmt.convert(row)
    except KeyError as exc:  # a field the format needs is missing from this row
        raise RowError(f"missing field {exc.args[0]!r} ({name} rows have {fmt.fields})") from None
