"""Contamination: training rows that contain an evaluation row, found the way lm-evaluation-harness's
decontamination finds them: 13-grams of words after normalisation (Unicode NFKC, case folded, punctuation
and spacing dropped), looked up in a hashed index of every evaluation row's n-grams.

An evaluation text shorter than 13 words has no 13-gram; it counts as contained when one of the training
row's texts (a prompt, an answer) is that text, normalised: a short question copied into the training
data is contamination, a short question that merely occurs inside a longer one is not.

    index = EvalIndex()
    index.add("qa", 0, "What is the capital of France? ...")
    index.find(["what is the  CAPITAL of france? ..."])   # Match(set_name="qa", row=0, text=...)

Hashes are Python's own (`hash` of a tuple of words): fast, and stable within the process that builds the
index and looks rows up in it, which is all the index is used for.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

N = 13  # words per n-gram, as lm-evaluation-harness's decontamination uses
_WORD = re.compile(r"\w+")


def words(text: str) -> tuple[str, ...]:
    """The words of `text` after normalisation.

    >>> words("Reverse:  A\\u00a0b-C!")
    ('reverse', 'a', 'b', 'c')
    """
    return tuple(_WORD.findall(unicodedata.normalize("NFKC", text).casefold()))


@dataclass(frozen=True)
class Match:
    """The evaluation row a training row overlaps: its set, its row number, its text."""

    set_name: str
    row: int
    text: str

    def describe(self) -> str:
        """>>> Match("qa", 3, "Reverse: a b c").describe()
        "holds row 3 of evaluation set qa: 'Reverse: a b c'"
        """
        shown = self.text if len(self.text) <= 80 else self.text[:77] + "..."
        return f"holds row {self.row} of evaluation set {self.set_name}: {shown!r}"


@dataclass
class EvalIndex:
    """Every evaluation row's 13-grams (and the whole of each shorter row), hashed, with the row they
    come from (the first, where rows share one)."""

    grams: dict[int, tuple[str, int]] = field(default_factory=dict)
    short: dict[tuple[str, ...], tuple[str, int]] = field(default_factory=dict)
    texts: dict[tuple[str, int], str] = field(default_factory=dict)

    def add(self, set_name: str, row: int, text: str) -> None:
        w = words(text)
        if not w:
            return
        self.texts.setdefault((set_name, row), text)
        if len(w) < N:
            self.short.setdefault(w, (set_name, row))
            return
        for i in range(len(w) - N + 1):
            self.grams.setdefault(hash(w[i:i + N]), (set_name, row))

    def __len__(self) -> int:
        return len(self.texts)

    def find(self, texts: list[str]) -> Match | None:
        """The first evaluation row that one of a training row's `texts` overlaps, or None."""
        for text in texts:
            w = words(text)
            hit = self.short.get(w) or next(filter(None, (self.grams.get(hash(w[i:i + N]))
                                                          for i in range(len(w) - N + 1))), None)
            if hit:
                return Match(hit[0], hit[1], self.texts[hit])
        return None


def row_texts(row) -> list[str]:
    """Every text of a canonical row (each message's content, a question, an answer), roles left out.

    >>> row_texts({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})
    ['hi', 'hello']
    """
    if isinstance(row, str):
        return [row]
    if isinstance(row, dict):
        return [t for key, value in row.items() if key != "role" for t in row_texts(value)]
    if isinstance(row, list):
        return [t for value in row for t in row_texts(value)]
    return []


@dataclass
class EvalSets:
    """The evaluation rows a training split is checked against: the eval split's dataset, and the local
    multiple-choice sets (`folders`: set name -> folder, or builtin://reverse/mcq; `fingerprints`: their
    files' identity, which keys the cache with the split's digest)."""

    split: object = None  # the eval split's ArtifactRef, or None
    folders: dict[str, str] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)

    def cache_identity(self) -> dict:
        return {"split": getattr(self.split, "digest", None),
                "sets": {name: self.fingerprints.get(name, path) for name, path in sorted(self.folders.items())}}

    def index(self, split_dir, scratch) -> EvalIndex:
        """Every question of the eval split (`split_dir`: its dataset, downloaded) and of each set."""
        import json
        from pathlib import Path

        from tasks.evaluate import QA, mcq_folder, subjects
        from tasks.readers import records

        index = EvalIndex()
        if split_dir is not None:
            with open(Path(split_dir) / "data.jsonl", encoding="utf-8") as f:
                for number, line in enumerate(f, 1):
                    index.add(QA, number, json.loads(line).get("question", ""))
        for name, path in self.folders.items():
            folder = mcq_folder(path, Path(scratch) / name)
            for subject in subjects(folder):
                file = next(p for p in sorted(folder.glob(f"{subject}_val.*")) if p.suffix in (".csv", ".jsonl"))
                for record in records(file):
                    question = (record.row or {}).get("question")
                    if isinstance(question, str):
                        index.add(f"{name}/{subject}", record.line, question)
        return index
