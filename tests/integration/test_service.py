"""alignflow as a service, as a user runs it: `alignflow server up` (a real Prefect server and process
worker), `alignflow deploy`, new data landing in a watched S3 prefix (a real SeaweedFS), runs started by
a trigger, by the API as the dashboard's form does, and by hand; a second pipeline on the same server,
triggered and undeployed on its own; what the dashboard shows; runs that
share one accelerator slot; a failure that notifies; a run training on Ray cancelled; a worker killed
mid-run; `server down`.

The tests run in order and build on each other (the first one trains; later ones mostly hit the cache).
"""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer

import psutil
import pytest

from storage import open_store
from tasks.builtin import reverse_task
from tests.conftest import run_cli, s3_client, write_spec
from tests.integration.test_ray_training import actors_of_runs, ray_workers_of

pytestmark = pytest.mark.slow
BUCKET = "alignflow"
RUN_TIMEOUT = 900  # seconds for one pipeline run on a busy two-core machine
ACCELERATOR_STAGES = ("train_sft", "train_reward_model", "train_dpo", "quantize", "evaluate")  # hold the slot

SPEC = """
name: svc
model: builtin://tiny-qwen2
data:
  sft: builtin://reverse/sft
  preference: store://svc/preference@latest
  eval: builtin://reverse/eval
stages:
  sft: {{tuner: full, epochs: 1, learning_rate: 3.0e-3, batch_size: 16, max_length: 64,
        trainer_args: {{max_steps: 40}}}}
  dpo: {{tuner: lora, beta: 0.1, learning_rate: 1.0e-3, batch_size: 16, max_length: 64,
        trainer_args: {{max_steps: 8}}, lora: {{r: 8, alpha: 16, dropout: 0.0}}}}
  evaluate: {{engine: llm_ckpt, max_tokens: 8, limit: 20, batch_size: 20}}
  gate: {{min_score: 0.0}}
store: {store}
retry: {{retries: 1, delay_seconds: 1}}
service:
  watch: {{sources: {{svc/preference: "s3://{bucket}/{prefix}/"}}, interval_seconds: 15, settle_seconds: 3}}
  notify: custom-webhook/svc-alerts
"""


class Receiver(BaseHTTPRequestHandler):
    """A local webhook endpoint: what a Slack or ops webhook would receive."""

    received: list[dict] = []

    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        Receiver.received.append(json.loads(body or b"{}"))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def receiver():
    httpd = HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/hook"
    httpd.shutdown()


@pytest.fixture(scope="module")
def service(s3_server, receiver, tmp_path_factory):
    """`alignflow server up` and `alignflow deploy` in a home of their own, then `server down`."""
    home = tmp_path_factory.mktemp("service")
    saved = {k: os.environ.get(k) for k in ("ALIGNFLOW_HOME", "PREFECT_HOME", "PREFECT_API_URL")}
    os.environ.update(ALIGNFLOW_HOME=str(home / "state"), PREFECT_HOME=str(home / "prefect"))
    os.environ.pop("PREFECT_API_URL", None)
    prefix = f"incoming-{uuid.uuid4().hex[:8]}"
    spec = write_spec(home / "svc.yaml", SPEC.format(store=home / "store", bucket=BUCKET, prefix=prefix))
    up = run_cli("server", "up", "--port", "0")
    assert up.code == 0, up.output
    api_url = next(line.split()[2] for line in up.stdout.splitlines() if line.startswith("Prefect server:"))
    info = {"home": home, "spec": spec, "prefix": prefix, "api_url": api_url, "store": open_store(str(home / "store")),
            "state": json.loads((home / "state" / "server" / "state.json").read_text())}
    with api(info):
        from prefect.blocks.notifications import CustomWebhookNotificationBlock

        CustomWebhookNotificationBlock(name="svc-alerts", url=receiver,
                                       json_data={"subject": "{{subject}}", "text": "{{body}}"}).save(
            "svc-alerts", overwrite=True)
    try:  # a failed deploy still stops the server and worker started above
        deployed = run_cli("deploy", str(spec))
        assert deployed.code == 0, deployed.output
        yield info
    finally:
        down = run_cli("server", "down")
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert down.code == 0, down.output


