"""`alignflow deploy` and `alignflow undeploy`: apply prefect.yaml's deployments for one pipeline spec, plus
the automations that keep the service honest (crashed runs are marked Crashed; failures and rejected
candidates notify), or remove them.

A thin wrapper over Prefect's own `prefect deploy`: it only sets the values prefect.yaml reads (the
variable `alignflow_spec`, the ALIGNFLOW_* environment variables) and then runs it. Deployments are named
after their pipeline, so one server holds several, each with its own schedule, trigger and watched
sources:

    post-train/demo               by hand (the dashboard's Run button)
    post-train/demo:nightly       the nightly schedule
    post-train/demo:on-new-data   alignflow.dataset.updated for the datasets demo/*
    sweep/demo                    by hand: the spec at every point of a grid, only the best shipped
    watch-data/demo               scans demo's watched sources

Each carries the tag `pipeline:demo`, which its runs inherit from their first state on: the failure
notification matches it (Prefect's state events carry the tags a run was created with).
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta

from alignflow.errors import ConfigError
from alignflow.home import PROJECT_ROOT
from alignflow.names import pipeline_tag
from alignflow.service.server import HEARTBEAT_SECONDS, POOL, ServerError, named_deployments

SPEC_VARIABLE = "alignflow_spec"  # carries the spec into `prefect deploy`, which copies it into each deployment
KINDS = {"manual": "post-train/{}", "nightly": "post-train/{}:nightly", "on-new-data": "post-train/{}:on-new-data",
         "sweep": "sweep/{}", "watch": "watch-data/{}"}  # the deployments of a pipeline, by their names in prefect.yaml
TEMPLATE = "{{ $ALIGNFLOW_PIPELINE }}"


def deployment_names(pipeline: str) -> dict[str, str]:
    """>>> deployment_names("demo")["nightly"]
    'post-train/demo:nightly'"""
    return {kind: name.format(pipeline) for kind, name in KINDS.items()}


def apply_deployments(spec, api_url: str, pool: str = POOL, project_dir: str | None = None) -> list[str]:
    """Deploy manual, nightly, on-new-data, sweep and watch-data for `spec`; return lines saying what was done.
    Deployments of the same pipeline under other names (earlier releases' `post-train/manual`) go.

    `pool`: the work pool of the post-train deployments; `project_dir`: where workers find this project."""
    from prefect.variables import Variable

    block_id = notification_block(spec.service.notify) if spec.service.notify else None  # before any write
    ensure_process_pool(POOL)
    Variable.set(SPEC_VARIABLE, spec.to_dict(), overwrite=True)
    env = dict(os.environ, PREFECT_API_URL=api_url, ALIGNFLOW_PROJECT_DIR=project_dir or str(PROJECT_ROOT),
               ALIGNFLOW_WORK_POOL=pool,
               ALIGNFLOW_PIPELINE=spec.name, ALIGNFLOW_NIGHTLY_CRON=spec.service.nightly.cron,
               ALIGNFLOW_TIMEZONE=spec.service.nightly.timezone)
    selectors = deployment_names(TEMPLATE)  # prefect deploy picks configs by their names before templating
    prefect_deploy(env, "-n", selectors["manual"], "-n", selectors["nightly"], "-n", selectors["on-new-data"],
                   "-n", selectors["sweep"])
    # an interval cannot be templated in prefect.yaml; a single deployment takes it from the command line
    prefect_deploy(env, "-n", selectors["watch"], "--interval", f"{spec.service.watch.interval_seconds:.0f}")
    names = deployment_names(spec.name)
    check_deployed(spec.name, names)
    removed = remove_deployments(spec.name, keep=set(names.values()))
    lines = [f"deployed pipeline {spec.name!r} to {api_url} (work pool {pool}; watch-data on {POOL}):",
             f"  {names['manual']:<34} by hand: the dashboard's Run button or `prefect deployment run`",
             f"  {names['nightly']:<34} cron {spec.service.nightly.cron} ({spec.service.nightly.timezone})",
             f"  {names['on-new-data']:<34} on alignflow.dataset.updated for datasets {spec.name}/*",
             f"  {names['sweep']:<34} by hand: a grid of settings, only the best candidate shipped",
             f"  {names['watch']:<34} every {spec.service.watch.interval_seconds:g}s, "
             f"{len(spec.service.watch.sources)} watched source(s)"]
    lines += [f"  removed {name} (the pipeline's deployment under an earlier name)" for name in removed]
    crash_zombie_runs()
    if block_id:
        notify_on_failure(spec.name, block_id)
        lines.append(f"  {'notifications':<34} failed runs and rejected candidates -> {spec.service.notify}")
    return lines


def check_deployed(pipeline: str, names: dict[str, str]) -> None:
    """Each deployment holds this pipeline's spec. Another `alignflow deploy` writing the shared variable
    at the same moment could have given them its own: then say so rather than serve the wrong spec."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        for name in names.values():
            got = (client.read_deployment_by_name(name).parameters.get("spec") or {}).get("name")
            if got != pipeline:
                raise ServerError(f"deployment {name} holds pipeline {got!r}'s spec, not {pipeline!r}: another "
                                    "`alignflow deploy` ran at the same time. Run this one again")


def remove_deployments(pipeline: str, keep: set[str] = frozenset()) -> list[str]:
    """Delete the pipeline's deployments (but those in `keep`) with the triggers they own; their names."""
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterTags

    removed = []
    with get_client(sync_client=True) as client:
        tagged = DeploymentFilter(tags=DeploymentFilterTags(all_=[pipeline_tag(pipeline)]))
        for name, d in named_deployments(client, tagged):
            if name not in keep:
                client.delete_resource_owned_automations(f"prefect.deployment.{d.id}")
                client.delete_deployment(d.id)
                removed.append(name)
    return sorted(removed)


def undeploy(pipeline: str) -> list[str]:
    """Remove a pipeline from the server: its deployments (schedules and new-data trigger with them) and its
    notification automations. Other pipelines, runs, artifacts and the store are left as they are."""
    from prefect import get_client

    removed = remove_deployments(pipeline)
    with get_client(sync_client=True) as client:
        for automation in notification_automations(pipeline):
            for existing in client.read_automations_by_name(automation):
                client.delete_automation(existing.id)
                removed.append(f"automation {automation!r}")
    return removed


def notification_automations(pipeline: str) -> list[str]:
    return [f"alignflow: {pipeline} {what}" for what in ("failed", "not shipped")]


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
    # a state event carries the tags its run was created with (the server caches them at the first one):
    # the deployment's, or those `alignflow run` starts its run with; not those a run adds later
    failed = EventTrigger(expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
                          match=ResourceSpecification({"prefect.resource.id": "prefect.flow-run.*"}),
                          match_related=ResourceSpecification({"prefect.resource.role": "tag",
                                                               "prefect.resource.id":
                                                                   f"prefect.tag.{pipeline_tag(pipeline)}"}),
                          posture=Posture.Reactive, threshold=1)
    rejected = EventTrigger(expect={NOT_SHIPPED_EVENT},
                            match=ResourceSpecification({"prefect.resource.id": f"alignflow.pipeline.{pipeline}"}),
                            posture=Posture.Reactive, threshold=1)
    for (what, trigger), name in zip((("failed", failed), ("not shipped", rejected)),
                                     notification_automations(pipeline)):
        replace_automation(Automation(
            name=name, trigger=trigger,
            actions=[SendNotification(block_document_id=block_id, subject=f"alignflow {pipeline}: run {what}",
                                      body=body)]))
