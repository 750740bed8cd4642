"""What a stage's card and a failure card say: enough to answer "what made this?" and "how do I rerun it?"."""

from flows.dashboard import failure_markdown, run_title, stage_markdown
from storage import ArtifactRef
from tasks.dpo import DPOStage


def test_a_stage_card_names_output_inputs_metrics_config_and_whether_it_ran():
    sft = ArtifactRef("demo/sft", "model", 1, "sha256:" + "a" * 64)
    dpo = ArtifactRef("demo/dpo", "adapter", 3, "sha256:" + "b" * 64, {"rewards_accuracies": 1.0})
    card = stage_markdown({"stage": "train_dpo", "status": "cached", "seconds": 0.1}, [sft], DPOStage(beta=0.2),
                          dpo, "/logs/train-dpo.log")
    assert "train_dpo: cached" in card and "`demo/dpo@3` (`bbbbbbbbbbbb`)" in card and "`demo/sft@1`" in card
    assert "| rewards_accuracies | 1.0 |" in card and '"beta": 0.2' in card and "/logs/train-dpo.log" in card
    assert "Came from the cache" in card


def test_a_failure_card_gives_the_command_that_reruns_the_same_data():
    card = failure_markdown("train_dpo", ValueError("boom"), "name: demo\n", "/store",
                            {"preference": "store://demo/pairs@3"})
    assert "ValueError" in card and "boom" in card and "name: demo" in card
    assert "alignflow run spec.yaml --store /store --set data.preference=store://demo/pairs@3" in card


def test_runs_are_named_after_their_data_versions():
    assert run_title("demo", {"sft": "demo/data-sft@3", "eval": "demo/data-eval@1"}) == "demo · data sft@3 eval@1"
