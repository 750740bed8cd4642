"""`alignflow artifacts ls|show|get|promote|rollback|verify|history`: look into the store."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from alignflow.errors import ArtifactNotFound, UsageError
from alignflow.home import default_store
from alignflow.names import check
from alignflow.tables import format_table
from storage import ArtifactStore, open_store


def add_parsers(sub) -> None:
    artifacts = sub.add_parser("artifacts", help="list, inspect, fetch, promote and verify stored artifacts")
    artifacts.add_argument("--store", help="folder or s3://bucket/prefix (default: $ALIGNFLOW_STORE or "
                                           ".alignflow/store)")
    artifacts.add_argument("--storage", metavar="BLOCK", help="a saved prefect-aws AwsCredentials block for an "
                                                              "s3:// store (default: the AWS environment)")
    artifacts.set_defaults(func=cmd_artifacts)
    verbs = artifacts.add_subparsers(dest="artifacts_command", required=True)
    verbs.add_parser("ls", help="artifacts, or the versions of one").add_argument("name", nargs="?")
    show = verbs.add_parser("show", help="one version: files, metrics, metadata")
    show.add_argument("selector", metavar="NAME[@VERSION|@ALIAS]")
    show.add_argument("--lineage", action="store_true", help="the chain of inputs, configs and runs that made it")
    get = verbs.add_parser("get", help="copy an artifact's files into a folder")
    get.add_argument("selector", metavar="NAME[@VERSION|@ALIAS]")
    get.add_argument("dest")
    promote = verbs.add_parser("promote", help="point an alias at a version (compare-and-swap)")
    promote.add_argument("selector", metavar="NAME@VERSION")
    promote.add_argument("alias")
    rollback = verbs.add_parser("rollback", help="point an alias back at its previous version")
    rollback.add_argument("name")
    rollback.add_argument("alias")
    verbs.add_parser("verify", help="re-hash every blob that manifests reference; exit 1 on any problem")
    verbs.add_parser("history", help="a pipeline's production versions, oldest first: model, data versions, "
                                     "score per evaluation set").add_argument("pipeline")


def cmd_artifacts(args) -> int:
    """The verb, with the Prefect API at hand when a credentials block must be read through it."""
    if not args.storage:
        return run_artifacts(args)
    from alignflow.cli.common import quiet_prefect
    from alignflow.service.server import prefect_api

    quiet_prefect()
    with prefect_api():
        return run_artifacts(args)


def parse_selector(text: str) -> tuple[str, int | str]:
    """'demo/sft@3' -> ('demo/sft', 3); 'demo/sft@production' -> (..., 'production'); 'demo/sft@sha256:...' ->
    the version with that digest; 'demo/sft' -> latest. The name and an alias must follow their rules."""
    name, _, selector = text.partition("@")
    check("artifact", name, f"artifact {text!r}")
    if selector.isdigit():
        return name, int(selector)
    if selector.startswith("sha256:") or selector in ("", "latest"):
        return name, selector or "latest"
    return name, check("alias", selector, f"artifact {text!r}")


def existing_store(location: str, credentials_block: str | None = None) -> ArtifactStore:
    """The store at `location` for commands that read it: a folder that is missing or a file is an error
    (not an empty store), and so is an s3:// store that cannot be reached."""
    if "://" not in location:
        path = Path(location).expanduser()
        if not path.is_dir():
            what = "is a file, not a store folder" if path.exists() else "does not exist"
            raise UsageError(f"store {location}: {what}; pass --store FOLDER_OR_S3_URI (or set ALIGNFLOW_STORE) "
                             "naming the store a run wrote")
    return open_store(location, credentials_block=credentials_block)


def cmd_ls(store: ArtifactStore, name: str | None) -> None:
    if not name:
        rows = [{"artifact": n, "versions": len(store.versions(n)), "latest": store.latest_version(n)}
                for n in store.names()]
        print(format_table(rows, ["artifact", "versions", "latest"]) if rows else f"no artifacts in {store.uri}")
        return
    check("artifact", name, "artifacts ls NAME")
    aliases = aliases_by_version(store, name)
    rows = []
    for v in store.versions(name):
        ref = store.ref(name, v)
        rows.append({"version": v, "kind": ref.kind, "digest": ref.short_digest,
                     "aliases": ",".join(aliases.get(v, [])), "metrics": metric_text(ref.metrics)})
    if not rows:
        raise UsageError(f"no artifact named {name!r} in {store.uri}; `alignflow artifacts ls` lists them")
    print(format_table(rows, ["version", "kind", "digest", "aliases", "metrics"]))