class api:
    """Talk to the service's Prefect API from the test (as the dashboard would)."""

    def __init__(self, info):
        self.url = info["api_url"]

    def __enter__(self):
        from prefect import get_client
        from prefect.settings import temporary_settings

        self._settings = temporary_settings(updates={"api.url": self.url})
        self._settings.__enter__()
        self.client = get_client(sync_client=True)
        return self.client.__enter__()

    def __exit__(self, *exc):
        self.client.__exit__(*exc)
        self._settings.__exit__(*exc)


def deployment(client, name: str):
    return client.read_deployment_by_name(name)


def runs_of(client, deployment_name: str) -> list:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    dep = deployment(client, deployment_name)
    return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])))


def wait_for(predicate, timeout: float, what: str, every: float = 3.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def wait_final(client, run_id, timeout: float = RUN_TIMEOUT):
    def final():
        run = client.read_flow_run(run_id)
        return run if run.state and run.state.is_final() else None

    return wait_for(final, timeout, f"flow run {run_id} to finish")


def task_runs(client, run_ids: list) -> list:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(run_ids))), limit=200)


def wait_for_a_scan_after(client, moment) -> None:
    """Until a watch-data run that started after `moment` has finished (sleeping instead could miss the scan
    on a busy machine)."""
    def scanned():
        return any(r.start_time and r.start_time > moment and r.state.is_final()
                   for r in runs_of(client, "watch-data/svc"))

    wait_for(scanned, 300, "the next scan")


