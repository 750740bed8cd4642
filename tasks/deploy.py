"""Stage `deploy`: serve a model artifact behind an OpenAI-compatible server (vLLM, or SGLang), without
dropping traffic, and record what is served.

Idempotent rather than cached: serving/rollout.py makes the model what the pipeline's name serves (nothing
happens when it serves that digest already; otherwise blue/green, or an adapter loaded into a shared
server). Then the load test measures the live endpoint, and the record (endpoint, pid, engine, model
digest, launch, where the api key comes from) goes to the store as a `deployment` artifact and to the
local record `alignflow serve` reads (serving/records.py).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from serving.records import Served, ServerRecord, write_record
from serving.settings import Settings
from storage import ArtifactRef
from tasks.config import StageConfig
from tasks.models import questions
from tasks.stage import RunContext, publish, stage


class DeployStage(Settings, StageConfig):
    """An OpenAI-compatible server (vLLM or SGLang) started from the serve env; new versions go live without a
    gap. The fields and their checks are serving/settings.py's: every engine reads them the same way."""


@stage("deploy", config=DeployStage, key_metric="endpoint", cached=False)
def deploy(run: RunContext, model: ArtifactRef, config: DeployStage, probe: ArtifactRef | None) -> ArtifactRef:
    from prefect import get_run_logger

    prompts = questions(run.open_store().get_dir(probe) / "data.jsonl", 64) if probe else ["Hello!"]
    return serve(run, model, config, prompts, get_run_logger())


def serve(run: RunContext, model: ArtifactRef, config: DeployStage, prompts: list[str], logger) -> ArtifactRef:
    """Make `model` what the pipeline's name serves and record it; returns the deployment record.
    `prompts`: the smoke request (the first) and the load test's."""
    from serving.access import resolve_key
    from serving.load_test import measure_live
    from serving.rollout import roll_out

    key = resolve_key(config.api_key)  # once: a Prefect Secret is read through the API
    record, changed = roll_out(run, model, config, prompts[0], key, logger)
    if not changed:
        return already_serving(run, model, config, record, logger)
    if config.load_test:
        record.load_test = measure_live(record, config.load_test, prompts, key, run.log_file("deploy-load-test"),
                                        logger)
    return record_deployment(run, model, config, record, "started")


def already_serving(run: RunContext, model: ArtifactRef, config: DeployStage, record: ServerRecord,
                    logger) -> ArtifactRef:
    """The pipeline's server already serves this digest. Its record may live in another store (the same
    pipeline run against a folder, then against S3): then it is recorded in this store too, never looked up
    across stores."""
    from alignflow.errors import StorageError

    store = run.open_store()
    known = record.records.get(store.uri)
    if known:
        try:
            ref = store.ref(known["name"], known["version"])
            logger.info("deploy: %s already serves %s at %s; nothing to do", run.name, model.label, record.endpoint)
            return dataclasses.replace(ref, metrics={**ref.metrics, "action": "unchanged"})
        except StorageError:
            pass  # the record was deleted from this store: write it again
    logger.info("deploy: %s already serves %s at %s; recording it in %s", run.name, model.label, record.endpoint,
                store.uri)
    record = dataclasses.replace(record, model=Served.of(model))
    return record_deployment(run, model, config, record, "unchanged")


def record_deployment(run: RunContext, model: ArtifactRef, config: DeployStage, record: ServerRecord,
                      action: str) -> ArtifactRef:
    """Publish the deployment record in the run's store, then switch the local record to it (clients that
    resolve the endpoint follow), noting which store holds which record of this server and model."""
    import tempfile

    from serving.rollout import kept_records

    probe = (record.smoke or {}).get("prompt", "Hello!")
    load = {"load_test": record.load_test} if record.load_test else {}
    Path(run.cache_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=run.cache_dir, prefix=".deployment-") as out:
        published = {k: v for k, v in record.to_json().items() if k != "records"}
        (Path(out) / "deployment.json").write_text(json.dumps(published, indent=2))
        ref = publish(run, "deployment", "deployment", Path(out), stage="deploy", config=config,
                      inputs={"model": model}, metadata={"endpoint": record.endpoint, "engine": record.engine},
                      metrics={"endpoint": record.endpoint, "smoke_prompt": probe, **load})
    records = {**kept_records(run.name, record), run.open_store().uri: {"name": ref.name, "version": ref.version}}
    write_record(dataclasses.replace(record, records=records), run.name)
    return dataclasses.replace(ref, metrics={**ref.metrics, "action": action})
