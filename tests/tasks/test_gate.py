from tasks.gate import GateStage, decide


def test_gate_passes_a_clear_improvement():
    assert decide(0.9, 0.1, 0.85, GateStage(min_score=0.6, min_gain_over_base=0.4)) == []


def test_gate_lists_every_failed_rule():
    reasons = decide(0.5, 0.3, 0.8, GateStage(min_score=0.6, min_gain_over_base=0.4, max_regression=0.05))
    assert len(reasons) == 3
    assert any("min_score" in r for r in reasons) and any("production" in r for r in reasons)


def test_a_set_the_candidate_loses_more_than_max_drop_on_rejects_it():
    from tasks.gate import GateStage, decide

    config = GateStage(max_drop={"knowledge": 0.05})
    sets, base = {"qa": 0.9, "knowledge": 0.55}, {"qa": 0.1, "knowledge": 0.62}
    [reason] = decide(0.9, 0.1, None, config, sets=sets, base_sets=base)
    assert reason.startswith("knowledge: 0.550 is 0.070 below the base model's 0.620")
    assert decide(0.9, 0.1, None, config, sets=dict(sets, knowledge=0.58), base_sets=base) == []
    assert "not evaluated" in decide(0.9, 0.1, None, config, sets={"qa": 0.9}, base_sets=base)[0]
    assert GateStage(max_drop={"knowledge": 2}).problems()


def test_a_set_the_candidate_loses_more_than_max_set_regression_on_against_production_rejects_it():
    config = GateStage(max_set_regression={"mcq": 0.05})
    sets, production = {"qa": 0.9, "mcq": 0.40}, {"qa": 0.8, "mcq": 0.55}
    [reason] = decide(0.9, 0.1, 0.8, config, sets=sets, base_sets=sets, production_sets=production)
    assert reason == "mcq: 0.400 is 0.150 below production's 0.550, more than max_set_regression 0.050"
    assert decide(0.9, 0.1, 0.8, config, sets=dict(sets, mcq=0.52), base_sets=sets, production_sets=production) == []
    assert decide(0.9, 0.1, None, config, sets=sets, base_sets=sets) == []  # nothing in production yet
    before_mcq = {"qa": 0.8}  # production was scored before the set existed: nothing to compare
    assert decide(0.9, 0.1, 0.8, config, sets=sets, base_sets=sets, production_sets=before_mcq) == []
    [unknown] = decide(0.9, 0.1, 0.8, GateStage(max_set_regression={"gsm8k": 0.05}), sets=sets, base_sets=sets,
                       production_sets=production)
    assert unknown.startswith("gsm8k: max_set_regression names a set that was not evaluated")
    assert GateStage(max_set_regression={"mcq": -0.1}).problems() == [
        "stages.gate.max_set_regression.mcq: -0.1 is not between 0 and 1"]


def test_the_llm_judge_s_win_rate_over_production_is_gated_when_it_was_measured():
    config = GateStage(min_win_rate_vs_production=0.55)
    compared = {"lc_win_rate": 0.48, "wins": 3, "ties": 4, "losses": 5, "unjudged": 1}
    [reason] = decide(0.9, 0.1, 0.8, config, compared=compared)
    assert reason == ("length-controlled win rate over production 0.480 (win/tie/loss 3/4/5, 1 unjudged) is below "
                      "min_win_rate_vs_production 0.550")
    assert decide(0.9, 0.1, 0.8, config, compared=dict(compared, lc_win_rate=0.6)) == []
    assert decide(0.9, 0.1, None, config, compared=None) == []  # nothing in production: nothing to compare with
    assert GateStage(min_win_rate_vs_production=0.5).needs() == ("stages.evaluate", "stages.compare")