def stage_status(client, run_id) -> dict[str, str]:
    """Each stage's card in the dashboard says whether it ran or came from the cache."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    cards = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
    described = [(a.description or "").split(": ", 1) for a in cards if a.type == "markdown"]
    return {d[0]: d[1] for d in described if len(d) == 2 and d[1] in ("ran", "cached", "unchanged")}


def put_preference_files(prefix: str, names: list[str], rows_per_file: int = 60) -> None:
    from tasks.builtin import reverse_task

    rows = reverse_task.splits()["preference"]
    client = s3_client()
    for i, name in enumerate(names):
        chunk = rows[i * rows_per_file:(i + 1) * rows_per_file]
        client.put_object(Bucket=BUCKET, Key=f"{prefix}/{name}",
                          Body="".join(json.dumps(r) + "\n" for r in chunk).encode())


def dataset_events(client) -> list:
    query = {"filter": {"event": {"name": ["alignflow.dataset.updated"]},
                        "resource": {"id_prefix": ["alignflow.dataset.svc/"]}}, "limit": 50}
    response = client.request("POST", "/events/filter", json=query)
    return response.json()["events"]


def lineage_labels(store, name: str, version: int) -> set[str]:
    """Every artifact version in the chain that made `name@version`."""
    info = store.manifest(store.ref(name, version).digest).get("lineage", {})
    labels = {f"{name}@{version}"}
    for parent in info.get("inputs", {}).values():
        labels |= lineage_labels(store, parent["name"], parent["version"])
    return labels


def test_new_data_in_the_watched_prefix_is_registered_announced_once_and_trained_on(service):
    store = service["store"]
    put_preference_files(service["prefix"], ["part-000.jsonl"])
    wait_for(lambda: store.versions("svc/preference") == [1], 300, "svc/preference@1 to be registered")
    with api(service) as client:
        run = wait_for(lambda: runs_of(client, "post-train/svc:on-new-data"), 300, "the triggered run")[0]
        assert run.parameters["dataset"] == "svc/preference@1"
        run = wait_final(client, run.id)
        assert run.state.is_completed(), run.state
        production = store.ref("svc/eval-candidate", "production")
        assert "svc/preference@1" in lineage_labels(store, production.name, production.version)
        wait_for_a_scan_after(client, run.end_time)  # a whole scan more, with nothing new
        assert store.versions("svc/preference") == [1]
        assert len(runs_of(client, "post-train/svc:on-new-data")) == 1
        assert len(dataset_events(client)) == 1


def test_a_burst_of_files_becomes_one_version_and_one_run(service):
    store = service["store"]
    put_preference_files(service["prefix"], [f"burst-{i}.jsonl" for i in range(5)], rows_per_file=40)
    wait_for(lambda: store.versions("svc/preference") == [1, 2], 300, "svc/preference@2 to be registered")
    assert store.ref("svc/preference", 2).metrics["files"] == 6
    with api(service) as client:
        runs = wait_for(lambda: [r for r in runs_of(client, "post-train/svc:on-new-data")
                                 if r.parameters.get("dataset") == "svc/preference@2"], 300, "the second run")
        second = wait_final(client, runs[0].id)
        assert second.state.is_completed()
        wait_for_a_scan_after(client, second.end_time)
        assert store.versions("svc/preference") == [1, 2]
        assert len(runs_of(client, "post-train/svc:on-new-data")) == 2
        assert len(dataset_events(client)) == 2
        client.pause_deployment(deployment(client, "watch-data/svc").id)  # quiet for the rest


SECOND = """
name: svc2
model: builtin://tiny-qwen2
data: {{sft: store://svc2/chat@latest, eval: builtin://reverse/eval}}
stages: {{}}
store: {store}
service: {{nightly: {{cron: "30 3 * * *", timezone: Europe/Paris}}}}
"""


def test_a_second_pipeline_deploys_beside_the_first_triggers_alone_and_undeploys_alone(service):
    """Pipeline svc2 on the same server: its own five deployments, schedule and trigger; new data for svc2
    starts svc2 only; undeploying svc2 leaves svc whole."""
    spec = write_spec(service["home"] / "svc2.yaml", SECOND.format(store=service["home"] / "store"))
    deployed = run_cli("deploy", str(spec))
    assert deployed.code == 0, deployed.output
    assert "post-train/svc2:on-new-data" in deployed.stdout
    with api(service) as client:
        svc_before = {name: deployment(client, name).id for name in SVC_DEPLOYMENTS}
        assert deployment(client, "post-train/svc2:nightly").schedules[0].schedule.timezone == "Europe/Paris"
        assert deployment(client, "post-train/svc:nightly").schedules[0].schedule.timezone == "UTC"
        svc_runs = len(runs_of(client, "post-train/svc:on-new-data"))
        chat = service["home"] / "chat.jsonl"
        chat.write_text("".join(json.dumps(r) + "\n" for r in reverse_task.splits()["sft"][:50]))
        assert run_cli("data", "add", "svc2/chat", str(chat), "--store", str(service["home"] / "store")).code == 0
        run = wait_for(lambda: runs_of(client, "post-train/svc2:on-new-data"), 300, "svc2's triggered run")[0]
        assert run.parameters["dataset"] == "svc2/chat@1" and run.parameters["spec"]["name"] == "svc2"
        assert wait_final(client, run.id).state.is_completed()
        assert len(runs_of(client, "post-train/svc:on-new-data")) == svc_runs  # svc was not started
    status = run_cli("server", "status").stdout
    assert re.search(r"^svc2 +post-train/svc2:nightly +cron 30 3", status, re.M), status
    assert re.search(r"^svc +post-train/svc:on-new-data .+on alignflow.dataset.updated", status, re.M), status

    undeployed = run_cli("undeploy", "svc2")
    assert undeployed.code == 0 and "watch-data/svc2" in undeployed.stdout, undeployed.output
    with api(service) as client:
        assert {name: deployment(client, name).id for name in SVC_DEPLOYMENTS} == svc_before
        names = {f"{d.name}" for d in client.read_deployments()}
        assert not any(n.startswith("svc2") for n in names), names
        triggers = [a.name for a in client.read_automations()]
        assert not any("svc2" in t for t in triggers) and any("svc:" in t for t in triggers), triggers
    again = run_cli("undeploy", "svc2")
    assert again.code == 2 and "has no deployments" in again.stderr and "deployed there: svc" in again.stderr


SVC_DEPLOYMENTS = ("post-train/svc", "post-train/svc:nightly", "post-train/svc:on-new-data", "sweep/svc",
                   "watch-data/svc")


def test_the_nightly_schedule_is_on_the_server_and_a_manual_run_completes_from_the_cache(service):
    with api(service) as client:
        nightly = deployment(client, "post-train/svc:nightly")
        (schedule,) = nightly.schedules
        assert schedule.schedule.cron == "0 2 * * *" and schedule.schedule.timezone == "UTC" and schedule.active
        manual = deployment(client, "post-train/svc")
        run = wait_final(client, client.create_flow_run_from_deployment(manual.id).id)
        assert run.state.is_completed(), run.state
        ran = {k: v for k, v in stage_status(client, run.id).items() if v != "cached" and k != "gate"}
        assert not ran, ran


def form_parameters(client, **dpo) -> dict:
    """What the dashboard's run form sends: the deployment's spec with the fields the user edited."""
    spec = copy.deepcopy(deployment(client, "post-train/svc").parameters["spec"])
    spec["stages"]["dpo"].update(dpo)
    return {"spec": spec}


def test_a_run_from_the_form_with_beta_changed_reruns_only_dpo_onwards(service):
    with api(service) as client:
        manual = deployment(client, "post-train/svc")
        assert "exclusiveMinimum" in json.dumps(manual.parameter_openapi_schema)  # the form shows ranges
        run = client.create_flow_run_from_deployment(manual.id, parameters=form_parameters(client, beta=0.25))
        run = wait_final(client, run.id)
        assert run.state.is_completed(), run.state
        status = stage_status(client, run.id)
        assert status["train_dpo"] == status["merge"] == status["evaluate[candidate]"] == "ran", status
        assert all(status[s] == "cached" for s in ("download_model", "convert_dataset[sft]", "train_sft",
                                                   "evaluate[base]")), status
        service["form_run"] = run.id


def test_a_sweep_from_its_form_runs_each_point_and_shows_the_comparison(service):
    """sweep/svc with the grid its form takes: both points run as child runs on the worker (the form test's
    beta and the spec's own, so from the cache), the best replays and ships, and the comparison is shown."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with api(service) as client:
        sweep = deployment(client, "sweep/svc")
        assert {"spec", "grid"} <= set(sweep.parameter_openapi_schema["properties"])
        beta = deployment(client, "post-train/svc").parameters["spec"]["stages"]["dpo"]["beta"]
        run = client.create_flow_run_from_deployment(sweep.id, parameters={"grid": {"stages.dpo.beta": [beta, 0.25]}})
        run = wait_final(client, run.id)
        assert run.state.is_completed(), run.state
        assert run.name == "svc · sweep"
        [shown] = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["svc-sweep"]), flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
    assert shown.data.count("| beta=") == 2 and "(winner)" in shown.data and "Shipped: beta=" in shown.data


def test_a_bad_value_from_the_form_is_refused_before_any_work(service):
    from prefect.exceptions import PrefectHTTPStatusError

    with api(service) as client:
        manual = deployment(client, "post-train/svc")
        with pytest.raises(PrefectHTTPStatusError) as refused:
            client.create_flow_run_from_deployment(manual.id, parameters=form_parameters(client, beta=-1))
        assert refused.value.response.status_code == 409 and "beta" in refused.value.response.text


def test_the_dashboard_shows_stage_cards_the_eval_table_progress_and_the_loss_curve(service):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with api(service) as client:
        run_id = service["form_run"]
        run_tasks = [t.id for t in task_runs(client, [run_id])]
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
        by_key = {a.key: a for a in artifacts}
        card = by_key["svc-train-dpo"]
        assert card.type == "markdown" and "svc/dpo@" in card.data and '"beta": 0.25' in card.data
        assert by_key["svc-train-sft"].description == "train_sft: cached"
        table = by_key["svc-evaluation"]
        assert table.type == "table"
        rows = json.loads(table.data) if isinstance(table.data, str) else table.data
        assert [r["model"] for r in rows] == ["candidate", "production", "base"]
        progress = by_key["svc-train-dpo-progress"]
        assert progress.type == "progress" and float(progress.data) == 100.0 and progress.task_run_id in run_tasks
        curves = by_key["svc-train-dpo-curves"]
        assert "data:image/svg+xml;base64," in curves.data and "reward margin" in curves.data
        title = client.read_flow_run(run_id)
        assert title.name.startswith("svc · data sft@1 preference@2") and "pipeline:svc" in title.tags


def test_two_runs_at_once_share_the_accelerator_slot_and_never_lose_a_promotion(service):
    store = service["store"]
    history_before = store.read_alias("svc/eval-candidate", "production")[0]
    with api(service) as client:
        manual = deployment(client, "post-train/svc")
        ids = [client.create_flow_run_from_deployment(manual.id, parameters=form_parameters(client, beta=b)).id
               for b in (0.3, 0.35)]
        runs = [wait_final(client, i) for i in ids]
        assert all(r.state.is_completed() for r in runs), [r.state for r in runs]
        held = slot_holdings(client, ids)
        assert {h[2] for h in held} == set(ids), held  # both trained
        for earlier, later in zip(held, held[1:]):
            assert earlier[1] <= later[0], f"{earlier[3]} and {later[3]} held the slot at the same time"
        summaries = [summary_status(client, i) for i in ids]
    history_after = store.read_alias("svc/eval-candidate", "production")[0]
    shipped = sum(s == "completed" for s in summaries)
    assert shipped >= 1 and set(summaries) <= {"completed", "superseded"}, summaries
    moves = len(history_after["history"]) - len(history_before["history"])
    assert moves == shipped, (summaries, history_before, history_after)


def slot_holdings(client, run_ids: list) -> list[tuple]:
    """(got, released, flow run, task) for every stage that held the accelerator slot, from their logs."""
    from prefect.client.schemas.filters import LogFilter, LogFilterTaskRunId

    tasks = {t.id: t for t in task_runs(client, run_ids) if t.name.rsplit("-", 1)[0] in ACCELERATOR_STAGES}
    logs = client.read_logs(log_filter=LogFilter(task_run_id=LogFilterTaskRunId(any_=list(tasks))), limit=200)
    times: dict = {}
    for log in logs:
        for word, slot in (("got the slot", 0), ("released the slot", 1)):
            if word in log.message:
                times.setdefault(log.task_run_id, [None, None])[slot] = log.timestamp
    return sorted((got, released, tasks[t].flow_run_id, tasks[t].name) for t, (got, released) in times.items())


def summary_status(client, run_id) -> str:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    (summary,) = client.read_artifacts(artifact_filter=ArtifactFilter(
        flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]), key=ArtifactFilterKey(any_=["svc-run-summary"])))
    return summary.data.split("\n")[1].split(": ")[1].split("  ")[0]


