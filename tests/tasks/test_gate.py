from tasks.gate import GateStage, decide


def test_gate_passes_a_clear_improvement():
    assert decide(0.9, 0.1, 0.85, GateStage(min_score=0.6, min_gain_over_base=0.4)) == []


def test_gate_lists_every_failed_rule():
    reasons = decide(0.5, 0.3, 0.8, GateStage(min_score=0.6, min_gain_over_base=0.4, max_regression=0.05))
    assert len(reasons) == 3
    assert any("min_score" in r for r in reasons) and any("production" in r for r in reasons)
