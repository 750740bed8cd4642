"""Dataset sources beyond local files, as a user reaches them: an s3:// prefix on a real SeaweedFS, a
pre-filled Hugging Face hub cache read offline, and an uncached hub dataset that must fail fast and say
which cache to fill."""

from __future__ import annotations

import gzip
import json
import time

from tests.conftest import run_cli, s3_client

ALPACA = [{"instruction": "Translate to French", "input": "cat", "output": "chat"},
          {"instruction": "Capital of Italy?", "output": "Rome"}]
PAIRS = [{"prompt": "2+2?", "chosen": "4", "rejected": "5"}, {"prompt": "Sky colour?", "chosen": "blue",
                                                                 "rejected": "green"}]


def jsonl(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def test_an_s3_prefix_converts_every_data_file_under_it(s3_server, tmp_path):
    client = s3_client()
    client.create_bucket(Bucket="incoming")
    client.put_object(Bucket="incoming", Key="chat/part-1.jsonl", Body=jsonl(ALPACA[:1]))
    client.put_object(Bucket="incoming", Key="chat/part-2.jsonl.gz", Body=gzip.compress(jsonl(ALPACA[1:])))
    client.put_object(Bucket="incoming", Key="chat/README.md", Body=b"not data")
    out = tmp_path / "sft.jsonl"
    result = run_cli("data", "convert", "s3://incoming/chat/", "--kind", "sft", "-o", str(out))
    assert result.code == 0, result.output
    rows = read_jsonl(out)
    assert [r["messages"][-1]["content"] for r in rows] == ["chat", "Rome"]
    assert rows[0]["messages"][0] == {"role": "user", "content": "Translate to French\n\ncat"}
    report = json.loads((tmp_path / "sft.report.json").read_text())
    assert report["sources"][0]["formats"] == {"s3://incoming/chat/part-1.jsonl": "alpaca",
                                              "s3://incoming/chat/part-2.jsonl.gz": "alpaca"}


def fill_hub_cache(cache, repo: str, files: dict[str, bytes], revision: str = "0123abcd") -> None:
    """What `hf download --repo-type dataset REPO` leaves behind: refs/main and a snapshot folder."""
    folder = cache / f"datasets--{repo.replace('/', '--')}"
    for name, content in files.items():
        path = folder / "snapshots" / revision / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(revision)


def test_a_prefilled_hugging_face_cache_converts_offline_by_config_and_split(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = tmp_path / "t.parquet"
    pq.write_table(pa.Table.from_pylist(PAIRS), table)
    fill_hub_cache(tmp_path / "hf", "acme/prefs", {
        "README.md": b"# prefs",
        "default/train-00000-of-00001.parquet": table.read_bytes(),
        "default/test-00000-of-00001.jsonl": jsonl(PAIRS[:1]),
        "harmless/train.jsonl": jsonl([{"prompt": "hi", "chosen": "hello", "rejected": "go away"}])})
    env = {"HF_HUB_CACHE": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "prefs.jsonl"
    result = run_cli("data", "convert", "hf://datasets/acme/prefs:default", "--kind", "preference", "-o", str(out),
                     env=env)
    assert result.code == 0, result.output
    rows = read_jsonl(out)  # the train split by default, from the default config's folder
    assert [(r["prompt"][0]["content"], r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows] == \
        [("2+2?", "4", "5"), ("Sky colour?", "blue", "green")]
    test = run_cli("data", "convert", "hf://datasets/acme/prefs:default@test", "--kind", "preference", "-o",
                   str(tmp_path / "test.jsonl"), env=env)
    assert test.code == 0 and len(read_jsonl(tmp_path / "test.jsonl")) == 1, test.output
    missing = run_cli("data", "convert", "hf://datasets/acme/prefs:default@validation", "--kind", "preference",
                      "-o", str(tmp_path / "v.jsonl"), env=env)
    assert missing.code == 2 and "no files for split 'validation'" in missing.stderr, missing.output


def test_an_uncached_hub_dataset_fails_within_seconds_naming_the_cache_and_the_fix(tmp_path):
    for source, cache_env, fix in (("hf://datasets/acme/absent", "HF_HUB_CACHE", "hf download --repo-type dataset"),
                                   ("modelscope://datasets/acme/absent", "MODELSCOPE_CACHE",
                                    "modelscope download --dataset")):
        cache = tmp_path / cache_env
        started = time.monotonic()
        result = run_cli("data", "inspect", source, "--kind", "sft", env={cache_env: str(cache)})
        assert result.code == 2, result.output
        assert str(cache) in result.stderr and fix in result.stderr and "Traceback" not in result.output
        assert time.monotonic() - started < 30


def test_a_prefilled_modelscope_cache_converts_offline(tmp_path):
    snapshot = tmp_path / "ms" / "datasets" / "acme--ceval" / "snapshots" / "master"
    snapshot.mkdir(parents=True)
    (snapshot / "val.csv").write_text("id,question,A,B,C,D,answer\n0,1+1=?,1,2,3,4,B\n")
    result = run_cli("data", "convert", "modelscope://datasets/acme/ceval@val", "--kind", "eval", "-o",
                     str(tmp_path / "ceval.jsonl"), env={"MODELSCOPE_CACHE": str(tmp_path / "ms")})
    assert result.code == 0, result.output
    assert read_jsonl(tmp_path / "ceval.jsonl") == [
        {"question": "1+1=?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer:", "answer": "B", "choices": ["1", "2", "3", "4"]}]