def test_a_failed_run_notifies_the_webhook_with_its_url(service):
    Receiver.received.clear()
    bad = service["home"] / "bad-eval.jsonl"  # there, so the run starts; a bad row fails it inside the flow
    bad.write_text('{"question": "reverse: a b", "answer": ""}\n')
    failed = run_cli("run", str(service["spec"]), "--set", f"data.eval={bad}")
    assert failed.code == 2 and "bad-eval.jsonl:1" in failed.stderr, failed.output[-2000:]
    message = wait_for(lambda: next((m for m in Receiver.received if "Failed" in m.get("text", "")), None), 120,
                       "the notification")
    with api(service) as client:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateName

        failed_runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
            name=FlowRunFilterStateName(any_=["Failed"]))))
    shown = [(r.name, r.flow_id, (r.state.message or "")[:300]) for r in failed_runs]
    print("failed runs:", shown)
    named = [r for r in failed_runs if f"/runs/flow-run/{r.id}" in message["text"]]
    assert len(named) == 1 and "svc" in message["subject"], (message, shown)
    assert "bad-eval.jsonl:1" in named[0].state.message, shown


def test_cancelling_a_run_that_trains_on_ray_stops_the_ray_job_and_leaves_no_actor(service):
    """The dashboard's Cancel on a run whose SFT trains on a Ray cluster (a local one here): the run ends
    cancelled, the cluster's job is over, and no actor or process of it is left (the cluster stays up)."""
    from prefect.states import Cancelling

    from distributed import local

    cluster = local.up(nodes=0)
    try:
        with api(service) as client:
            manual = deployment(client, "post-train/svc")
            spec = copy.deepcopy(manual.parameters["spec"])
            spec["data"].pop("preference"), spec["stages"].pop("dpo")  # SFT alone: no data of the other tests
            spec["stages"]["sft"].update(epochs=500, trainer_args={}, learning_rate=1.0e-3,  # an hour of work
                                         resources={"engine": "ray", "workers": 1, "address": cluster["address"]})
            run = client.create_flow_run_from_deployment(manual.id, parameters={"spec": spec})

            def training_on_ray():
                state = client.read_flow_run(run.id).state
                assert not state.is_final(), f"the run ended before SFT trained on Ray: {state}"
                return ray_workers_of(cluster)

            wait_for(training_on_ray, RUN_TIMEOUT, "the SFT worker to start on Ray", every=1.0)
            client.set_flow_run_state(run.id, Cancelling(), force=True)  # what the dashboard's Cancel does
            cancelled = wait_final(client, run.id, timeout=300)
            assert cancelled.state.type.value == "CANCELLED", cancelled.state
        deadline = time.monotonic() + 120  # Ray ends a job once its driver is gone
        while (actors_of_runs(cluster) or ray_workers_of(cluster)) and time.monotonic() < deadline:
            time.sleep(1)
        assert actors_of_runs(cluster) == []
        assert ray_workers_of(cluster) == [] and drivers() == []
    finally:
        local.down()


