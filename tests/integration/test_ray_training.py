"""Training on a real Ray cluster of two nodes on this machine (`alignflow ray up --nodes 1`: a head and a
worker node, separate processes): the stage's job spread over both nodes, inputs, checkpoints and output
only through the store; a node lost mid-training is a retryable failure and the retry resumes from the
stored checkpoint on the node that remains; an interrupted run leaves no Ray actor or worker behind.

The node-loss test takes the worker node away, so it runs last here."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import pytest

from alignflow.errors import ConfigError, TransientError
from distributed import local
from storage import open_store
from tasks import trainer
from tasks.checkpoints import StoredCheckpoints
from tests.conftest import run_cli, write_spec
from tests.tasks.test_trainer_resume import Lines, RaiseAtStep, sft_job

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    record = local.up(nodes=1)
    yield record
    local.down()


def ray_job(tmp_path, cluster, key: str, resources: dict | None = None, **config) -> tuple[dict, object, object]:
    """An SFT job for two Ray workers, its inputs published to a store first (the workers fetch them)."""
    job, workdir = sft_job(tmp_path, resources={"engine": "ray", "workers": 2, **(resources or {})}, **config)
    (tmp_path / "tokens").mkdir()
    (tmp_path / "tokens.parquet").rename(tmp_path / "tokens" / "tokens.parquet")
    store = open_store(str(tmp_path / "store"), tmp_path / "stage-cache")
    model = store.put_dir("t/model", "model", Path(job["model_chain"][0]))
    data = store.put_dir("t/tokens", "dataset", tmp_path / "tokens", metadata={})
    refs = {"model_chain": [model.portable()], "data": data.portable(), "data_file": "tokens.parquet", "extra": {}}
    job["ray"] = {"address": cluster["address"], "store": store.uri, "credentials_block": None, "checkpoints": key,
                  "inputs": refs}
    return job, workdir, store


def logger_with(name: str, *handlers) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    for handler in handlers:
        logger.addHandler(handler)
    return logger


def actors_of_runs(cluster: dict) -> list[str]:
    """The cluster's live actors but its own services (the AutoscalingCoordinator Ray Train keeps, one per
    cluster, for every run): what a run leaves behind."""
    return [f"{a['ActorClassName']} (job {a['JobID']}, pid {a['Pid']})" for a in local.live_actors(cluster["address"])
            if a["Name"] != "AutoscalingCoordinator"]


def ray_workers_of(cluster: dict) -> list[str]:
    """The training actors' processes on the cluster's nodes (Ray titles them ray::<Actor>): those of this
    cluster only, whatever else runs on the machine."""
    import psutil

    nodes = [psutil.Process(node["pid"]) for node in [cluster["head"], *cluster["nodes"]]
             if psutil.pid_exists(node["pid"])]
    titles = []
    for proc in [p for node in nodes for p in node.children(recursive=True)]:
        try:
            titles.append(" ".join(proc.cmdline()))
        except psutil.Error:
            continue
    return [t for t in titles if t.startswith(("ray::RayTrainWorker", "ray::TrainController"))]


def test_ray_status_lists_the_nodes_and_a_second_up_is_refused(cluster):
    status = run_cli("ray", "status")
    assert status.code == 0, status.stderr
    assert f"Ray cluster: {cluster['address']}" in status.stdout
    assert len([line for line in status.stdout.splitlines() if re.match(r"[0-9a-f]{12} ", line)]) == 2
    again = run_cli("ray", "up")
    assert again.code != 0
    assert f"already running at {cluster['address']}" in again.stderr and "alignflow ray down" in again.stderr


def test_two_workers_train_on_two_nodes_with_zero2_through_the_store(tmp_path, cluster):
    """Two workers, one on each node, under DeepSpeed ZeRO-2 (gloo on CPUs): their progress reaches the
    stage's log; each rank's optimizer shard reaches the store with the checkpoint (no shared filesystem);
    the output is one whole model. (Plain DDP on Ray trains in the pipeline test below.)"""
    job, workdir, store = ray_job(tmp_path, cluster, "sft-two", resources={"deepspeed": "zero2"},
                                  trainer_args={"save_steps": 0.5})
    lines = Lines()
    logger = logger_with("test.ray.two", lines)
    metrics = trainer.launch("train_sft", "sft", job, workdir, logger, checkpoints=StoredCheckpoints(store,
                                                                                                  "sft-two", logger))
    nodes = {n["NodeID"][:12] for n in local.alive_nodes(cluster["address"])}
    placed = re.findall(r"(\w{12}) \(rank (\d)\)", metrics["ray_nodes"])
    assert metrics["ray_workers"] == metrics["processes"] == 2
    assert {node for node, _ in placed} == nodes and len(nodes) == 2  # one worker on each node
    assert metrics["steps"] == 50  # 800 rows / (16 per worker x 2 workers) x 2 epochs
    assert metrics["final_loss"] < 1.6
    assert (workdir / "output" / "model.safetensors").exists()
    text = "\n".join(lines.lines)
    assert re.search(r"train_sft: checkpoint at step \d+ stored", text)  # by the workers, into the store
    assert re.search(r"train_sft: step 50/50", text)  # the workers' progress reached the stage's log
    stored = StoredCheckpoints(store, "sft-two", logger).latest()
    shards = sorted(re.sub(r".*(zero_pp_rank_\d+).*", r"\1", f) for f in stored["files"] if "optim_states" in f)
    assert shards == ["zero_pp_rank_0", "zero_pp_rank_1"], stored["files"]


def test_a_bad_setting_on_a_worker_stays_a_config_error(tmp_path, cluster):
    job, workdir, store = ray_job(tmp_path, cluster, "sft-bad", trainer_args={"no_such_argument": 1})
    logger = logger_with("test.ray.bad")
    with pytest.raises(ConfigError, match="no_such_argument"):
        trainer.launch("train_sft", "sft", job, workdir, logger, checkpoints=StoredCheckpoints(store, "sft-bad",
                                                                                                logger))


def test_an_interrupted_run_leaves_no_ray_worker_behind(tmp_path, cluster):
    job, workdir, store = ray_job(tmp_path, cluster, "sft-cut", trainer_args={"logging_steps": 1})
    job["config"]["epochs"] = 50  # minutes of work left when it is cut
    logger = logger_with("test.ray.cut", RaiseAtStep())
    with pytest.raises(KeyboardInterrupt):
        trainer.launch("train_sft", "sft", job, workdir, logger, checkpoints=StoredCheckpoints(store, "sft-cut",
                                                                                                logger))
    deadline = time.monotonic() + 120  # Ray ends a job once its driver is gone
    while (ray_workers_of(cluster) or actors_of_runs(cluster)) and time.monotonic() < deadline:
        time.sleep(1)
    assert ray_workers_of(cluster) == [] and actors_of_runs(cluster) == []


def test_a_pipeline_trains_sft_on_the_cluster_serves_it_and_passes_the_demo_gate(tmp_path, cluster):
    """The demo's SFT, its eval split and its gate, with SFT on two Ray workers: the flow publishes what
    the workers trained (the card names both nodes), evaluates it through its vLLM server and ships it."""
    spec = write_spec(tmp_path / "spec.yaml", f"""
