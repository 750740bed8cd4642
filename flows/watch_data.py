"""The `watch-data` flow: scan a pipeline's watched sources; each change becomes one dataset version and
one `alignflow.dataset.updated` event, which starts the pipeline's `on-new-data` deployment.

A source counts as changed when its content listing (S3 ETags, sha256 of local files) differs from the
one its newest version was registered from. It is registered only once the listing has stayed the same
for `settle_seconds`, so files that land together (a burst) become one version and one run.
"""

from __future__ import annotations

import time

from prefect import flow

from flows.spec import PipelineSpec, parse_spec


def watch_run_name() -> str:
    from prefect.runtime import flow_run

    spec = (flow_run.parameters or {}).get("spec") or {}
    return f"watch {spec.get('name', 'data') if isinstance(spec, dict) else spec.name}"


@flow(name="watch-data", flow_run_name=watch_run_name, persist_result=False, validate_parameters=False)
def watch_data(spec: PipelineSpec) -> list[str]:
    """Register new versions of the pipeline's watched data sources and announce each once."""
    from prefect import get_run_logger

    lines = scan(parse_spec(spec), announce=True)
    for line in lines:
        get_run_logger().info(line)
    return lines


def scan(spec: PipelineSpec, announce: bool) -> list[str]:
    """One pass over `spec.service.watch.sources`; returns one line per source saying what happened."""
    from flows.data_versions import announce_once, fingerprint, register
    from storage import open_store

    store, watch, lines = open_store(spec.store, credentials_block=spec.storage), spec.service.watch, []
    for name, source in watch.sources.items():
        listing = settled_listing(source, watch.settle_seconds)
        latest = store.latest_version(name)
        if latest is not None and recorded_fingerprint(store, name, latest) == fingerprint(listing):
            ref, what = store.ref(name, latest), "unchanged"
        else:
            ref, new = register(store, name, source, listing)
            what = "new version" if new else "unchanged"
        sent = announce and announce_once(store, ref, source)
        lines.append(f"{name}: {what} ({ref.label}, {len(listing)} files from {source})"
                     + ("; announced" if sent else ""))
    return lines


def recorded_fingerprint(store, name: str, version: int) -> str | None:
    return store.manifest(store.ref(name, version).digest)["metadata"].get("fingerprint")


def settled_listing(source: str, settle_seconds: float) -> dict[str, str]:
    """The source's listing once it has stopped changing for `settle_seconds` (at most ten rounds)."""
    from flows.data_versions import source_listing

    listing = source_listing(source)
    for _ in range(10 if settle_seconds else 0):
        time.sleep(settle_seconds)
        again = source_listing(source)
        if again == listing:
            break
        listing = again
    return listing