def aliases_by_version(store: ArtifactStore, name: str) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for key in store.backend.list(f"artifacts/{name}/aliases/"):
        alias = Path(key).stem
        out.setdefault(store.alias_target(name, alias), []).append(alias)
    return out


def metric_text(metrics: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in metrics.items())


def cmd_show(store: ArtifactStore, selector: str, lineage: bool) -> None:
    ref = store.ref(*parse_selector(selector))
    manifest = store.manifest(ref.digest)
    size = sum(f["size"] for f in manifest["files"].values())
    print(f"{ref.label}  kind={ref.kind}  digest={ref.digest}")
    print(f"  files: {len(manifest['files'])}, {size / 2**20:.2f} MiB")
    if manifest["metrics"]:
        print(f"  metrics: {metric_text(manifest['metrics'])}")
    if manifest["metadata"]:
        print(f"  metadata: {json.dumps(manifest['metadata'], sort_keys=True)}")
    if lineage:
        print("lineage:")
        print_lineage(store, ref.name, ref.version, ref.digest, depth=1)


def print_lineage(store: ArtifactStore, name: str, version: int, digest: str, depth: int) -> None:
    """The chain that made an artifact: each input's stage, config, libraries and flow run, recursively."""
    pad = "  " * depth
    info = store.manifest(digest).get("lineage", {})
    print(f"{pad}{name}@{version} ({digest[7:19]}) made by {info.get('stage', '?')} "
          f"in flow run {info.get('flow_run_id') or '-'}")
    if info.get("config"):
        print(f"{pad}  config: {json.dumps(info['config'], sort_keys=True)}")
    if info.get("libraries"):
        print(f"{pad}  libraries: {metric_text(info['libraries'])}")
    for role, parent in info.get("inputs", {}).items():
        print(f"{pad}  input {role}:")
        print_lineage(store, parent["name"], parent["version"], parent["digest"], depth + 2)


def cmd_get(store: ArtifactStore, selector: str, dest: str) -> None:
    ref = store.ref(*parse_selector(selector))
    target = Path(dest)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UsageError(f"artifacts get: {target} exists and is not an empty folder; choose an empty or new folder")
    files = store.get_dir(ref)
    try:
        shutil.copytree(files, target, dirs_exist_ok=True, copy_function=shutil.copyfile)
    except OSError as exc:
        raise UsageError(f"artifacts get: cannot write {target} ({exc.strerror or exc}); choose a folder you can "
                         "write") from exc
    print(f"{ref.label} ({ref.short_digest}) -> {target}")


def cmd_verify(store: ArtifactStore) -> int:
    started = time.monotonic()
    report = store.verify()
    print(f"checked {report['versions']} versions, {report['manifests']} manifests, {report['blobs']} blobs "
          f"in {time.monotonic() - started:.1f}s: {len(report['problems'])} problems")
    for problem in report["problems"]:
        print(f"  - {problem}")
    return 1 if report["problems"] else 0


def cmd_history(store: ArtifactStore, pipeline: str) -> None:
    from flows.trend import REPORT, production_history, trend_table

    rows = production_history(store, check("pipeline", pipeline, "artifacts history PIPELINE"))
    if not rows:
        raise ArtifactNotFound(f"{pipeline} has nothing in production in {store.uri} yet: a run whose gate passes "
                               f"promotes its evaluation report, or `alignflow artifacts promote "
                               f"{pipeline}/{REPORT}@N production`")
    print(f"{pipeline}/{REPORT}: the versions in production, oldest first; scores are {rows[-1]['metric']}, "
          f"the gate judges {rows[-1]['primary']}")
    print(trend_table(rows))


def run_artifacts(args) -> int:
    store = existing_store(args.store or default_store(), args.storage)
    if args.artifacts_command == "ls":
        cmd_ls(store, args.name)
    elif args.artifacts_command == "show":
        cmd_show(store, args.selector, args.lineage)
    elif args.artifacts_command == "get":
        cmd_get(store, args.selector, args.dest)
    elif args.artifacts_command == "promote":
        name, version = parse_selector(args.selector)
        if not isinstance(version, int):
            raise UsageError(f"promote {args.selector}: name a version number, e.g. {name}@3")
        store.promote(store.ref(name, version), check("alias", args.alias, "artifacts promote ALIAS"))
        print(f"{args.alias} -> {name}@{version}")
    elif args.artifacts_command == "rollback":
        name = check("artifact", args.name, "artifacts rollback NAME")
        print(f"{args.alias} -> {name}@{store.rollback(name, check('alias', args.alias, 'artifacts rollback ALIAS'))}")
    elif args.artifacts_command == "verify":
        return cmd_verify(store)
    elif args.artifacts_command == "history":
        cmd_history(store, args.pipeline)
    return 0
