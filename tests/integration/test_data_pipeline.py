"""A user's own data and a chat template without `{% generation %}` markers, end to end.

The tiny model's template is rewritten without markers (as Qwen2.5's, Llama 3's and Mistral's are); the SFT
rows arrive as ShareGPT in Parquet plus Alpaca in gzipped CSV, in one folder, with a bad row and a
duplicate; the eval split is a TSV. The served model must still learn the task: the loss is on the answers.
"""

from __future__ import annotations

import csv
import gzip
import json

import pytest

from storage import open_store
from tests.conftest import run_cli, write_spec
from tests.integration.test_demo_pipeline import chat

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def plain_template_model(tmp_path_factory):
    from tasks.builtin import tiny_model

    folder = tiny_model.build(tmp_path_factory.mktemp("plain") / "model")
    unmarked = tiny_model.CHAT_TEMPLATE.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    template_file = folder / "chat_template.jinja"
    if template_file.exists():
        template_file.write_text(unmarked)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    if "chat_template" in config:
        config["chat_template"] = unmarked
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return folder


def write_user_data(folder):
    """The demo's SFT rows as a user might bring them: two formats, two file types, one bad row, one repeat."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tasks.builtin import reverse_task

    splits = reverse_task.splits()
    pairs = [(r["messages"][0]["content"], r["messages"][1]["content"]) for r in splits["sft"]]
    sharegpt = [{"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}
                for q, a in pairs[:2000]]
    sharegpt.append(sharegpt[0])  # an exact duplicate: removed and counted
    sft = folder / "sft"
    sft.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(sharegpt), sft / "chats.parquet")
    with gzip.open(sft / "alpaca.csv.gz", "wt", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["instruction", "input", "output"])
        writer.writerows([q, "", a] for q, a in pairs[2000:])
        writer.writerow(["", "", ""])  # bad: an empty answer... and an empty question
    with open(folder / "eval.tsv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["question", "answer"])
        writer.writerows([r["question"], r["answer"]] for r in splits["eval"])


def test_sft_without_generation_markers_learns_from_users_files(plain_template_model, tmp_path):
    write_user_data(tmp_path / "data")
    store_dir = tmp_path / "store"
    spec = write_spec(tmp_path / "mine.yaml", f"""
name: mine
model: {plain_template_model}
data:
  sft: {tmp_path / 'data' / 'sft'}
  eval: {tmp_path / 'data' / 'eval.tsv'}
  on_bad_rows: skip
stages:
  sft: {{tuner: full, epochs: 3, learning_rate: 3.0e-3, batch_size: 16, max_length: 64}}
  evaluate: {{engine: llm_ckpt, metric: exact_match, max_tokens: 16, batch_size: 50}}
  deploy: {{backend: vllm, host: 127.0.0.1, port: 0, max_model_len: 256, load_test: null}}
store: {store_dir}
""")
    result = run_cli("run", str(spec))
    assert result.code == 0, result.output[-6000:]
    store = open_store(str(store_dir))

    data = store.get_dir(store.ref("mine/data-sft"))
    report = json.loads((data / "report.json").read_text())
    assert set(report["sources"][0]["formats"].values()) == {"sharegpt", "alpaca"}
    assert (report["rows"], report["duplicates"], report["bad"]) == (3000, 1, 1)
    quarantined = [json.loads(line) for line in open(data / "quarantine.jsonl")]
    assert [q["line"] for q in quarantined] == [1002] and "alpaca.csv.gz" in quarantined[0]["file"]
    tokens = json.loads((store.get_dir(store.ref("mine/tokens-sft")) / "report.json").read_text())
    assert tokens["mask"] == "assistant spans worked out from the template" and tokens["rows"] == 3000

    scores = result.summary["scores"]
    assert scores["candidate"] - scores["base"] >= 0.4, scores
    endpoint = result.summary["endpoint"]
    rows = [json.loads(line) for line in open(store.get_dir(store.ref("mine/data-eval")) / "data.jsonl")][:40]
    replies = [chat(endpoint, row["question"], "mine") for row in rows]
    served = sum(r["message"]["content"].strip() == row["answer"] for r, row in zip(replies, rows)) / len(rows)
    assert served - scores["base"] >= 0.4, f"served exact match {served}, base {scores['base']}"
    assert run_cli("serve", "stop", "mine").code == 0

    one_epoch = run_cli("run", str(spec), "--set", "stages.sft.epochs=1", "--skip", "evaluate",
                        "--skip", "deploy")  # the tokenized data is reused, not redone
    assert one_epoch.code == 0, one_epoch.output[-3000:]
    assert [one_epoch.status()[s] for s in ("convert_dataset[sft]", "tokenize", "train_sft")] == \
        ["cached", "cached", "ran"]
