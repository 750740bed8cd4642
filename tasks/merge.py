"""Stage `merge`: fold an adapter chain into full weights, and prove the merge changed nothing.

The merged model and the base-plus-adapters model must give the same logits (within `tolerance`) on a
few prompts from the eval split; otherwise the stage fails rather than ship a different model.
"""

from __future__ import annotations

from pydantic import Field

from alignflow.errors import StageError
from storage import ArtifactRef
from tasks.config import StageConfig
from tasks.chat import encode_chat
from tasks.models import chat_texts, load_causal_lm, load_tokenizer, model_chain
from tasks.stage import RunContext, publish, stage

LIBRARIES = ("torch", "transformers", "peft")
CHECK_PROMPTS = 8


class MergeStage(StageConfig):
    """Runs whenever the model so far is an adapter."""

    tolerance: float = Field(1.0e-3, gt=0, le=10, description="largest |logit difference| allowed between the "
                                                              "merged model and base+adapter on eval prompts")


@stage("merge", config=MergeStage, key_metric="max_logit_diff", libraries=LIBRARIES)
def merge(run: RunContext, model: ArtifactRef, probe: ArtifactRef, config: MergeStage) -> ArtifactRef:
    import torch
    from peft import PeftModel
    from prefect import get_run_logger

    store, out = run.open_store(), run.workdir() / "output"
    chain = model_chain(store, model)
    unmerged = PeftModel.from_pretrained(load_causal_lm(chain[:-1]), chain[-1]).eval()
    merged = PeftModel.from_pretrained(load_causal_lm(chain[:-1]), chain[-1]).merge_and_unload().eval()
    tokenizer = load_tokenizer(chain)
    texts = chat_texts(store.get_dir(probe) / "data.jsonl", tokenizer, CHECK_PROMPTS, with_answers=False)
    batch = encode_chat(tokenizer, texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        diff = (merged(**batch).logits - unmerged(**batch).logits).abs().max().item()
    get_run_logger().info("merge: max |logit difference| merged vs adapter = %.2e (tolerance %.0e)",
                          diff, config.tolerance)
    if diff > config.tolerance:
        raise StageError(f"merge: merged weights differ from base+adapter by {diff:.3g} in logits, above the "
                         f"tolerance {config.tolerance:g}; the adapter may not match its base model")
    merged.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return publish(run, "merged", "model", out, stage="merge", config=config, inputs={"model": model},
                   libraries=LIBRARIES, metrics={"max_logit_diff": float(f"{diff:.3g}")})