name: ray-demo
model: builtin://tiny-qwen2
data: {{sft: builtin://reverse/sft, eval: builtin://reverse/eval}}
stages:
  sft: {{tuner: full, epochs: 3, learning_rate: 3.0e-3, batch_size: 8, max_length: 64,
        resources: {{engine: ray, workers: 2, address: "{cluster['address']}"}}}}
  evaluate: {{metric: exact_match, max_tokens: 16, batch_size: 50}}
  gate: {{min_score: 0.6, min_gain_over_base: 0.4}}
  deploy: {{host: 127.0.0.1, port: 0, max_model_len: 256, load_test: null}}
store: {tmp_path / "store"}
""")
    try:
        result = run_cli("run", str(spec), timeout=3000)
    finally:
        run_cli("serve", "stop", "ray-demo")
    assert result.code == 0, result.output[-4000:]
    assert result.status()["train_sft"] == "ran" and result.status()["deploy"] == "ran"
    scores = result.summary["scores"]
    assert scores["candidate"] - scores["base"] >= 0.4, scores
    # the local single-process stage, on the same 16 rows a step, scores 1.0 (benchmarks/ray_quality.py)
    assert scores["candidate"] >= 0.95, scores
    sft = open_store(str(tmp_path / "store")).ref("ray-demo/sft")
    assert sft.metrics["ray_workers"] == 2 and len(set(re.findall(r"(\w{12}) \(rank", sft.metrics["ray_nodes"]))) == 2
    assert "Ray worker 1 on node" in result.output


def test_sampling_on_two_workers_gives_the_same_samples_as_on_one(tmp_path, cluster):
    """The sample stage's engine ray: 5 batches split 3 + 2 between two workers, or all 5 on one; the same
    answers in the same order, hence the same samples artifact (one version, one digest)."""
    import json

    from distributed import fanout
    from tasks.builtin import reverse_task
    from tasks.download import fetch_model
    from tasks.generate import ready_to_answer
    from tasks.models import chain_refs
    from tasks.on_policy import SampleSpec

    store = open_store(str(tmp_path / "store"), tmp_path / "stage-cache")
    model = store.put_dir("t/model", "model", fetch_model("builtin://tiny-qwen2", tmp_path / "model"))
    asked = [[{"role": "user", "content": row["messages"][0]["content"]}] for row in reverse_task.splits()["sft"][:36]]
    _, texts = ready_to_answer(store, model, asked, tmp_path / "policy")
    versions = []
    for workers in (1, 2):
        config = SampleSpec(engine="ray", workers=workers, address=cluster["address"], k=2, batch_size=8,
                            max_tokens=12, seed=3)
        settings = {"max_tokens": 12, "batch_size": 8, "k": 2, "batch_seed": 3, "do_sample": True,
                    "temperature": 1.0, "top_p": 1.0}
        result = fanout.answer(store, None, chain_refs(store, model), texts, settings, config,
                               tmp_path / f"ray-{workers}", logging.getLogger("test.ray.sample"))
        assert result["workers"] == workers and len(result["completions"]) == 36
        out = tmp_path / f"out-{workers}"
        out.mkdir()
        (out / "samples.jsonl").write_text("".join(json.dumps({"prompt": m, "completions": a}) + "\n"
                                                   for m, a in zip(asked, result["completions"])))
        versions.append(store.put_dir("t/samples", "samples", out, metrics={"engine": result["engine"]}))
    assert versions[0].digest == versions[1].digest and versions[1].version == 1
    answers = [a for row in (tmp_path / "out-1" / "samples.jsonl").read_text().splitlines()
               for a in json.loads(row)["completions"]]
    assert len(set(answers)) > 10  # sampled, not one greedy answer repeated


class StopNodeAfterCheckpoint(logging.Handler):
    """Takes the worker node away (SIGKILL to its processes) once a checkpoint is in the store."""

    stored_at = None

    def emit(self, record):
        match = re.search(r"checkpoint at step (\d+) stored", record.getMessage())
        if match and self.stored_at is None:
            self.stored_at = int(match.group(1))
            local.stop_node("node-1")


def test_a_lost_node_is_retryable_and_the_retry_resumes_on_the_node_left(tmp_path, cluster):
    job, workdir, store = ray_job(tmp_path, cluster, "sft-lost", trainer_args={"save_steps": 0.2})
    lines, stopper = Lines(), StopNodeAfterCheckpoint()
    logger = logger_with("test.ray.lost", lines, stopper)
    with pytest.raises(TransientError, match="resumes from the checkpoint"):
        trainer.launch("train_sft", "sft", job, workdir, logger, checkpoints=StoredCheckpoints(store, "sft-lost",
                                                                                                logger))
    stored = StoredCheckpoints(store, "sft-lost", logger).latest()["step"]
    assert stopper.stored_at and stored >= stopper.stored_at
    deadline = time.monotonic() + 120  # until the head's health checks have given the node up
    while len(local.alive_nodes(cluster["address"])) > 1 and time.monotonic() < deadline:
        time.sleep(1)
    assert len(local.alive_nodes(cluster["address"])) == 1

    lines.lines.clear()
    metrics = trainer.launch("train_sft", "sft", job, workdir, logger, checkpoints=StoredCheckpoints(store,
                                                                                                  "sft-lost", logger))
    text = "\n".join(lines.lines)
    assert "2 workers asked, the cluster has room for 1 now: training on 1" in text
    assert f"train_sft: resuming from the checkpoint at step {stored}" in text
    assert metrics["resumed_from_step"] == stored and metrics["ray_workers"] == 1
    assert metrics["steps"] == 50  # the same rows per step: two accumulation steps on the one worker
    assert (workdir / "output" / "model.safetensors").exists()


def test_ray_down_stops_every_process_of_the_cluster(cluster):
    import psutil

    pids = [node["pid"] for node in [cluster["head"], *cluster["nodes"]]]
    alive = [p for p in pids if psutil.pid_exists(p)]
    family = [c.pid for p in alive for c in psutil.Process(p).children(recursive=True)]
    down = run_cli("ray", "down")
    assert down.code == 0 and "stopped" in down.stdout and "head" in down.stdout
    assert [p for p in pids + family if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"] == []
    assert "not running" in run_cli("ray", "status").stdout
