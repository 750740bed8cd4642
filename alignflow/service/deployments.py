"""`alignflow deploy`: apply prefect.yaml's deployments for one pipeline spec, plus the automations that
keep the service honest (crashed runs are marked Crashed; failures and rejected candidates notify).

A thin wrapper over Prefect's own `prefect deploy`: it only sets the values prefect.yaml reads (the
variable `alignflow_spec`, the ALIGNFLOW_* environment variables) and then runs it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta

from alignflow.errors import ConfigError
from alignflow.home import PROJECT_ROOT
from alignflow.service.server import HEARTBEAT_SECONDS, POOL, ServerError

SPEC_VARIABLE = "alignflow_spec"


def apply_deployments(spec, api_url: str, pool: str = POOL, project_dir: str | None = None) -> list[str]:
    """Deploy manual, nightly, on-new-data and watch-data for `spec`; return lines saying what was done.

    `pool`: the work pool of the post-train deployments; `project_dir`: where workers find this project."""
    from prefect.variables import Variable

    block_id = notification_block(spec.service.notify) if spec.service.notify else None  # before any write
    ensure_process_pool(POOL)
    Variable.set(SPEC_VARIABLE, spec.to_dict(), overwrite=True)
    env = dict(os.environ, PREFECT_API_URL=api_url, ALIGNFLOW_PROJECT_DIR=project_dir or str(PROJECT_ROOT),
               ALIGNFLOW_WORK_POOL=pool,
               ALIGNFLOW_PIPELINE=spec.name, ALIGNFLOW_NIGHTLY_CRON=spec.service.nightly.cron,
               ALIGNFLOW_TIMEZONE=spec.service.nightly.timezone)
    prefect_deploy(env, "-n", "post-train/manual", "-n", "post-train/nightly", "-n", "post-train/on-new-data")
    # an interval cannot be templated in prefect.yaml; a single deployment takes it from the command line
    prefect_deploy(env, "-n", "watch-data/watch-data", "--interval", f"{spec.service.watch.interval_seconds:.0f}")
    lines = [f"deployed pipeline {spec.name!r} to {api_url} (work pool {pool}; watch-data on {POOL}):",
             "  post-train/manual       by hand: the dashboard's Run button or `prefect deployment run`",
             f"  post-train/nightly      cron {spec.service.nightly.cron} ({spec.service.nightly.timezone})",
             f"  post-train/on-new-data  on alignflow.dataset.updated for datasets {spec.name}/*",
             f"  watch-data/watch-data   every {spec.service.watch.interval_seconds:g}s, "
             f"{len(spec.service.watch.sources)} watched source(s)"]
    crash_zombie_runs()
    if block_id:
        notify_on_failure(spec.name, block_id)
        lines.append(f"  notifications          failed runs and rejected candidates -> {spec.service.notify}")
    return lines


def prefect_deploy(env: dict, *args: str) -> None:
    cmd = [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--prefect-file",
           str(PROJECT_ROOT / "prefect.yaml"), *args]
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or "Skipping deployment" in proc.stdout:
        raise ServerError(f"prefect deploy {' '.join(args)} failed (exit {proc.returncode}):\n"
                          f"{(proc.stdout + proc.stderr)[-3000:]}")


def ensure_process_pool(name: str) -> None:
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
        except ObjectNotFound:
            try:
                client.create_work_pool(WorkPoolCreate(
                    name=name, type=ProcessWorker.type,
                    base_job_template=ProcessWorker.get_default_base_job_template()))
            except ObjectAlreadyExists:
                pass


def replace_automation(automation) -> None:
    """Create `automation`, replacing one of the same name (deploying again must not duplicate it)."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        for existing in client.read_automations_by_name(automation.name):
            client.delete_automation(existing.id)
    automation.create()


def crash_zombie_runs() -> None:
    """alignflow's runs send a heartbeat every HEARTBEAT_SECONDS; a post-train run silent for three beats
    (a killed worker, a lost node) is marked Crashed, so the dashboard and notifications say so.

    watch-data is left out: a scan takes seconds and the next one comes anyway. (A run's last heartbeat
    can reach the server after its final state; the action then finds the run finished and does nothing,
    with a warning in the server's log.)"""
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    replace_automation(Automation(
        name="alignflow: crash silent runs",
        description="Marks post-train runs Crashed when their heartbeats stop (a killed worker, a lost node).",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"}, expect={"prefect.flow-run.*"},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            match_related=ResourceSpecification({"prefect.resource.role": "flow",
                                                 "prefect.resource.name": "post-train"}),
            for_each={"prefect.resource.id"}, posture=Posture.Proactive, threshold=1,
            within=timedelta(seconds=3 * HEARTBEAT_SECONDS)),
        actions=[ChangeFlowRunState(state=StateType.CRASHED,
                                    message="No heartbeat for 90 s: its worker or machine stopped. Run it "
                                            "again: every stage that finished comes from the cache.")]))


def notification_block(block_slug: str):
    """The id of the saved notification block `service.notify` names, or a ConfigError saying how to save it."""
    from prefect.blocks.core import Block

    try:
        return Block.load(block_slug)._block_document_id
    except ValueError as exc:
        raise ConfigError(f"service.notify: no saved Prefect block {block_slug!r} ({exc}); save one, e.g. "
                          "SlackWebhook(url=...).save('alerts') for slack-webhook/alerts", "spec") from None


def notify_on_failure(pipeline: str, block_id) -> None:
    """Tell the user's notification block when a post-train run fails or crashes, and when a candidate of
    `pipeline` is rejected by the gate or loses the race to production."""
    from prefect.automations import Automation
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    from flows.dashboard import NOT_SHIPPED_EVENT
    body = ("alignflow pipeline " + pipeline + ": run {{ flow_run.name }} {{ event.event }} "
            "{{ flow_run.state.message or event.payload.reasons or '' }} {{ flow_run|ui_url }}")
    # a flow run's state events name its flow but not always its tags: match the flow (deployment names
    # are fixed, so a Prefect server serves one pipeline)
    failed = EventTrigger(expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
                          match=ResourceSpecification({"prefect.resource.id": "prefect.flow-run.*"}),
                          match_related=ResourceSpecification({"prefect.resource.role": "flow",
                                                               "prefect.resource.name": "post-train"}),
                          posture=Posture.Reactive, threshold=1)
    rejected = EventTrigger(expect={NOT_SHIPPED_EVENT},
                            match=ResourceSpecification({"prefect.resource.id": f"alignflow.pipeline.{pipeline}"}),
                            posture=Posture.Reactive, threshold=1)
    for what, trigger in (("failed", failed), ("not shipped", rejected)):
        replace_automation(Automation(
            name=f"alignflow: {pipeline} {what}", trigger=trigger,
            actions=[SendNotification(block_document_id=block_id, subject=f"alignflow {pipeline}: run {what}",
                                      body=body)]))
