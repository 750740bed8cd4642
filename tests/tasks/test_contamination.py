"""Finding evaluation rows inside training rows: 13-grams after normalisation, short rows whole."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.contamination import N, EvalIndex, Match, words

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
