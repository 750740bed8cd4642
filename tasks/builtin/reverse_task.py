"""The synthetic task `reverse`: the model must write a sequence of letters backwards.

>>> example(["a", "c", "b"])
{'messages': [{'role': 'user', 'content': 'reverse: a c b'}, {'role': 'assistant', 'content': 'b c a'}]}

Train and eval splits are drawn from disjoint letter sequences, so the eval split measures
generalisation, not recall. Everything is seeded: the same files come out on every machine.
"""

from __future__ import annotations

import random

ALPHABET = "abcdefgh"
LENGTHS = (3, 4, 5)  # short enough to learn in a minute on two cores, long enough to be scored fairly
SIZES = {"sft": 3000, "preference": 1200, "eval": 200}
SEED = 1234


def prompt_of(letters: list[str]) -> str:
    return "reverse: " + " ".join(letters)


def answer_of(letters: list[str]) -> str:
    return " ".join(reversed(letters))


def example(letters: list[str]) -> dict:
    return {"messages": [{"role": "user", "content": prompt_of(letters)},
                         {"role": "assistant", "content": answer_of(letters)}]}


def _all_sequences(rng: random.Random) -> list[list[str]]:
    seen, out = set(), []
    while len(out) < sum(SIZES.values()):
        letters = [rng.choice(ALPHABET) for _ in range(rng.choice(LENGTHS))]
        if (key := "".join(letters)) not in seen:
            seen.add(key)
            out.append(letters)
    return out


def _wrong_answer(letters: list[str], rng: random.Random) -> str:
    """A plausible mistake: the letters unreversed, a letter swapped, or one dropped."""
    mistakes = [list(letters), list(reversed(letters))]
    mistakes[1][rng.randrange(len(letters))] = rng.choice([c for c in ALPHABET])
    mistakes.append(list(reversed(letters))[:-1])
    candidates = [" ".join(m) for m in mistakes if " ".join(m) != answer_of(letters)]
    return rng.choice(candidates)


def splits() -> dict[str, list[dict]]:
    """{'sft': [...messages rows], 'preference': [...prompt/chosen/rejected rows], 'eval': [...question/answer]}"""
    rng = random.Random(SEED)
    sequences = _all_sequences(rng)
    sft = sequences[: SIZES["sft"]]
    pref = sequences[SIZES["sft"]: SIZES["sft"] + SIZES["preference"]]
    evals = sequences[SIZES["sft"] + SIZES["preference"]:]
    return {
        "sft": [example(s) for s in sft],
        "preference": [{"prompt": [{"role": "user", "content": prompt_of(s)}],
                        "chosen": [{"role": "assistant", "content": answer_of(s)}],
                        "rejected": [{"role": "assistant", "content": _wrong_answer(s, rng)}]} for s in pref],
        "eval": [{"question": prompt_of(s), "answer": answer_of(s)} for s in evals],
    }


QUESTION = {"en": "What is '{letters}' written backwards?", "zh": "把“{letters}”倒过来写，结果是什么？",
            "task": "reverse: {letters}"}  # the task's own prompt: for answer_by likelihood, options as answers


def mcq(language: str, count: int = 40) -> list[dict]:
    """Multiple-choice questions on held-out sequences, in the CEval/CMMLU columns (id, question, A-D,
    answer: a letter); the wrong options are the plausible mistakes of the preference split."""
    rng = random.Random(f"{SEED}-{language}")
    rows = []
    for i, letters in enumerate(_all_sequences(random.Random(SEED))[-count:]):
        right = answer_of(letters)
        wrong = {" ".join(letters), " ".join(sorted(letters)), " ".join(reversed(letters[1:])) + " " + letters[0]}
        while len(wrong - {right}) < 3:
            wrong.add(" ".join(rng.sample(ALPHABET, len(letters))))
        options = [right] + rng.sample(sorted(wrong - {right}), 3)
        rng.shuffle(options)
        rows.append({"id": i, "question": QUESTION[language].format(letters=" ".join(letters)),
                     **dict(zip("ABCD", options)), "answer": "ABCD"[options.index(right)]})
    return rows


def corpus() -> list[str]:
    """Text the built-in tokenizer is trained on: every prompt and answer the task can produce."""
    rng = random.Random(SEED)
    return [prompt_of(s) + "\n" + answer_of(s) for s in _all_sequences(rng)]
