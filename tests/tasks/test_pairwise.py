"""A pairwise comparison's statistics: both orders must agree for a win, the win rate comes with an interval
that narrows as prompts are added, and the length-controlled rate discounts wins that came from length."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasks.pairwise import Outcome, describe, reduce_pair, summarize

RATES = ("win_rate", "lc_win_rate")


def outcomes(wins: int, ties: int, losses: int, candidate: float = 100, production: float = 100) -> list:
    return ([Outcome("win", candidate, production)] * wins + [Outcome("tie", candidate, production)] * ties
            + [Outcome("loss", candidate, production)] * losses)


@pytest.mark.parametrize("first, second, expected", [
    ("A>>B", "B>>A", "win"), ("A>B", "B>A", "win"), ("A>>B", "B>A", "win"),  # the candidate both times
    ("B>>A", "A>>B", "loss"), ("B>A", "A>B", "loss"),  # production both times
    ("A>B", "A>B", "tie"), ("B>A", "B>A", "tie"),  # each order preferred whichever answer came first (or second)
    ("A=B", "A=B", "tie"), ("A>>B", "A=B", "tie"), ("A=B", "A>B", "tie"), ("B>A", "A=B", "tie"),
    (None, "B>A", None), ("A>B", None, None), (None, None, None),
])
def test_both_orders_must_agree_for_a_win_or_a_loss(first, second, expected):
    assert reduce_pair(first, second) == expected


def test_an_unknown_verdict_or_result_is_refused():
    with pytest.raises(ValueError, match="'A>>>B'"):
        reduce_pair("A>>>B", "B>A")
    with pytest.raises(ValueError, match="'draw'"):
        Outcome("draw", 1, 1)


def test_counts_and_win_rate_count_a_tie_as_half_a_win():
    summary = summarize(outcomes(12, 3, 5) + [None, Outcome(None, 10, 20)])
    assert {key: summary[key] for key in ("n", "unjudged", "wins", "ties", "losses")} == {
        "n": 20, "unjudged": 2, "wins": 12, "ties": 3, "losses": 5}
    assert summary["win_rate"] == pytest.approx(0.675)
    assert summary["lc_win_rate"] == pytest.approx(0.675, abs=1e-4)  # equal lengths: nothing to control for
    assert describe(summary).startswith("win 12 / tie 3 / loss 5 of 20 (2 unjudged): win rate 0.675 [")


def test_the_interval_holds_the_win_rate_and_narrows_as_prompts_are_added():
    small, large = summarize(outcomes(12, 3, 5)), summarize(outcomes(1200, 300, 500))
    for summary in (small, large):
        low, high = summary["win_rate_ci"]
        assert low < summary["win_rate"] < high
    assert np.diff(large["win_rate_ci"])[0] < np.diff(small["win_rate_ci"])[0] / 5
    wider = summarize(outcomes(12, 3, 5), confidence=0.99)["win_rate_ci"]
    assert wider[0] <= small["win_rate_ci"][0] and wider[1] >= small["win_rate_ci"][1]


def test_lengths_unrelated_to_the_outcome_leave_the_win_rate_as_it_is():
    rng = np.random.default_rng(1)
    results = rng.choice(["win", "tie", "loss"], size=2000, p=[0.5, 0.2, 0.3])
    lengths = rng.integers(50, 800, size=(2000, 2))
    summary = summarize(Outcome(str(r), int(c), int(p)) for r, (c, p) in zip(results, lengths))
    assert summary["lc_win_rate"] == pytest.approx(summary["win_rate"], abs=0.02)
    assert abs(summary["length_bias"]) < 0.2


def test_a_candidate_that_wins_exactly_when_it_is_longer_is_not_better():
    summary = summarize(outcomes(50, 0, 0, candidate=300, production=100)
                        + outcomes(0, 0, 50, candidate=100, production=300))
    assert summary["win_rate"] == 0.5
    assert summary["lc_win_rate"] == pytest.approx(0.5, abs=1e-6)
    assert summary["length_bias"] > 2


def test_wins_bought_with_length_are_discounted():
    # mostly longer, and the judge favours the longer answer three to one either way
    longer, shorter = outcomes(60, 0, 20, candidate=300, production=200), outcomes(5, 0, 15, 200, 300)
    summary = summarize(longer + shorter)
    assert summary["win_rate"] == pytest.approx(0.65)
    assert summary["lc_win_rate"] < summary["win_rate"] - 0.1
    assert summary["length_bias"] > 1
    assert describe(summary).endswith(f"length-controlled {summary['lc_win_rate']:.2f}")


@pytest.mark.parametrize("result, rate", [("win", 1.0), ("loss", 0.0), ("tie", 0.5)])
def test_all_one_result_gives_a_rate_at_that_result(result, rate):
    for lengths in ((100, 100), (300, 100)):
        summary = summarize([Outcome(result, *lengths)] * 40)
        assert summary["win_rate"] == rate and summary["win_rate_ci"] == [rate, rate]
        assert summary["lc_win_rate"] == pytest.approx(rate, abs=1e-4)


def test_nothing_judged_gives_no_rates():
    summary = summarize([None, Outcome(None, 3, 4)])
    assert (summary["n"], summary["unjudged"]) == (0, 2)
    assert [summary[key] for key in (*RATES, "win_rate_ci", "length_bias")] == [None] * 4
    assert describe(summary) == "win 0 / tie 0 / loss 0 of 0 (2 unjudged): no judged prompts"
    assert summarize([])["n"] == 0
    with pytest.raises(ValueError, match="confidence"):
        summarize(outcomes(1, 0, 0), confidence=1.0)


lengths = st.integers(0, 10**6) | st.floats(0, 1e9)
generated = st.lists(st.none() | st.builds(Outcome, st.sampled_from(["win", "tie", "loss", None]), lengths, lengths),
                     max_size=60)


@given(generated, st.integers(0, 2**32 - 1))
def test_any_outcomes_give_rates_in_range_consistent_counts_and_the_same_result_for_a_seed(items, seed):
    summary = summarize(items, seed=seed)
    assert summary["wins"] + summary["ties"] + summary["losses"] == summary["n"]
    assert summary["n"] + summary["unjudged"] == len(items)
    for rate in (*(summary[key] for key in RATES), *(summary["win_rate_ci"] or [])):
        assert rate is None or 0 <= rate <= 1
    assert (summary["length_bias"] is None) == (summary["n"] == 0)
    assert summarize(items, seed=seed) == summary
    assert describe(summary)
