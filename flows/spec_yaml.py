"""Reading a pipeline spec as users write it: the file, and `--set KEY=VALUE` overrides, as YAML.

What is refused here, by name and line, before the spec's fields are validated (flows/spec.py):
    a path that is a folder; a file that is UTF-16, binary or not UTF-8; YAML that does not parse;
    a key written twice in one mapping (the last one would silently win); aliases that expand a page into
    megabytes; nesting too deep to read; an override that is not a dotted KEY=VALUE or whose value is not
    YAML. An override of a stage written as `gate:` (on, with defaults) lands in that stage.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from alignflow.errors import ConfigError


def read_spec_file(path: Path) -> dict:
    """The spec file's top-level mapping, or a ConfigError naming the file and what is wrong with it."""
    import yaml

    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such file; pass the path of a pipeline spec (see deployments/demo.yaml)",
                          "command line") from exc
    except IsADirectoryError as exc:
        raise ConfigError(f"{path}: is a folder; pass the spec file itself, e.g. deployments/demo.yaml",
                          "command line") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror})", "command line") from exc
    try:
        raw = read_yaml(spec_text(path, data))
    except yaml.YAMLError as exc:
        raise ConfigError(yaml_problem(path, exc), str(path)) from exc
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping (name:, model:, ...) at the top level, got "
                          f"{type(raw).__name__}", str(path))
    return raw


def yaml_problem(path: Path, exc) -> str:
    """'spec.yaml:3: key 'name' appears twice ...' from a YAML error, with the line it points at."""
    mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None)
    if mark is None or problem is None:
        return f"{path}: not valid YAML: {exc}"
    context = f" ({exc.context})" if getattr(exc, "context", None) else ""
    return f"{path}:{mark.line + 1}: not valid YAML: {problem}{context}"


def spec_text(path: Path, data: bytes) -> str:
    """UTF-8 text, or a ConfigError saying what the file is instead (UTF-16, binary)."""
    import codecs

    if data[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE) or b"\x00" in data[:4096]:
        raise ConfigError(f"{path}: not a UTF-8 text file (UTF-16, or binary); save the spec as UTF-8 YAML "
                          f"(e.g. `iconv -f UTF-16 -t UTF-8 {path.name}`)", str(path))
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 (byte 0x{data[exc.start]:02x}); save the spec as UTF-8",
                          str(path)) from exc


MAX_VALUES = 100_000  # a spec is a page of settings; more values than this are an alias bomb, not a pipeline


def read_yaml(text: str):
    """YAML as users write it: `1e-4` is a number (YAML 1.1, and so PyYAML, would read it as a string); a
    key written twice in one mapping is an error, not "the last one wins"; aliases may not blow a page up
    into megabytes."""
    import yaml

    try:
        data = yaml.load(text, Loader=_loader())  # noqa: S506 (a SafeLoader)
        too_many = _count_values(data, MAX_VALUES) > MAX_VALUES
    except RecursionError as exc:
        raise yaml.YAMLError("it is nested too deeply to be a pipeline spec") from exc
    if too_many:
        raise yaml.YAMLError(f"it expands to more than {MAX_VALUES} values through aliases (*name repeats what "
                             "&name marks); write the repeated parts out, or nest fewer aliases")
    return data


@functools.lru_cache(maxsize=1)
def _loader():
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                _refuse_duplicate_keys(self, node)
            return super().construct_mapping(node, deep)

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(
        r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"), list("-+0123456789."))
    return Loader


def _refuse_duplicate_keys(loader, node) -> None:
    import yaml

    seen: dict = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # `<<: *defaults` may be overridden by the keys beside it
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.setdefault(key, key_node.start_mark.line)
        except TypeError:
            continue  # an unhashable key: SafeLoader reports it
        if first != key_node.start_mark.line:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice in one mapping (first on line {first + 1}); keep one",
                key_node.start_mark)


def _count_values(value, limit: int, count: int = 0) -> int:
    """How many values `value` holds, counting what aliases repeat, stopping once past `limit`."""
    count += 1
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    for child in children:
        if count > limit:
            break
        count = _count_values(child, limit, count)
    return count


def apply_override(raw: dict, item: str) -> None:
    """`apply_override(d, "stages.dpo.beta=0.2")` sets d["stages"]["dpo"]["beta"] = 0.2 (YAML-typed). A
    section written without settings (`gate:` in YAML, so None) becomes a mapping that holds the value."""
    key, sep, value = item.partition("=")
    if not sep or not all(key.split(".")):
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE with a dotted KEY, e.g. --set stages.dpo.beta=0.2",
                          "command line")
    set_field(raw, key, override_value(key, value))


def override_value(key: str, value: str, flag: str = "--set"):
    """A command-line value read as YAML, or a ConfigError saying how to quote it."""
    import yaml

    try:
        return read_yaml(value)
    except yaml.YAMLError as exc:
        why = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{flag} {key}: the value is not valid YAML ({why}); quote it, e.g. "
                          f"{flag} '{key}=\"...\"'", "command line") from exc


def set_field(raw: dict, key: str, value, flag: str = "--set") -> None:
    """raw[a][b][c] = value for the dotted `key` a.b.c, making the mappings on the way (see apply_override)."""
    parts = key.split(".")
    node = raw
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            where = ".".join(parts[: depth + 1])
            raise ConfigError(f"{flag} {key}: {where} is {type(child).__name__}, not a mapping; set {where} "
                              "itself", "command line")
        node = child
    node[parts[-1]] = value