def drivers() -> list[int]:
    """Trainer children of the flow run (`python -m distributed.driver JOB.json`) still running."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if "distributed.driver" in (proc.info["cmdline"] or []):
            found.append(proc.pid)
    return found


def test_a_worker_killed_mid_run_is_reported_crashed_and_the_rerun_redoes_only_the_cut_stage(service):
    with api(service) as client:
        manual = deployment(client, "post-train/svc")
        params = form_parameters(client, beta=0.45)
        run = client.create_flow_run_from_deployment(manual.id, parameters=params)

        def dpo_running():
            return any(t.name.startswith("train_dpo") and t.state.is_running() for t in task_runs(client, [run.id]))

        wait_for(dpo_running, RUN_TIMEOUT, "train_dpo to start", every=1.0)
        worker = psutil.Process(service["state"]["worker"]["pid"])
        victims = [worker, *worker.children(recursive=True)]
        for proc in victims:  # the machine goes away: no clean-up, no state report
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        crashed = wait_final(client, run.id, timeout=300)
        assert crashed.state.type.value == "CRASHED", crashed.state

        assert run_cli("server", "up").code == 0  # a new worker; the server kept running
        again = wait_final(client, client.create_flow_run_from_deployment(manual.id, parameters=params).id)
        assert again.state.is_completed(), again.state
        status = stage_status(client, again.id)
        assert status["train_dpo"] == "ran" and status["train_sft"] == "cached", status


def test_server_down_leaves_no_process_behind(service):
    state = json.loads((service["home"] / "state" / "server" / "state.json").read_text())
    pids = [state["server"]["pid"], state["worker"]["pid"]]
    family = [p for pid in pids if psutil.pid_exists(pid)
              for p in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]]
    down = run_cli("server", "down")
    assert down.code == 0 and "stopped" in down.stdout, down.output
    gone, alive = psutil.wait_procs(family, timeout=30)
    assert not alive, alive
    assert run_cli("server", "status").stdout.startswith("server: not running")
