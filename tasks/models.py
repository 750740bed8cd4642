"""Loading models the stages share: a model artifact, or a chain of adapters on top of one.

An adapter artifact records its base in its manifest metadata (`base: {name, version, digest}`), so
`model_chain` can walk from any adapter down to full weights: [base folder, adapter folder, ...].
"""

from __future__ import annotations

from pathlib import Path

from alignflow.errors import StorageError
from storage import ArtifactRef, ArtifactStore


def model_chain(store: ArtifactStore, ref: ArtifactRef) -> list[Path]:
    """Local folders to load in order: full weights first, then each adapter on top."""
    return [store.get_dir(r) for r in chain_refs(store, ref)]


def chain_refs(store: ArtifactStore, ref: ArtifactRef) -> list[ArtifactRef]:
    """The artifacts `model_chain` loads, in its order."""
    if ref.kind != "adapter":
        return [ref]
    base = store.manifest(ref.digest)["metadata"].get("base")
    if not base:
        raise StorageError(f"adapter {ref.label} does not record its base model; re-run the stage that made it")
    base_ref = store.ref(base["name"], base["version"])
    if base_ref.digest != base["digest"]:
        raise StorageError(f"adapter {ref.label} was trained on {base['name']}@{base['version']} "
                           f"({base['digest'][:19]}), which now has another digest: the store is corrupt")
    return chain_refs(store, base_ref) + [ref]


def base_record(ref: ArtifactRef) -> dict:
    return {"name": ref.name, "version": ref.version, "digest": ref.digest}


def load_causal_lm(chain: list[str | Path], **kwargs):
    """Load full weights and merge each adapter into them, in order."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(chain[0], **kwargs)
    for adapter in chain[1:]:
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return model


def load_tokenizer(chain: list[str | Path], **kwargs):
    """The model's tokenizer, its special tokens settled against its chat template (tasks/chat.py): a no-op
    for a base model download_model settled, a fix for one stored before it did."""
    from transformers import AutoTokenizer

    from tasks.chat import settle

    tokenizer = AutoTokenizer.from_pretrained(chain[0], **kwargs)
    settle(tokenizer)
    return tokenizer


def materialize(chain: list[str | Path], dest: Path) -> Path:
    """A folder with full weights for `chain`: the first folder itself when there is no adapter."""
    if len(chain) == 1:
        return Path(chain[0])
    if not (dest / "config.json").exists():
        load_causal_lm(chain).save_pretrained(dest)
        load_tokenizer(chain).save_pretrained(dest)
    return dest


def conversations(data_file: Path, limit: int | None = None, with_answers: bool = True) -> list[list[dict]]:
    """Up to `limit` rows of any canonical split (sft, preference, eval) as message lists; without answers,
    each ends with the turn an assistant would answer."""
    import json

    out = []
    with open(data_file, encoding="utf-8") as f:
        for line in f:
            if limit is not None and len(out) >= limit:
                break
            row = json.loads(line)
            if "messages" in row:
                messages = row["messages"] if with_answers else row["messages"][:-1]
            elif "prompt" in row:
                messages = row["prompt"] + ((row.get("chosen") or row["completion"]) if with_answers else [])
            else:
                messages = [{"role": "system", "content": row["system"]}] if row.get("system") else []
                messages += [{"role": "user", "content": row["question"]}]
                messages += [{"role": "assistant", "content": row["answer"]}] if with_answers else []
            out.append(messages)
    return out


def render(tokenizer, messages: list[dict]) -> str:
    """A conversation as the model reads it; one that ends on a user turn gets the generation prompt."""
    last_is_user = messages[-1]["role"] != "assistant"
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=last_is_user)


def chat_texts(data_file: Path, tokenizer, limit: int, with_answers: bool = True) -> list[str]:
    """Render up to `limit` rows of any canonical split (sft, preference, eval) with the chat template."""
    return [render(tokenizer, messages) for messages in conversations(data_file, limit, with_answers)]


def questions(data_file: Path, limit: int) -> list[str]:
    """The first user prompt of up to `limit` rows: what deploy's smoke request and load test ask."""
    return [next(m["content"] for m in messages if m["role"] == "user")
            for messages in conversations(data_file, limit, with_answers=False)]


def first_question(data_file: Path) -> str:
    """The first user prompt in a canonical dataset: what the deploy smoke test asks."""
    return questions(data_file, 1)[0]
