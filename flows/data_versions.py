"""Raw data as versioned artifacts: `alignflow data add`, `store://NAME@VERSION` sources, and the event
`alignflow.dataset.updated` that starts the `on-new-data` deployment.

A registered dataset is an artifact of kind `raw_data`: the source's files as they were, plus the source
and its content fingerprint (S3 ETags, or sha256 of local files; never timestamps) in its metadata. The
same content registered twice is the same version. Each new version gets exactly one event: its id is
derived from the store, the name and the version, so the Prefect server drops a repeat.
"""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path

from alignflow.errors import ConfigError, SourceError, StorageError
from storage import ArtifactRef, ArtifactStore
from tasks.convert import DataSource
from tasks.sources import fetch as fetch_source
from tasks.sources import fingerprint
from tasks.sources import listing as source_listing

EVENT = "alignflow.dataset.updated"
RAW_KIND = "raw_data"
STORE_SCHEME = "store://"


def parse_store_source(source: str) -> tuple[str, int | str] | None:
    """`store://NAME@VERSION` -> (NAME, VERSION); `@latest` or no `@` -> the newest; None for other sources.

    >>> parse_store_source("store://demo/sft@3"), parse_store_source("store://demo/sft")
    (('demo/sft', 3), ('demo/sft', 'latest'))
    """
    if not source.startswith(STORE_SCHEME):
        return None
    name, _, selector = source.removeprefix(STORE_SCHEME).partition("@")
    return name, int(selector) if selector.isdigit() else (selector or "latest")


def parse_dataset_version(text: str) -> tuple[str, int]:
    """The `dataset` flow parameter a trigger passes: 'demo/sft@3' -> ('demo/sft', 3)."""
    name, _, version = text.removeprefix(STORE_SCHEME).rpartition("@")
    if not name or not version.isdigit():
        raise ConfigError(f"dataset {text!r}: expected NAME@VERSION, e.g. demo/sft@3", "flow parameters")
    return name, int(version)


def resolve_sources(store: ArtifactStore, data: dict[str, list[DataSource]],
                    dataset: str | None) -> dict[str, list[tuple[DataSource, ArtifactRef | None]]]:
    """Each split's sources, with `store://` sources pinned to one version: the triggering `dataset`'s when
    the source names that dataset, else the one its selector (`@latest`, `@3`) picks now.

    Returns {split: [(the source as recorded in lineage, the raw artifact or None), ...]}."""
    return {split: [resolve_source(store, item, dataset, f"data.{split}") for item in items]
            for split, items in data.items() if items}


def resolve_source(store: ArtifactStore, item: DataSource, dataset: str | None,
                   where: str) -> tuple[DataSource, ArtifactRef | None]:
    parsed = parse_store_source(item.source)
    if parsed is None:
        return item, None
    name, selector = parsed
    pinned = parse_dataset_version(dataset) if dataset else None
    if pinned and pinned[0] == name and selector == "latest":  # an explicit version stays what it says
        selector = pinned[1]
    ref = raw_version(store, name, selector, where)
    return item.model_copy(update={"source": f"{STORE_SCHEME}{name}@{ref.version}"}), ref


def raw_version(store: ArtifactStore, name: str, selector: int | str, where: str) -> ArtifactRef:
    if selector == "latest" and store.latest_version(name) is None:
        raise SourceError(f"{where}: dataset {name} has no versions in store {store.uri}; register one with "
                          f"`alignflow data add {name} PATH_OR_S3_PREFIX`")
    try:
        ref = store.ref(name, selector)
    except StorageError as exc:
        raise SourceError(f"{where}: {exc}; `alignflow artifacts ls {name}` lists its versions") from None
    if ref.kind != RAW_KIND:
        raise SourceError(f"{where}: {ref.label} is a {ref.kind} artifact, not registered data")
    return ref


# ---- reading a source ----------------------------------------------------------------------------

# ---- registering and announcing ------------------------------------------------------------------

def register(store: ArtifactStore, name: str, source: str, listing: dict[str, str] | None = None,
             flow_run_id: str | None = None) -> tuple[ArtifactRef, bool]:
    """Store the source's files as the next version of `name`; (ref, True) when that is a new version,
    (the newest version, False) when the content is already there."""
    listing = source_listing(source) if listing is None else listing
    if not listing:
        raise SourceError(f"data source {source}: it holds no files")
    previous = store.latest_version(name)
    with tempfile.TemporaryDirectory(prefix="alignflow-data-") as tmp:
        fetch_source(source, listing, Path(tmp))
        ref = store.put_dir(name, RAW_KIND, Path(tmp), metadata={"fingerprint": fingerprint(listing)},
                            metrics={"files": len(listing)},
                            lineage={"stage": "data add", "config": {"source": source},
                                     "flow_run_id": flow_run_id})
    return ref, ref.version != previous


def event_id(store_uri: str, ref: ArtifactRef) -> uuid.UUID:
    """The same version always gets the same event id: the server drops a repeat."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"alignflow:{store_uri}:{ref.name}@{ref.version}:{ref.digest}")


def announce(store_uri: str, ref: ArtifactRef, source: str) -> None:
    """Emit `alignflow.dataset.updated` for a new version (the `on-new-data` deployments listen for it)."""
    from prefect.events import emit_event

    emit_event(event=EVENT, id=event_id(store_uri, ref),
               resource={"prefect.resource.id": f"alignflow.dataset.{ref.name}",
                         "prefect.resource.name": ref.name, "alignflow.dataset.version": str(ref.version)},
               payload={"name": ref.name, "version": ref.version, "digest": ref.digest, "store": store_uri,
                        "source": source})


def announce_once(store: ArtifactStore, ref: ArtifactRef, source: str) -> bool:
    """Announce a version unless it already was: a marker written once (create-if-absent) after the event
    records it, so a scan that crashed before announcing announces at the next scan, and a repeat is never
    sent for an announced version. Returns whether an event was sent."""
    if store.has_marker(ref, "announced"):
        return False
    announce(store.uri, ref, source)
    flush_events()
    store.put_marker(ref, "announced")
    return True


def flush_events() -> None:
    """Send queued events before a short-lived process exits."""
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all(timeout=30)
