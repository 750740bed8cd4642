"""Which arguments a TRL config class takes, read from the installed source, so that a typo in a stage's
`trainer_args` is refused with the spec's other problems instead of minutes later in the trainer.

Importing TRL to ask it takes about 8 s on two cores; reading its dataclasses' fields from their source
takes milliseconds. The source is parsed, never run:

>>> "max_steps" in config_fields("trl.trainer.sft_config.SFTConfig")   # inherited from TrainingArguments
True

When the class cannot be found (another TRL layout), `config_fields` returns None and the trainer's own
check, in its child process, stays the one that decides.
"""

from __future__ import annotations

import ast
import difflib
import functools
import importlib.util
from pathlib import Path

MAX_DEPTH = 8  # base classes followed


def unknown_args(config_class: str, args: dict, where: str) -> list[str]:
    """One problem per key of `args` that `config_class` (dotted path) does not take."""
    fields = config_fields(config_class)
    if fields is None:
        return []
    name = config_class.rsplit(".", 1)[-1]
    problems = []
    for key in args:
        if key not in fields:
            close = difflib.get_close_matches(str(key), sorted(fields), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(f"{where}.{key}: TRL's {name} has no argument {key!r}{hint}")
    return problems


@functools.lru_cache(maxsize=32)
def config_fields(dotted: str) -> frozenset[str] | None:
    """The dataclass fields `module.Class` and its bases accept as keyword arguments, or None."""
    module, _, name = dotted.rpartition(".")
    path = module_file(module)
    fields = _class_fields(path, name, MAX_DEPTH) if path else None
    return frozenset(fields) if fields else None


def module_file(module: str) -> Path | None:
    """The source file of `module`, found without importing it or its packages."""
    top, *rest = module.split(".")
    try:
        spec = importlib.util.find_spec(top)  # a top-level lookup imports nothing
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    base = Path(spec.origin).parent.joinpath(*rest) if spec.submodule_search_locations else Path(spec.origin)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@functools.lru_cache(maxsize=64)
def _parse(path: Path) -> ast.Module | None:
    try:
        return ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None


def _class_fields(path: Path, name: str, depth: int) -> set[str] | None:
    tree = _parse(path)
    node = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name), None) if tree else None
    if node is None:
        found = _defining_file(path, name)  # `from transformers import X`: X lives in one of its modules
        return _class_fields(found, name, depth) if found and found != path else None
    fields = {target.id for target in _init_fields(node)}
    for base in node.bases:
        base_name = base.id if isinstance(base, ast.Name) else base.attr if isinstance(base, ast.Attribute) else None
        if base_name in (None, "object") or depth <= 0:
            continue
        base_path = _imported_from(tree, path, base_name) or path
        inherited = _class_fields(base_path, base_name, depth - 1)
        if inherited is None:
            return None  # a base we cannot read: better no check than a wrong one
        fields |= inherited
    return fields


def _init_fields(node: ast.ClassDef) -> list[ast.Name]:
    """The annotated names of a dataclass body that `__init__` takes (not ClassVar, not init=False)."""
    out = []
    for item in node.body:
        if not (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)):
            continue
        if "ClassVar" in ast.unparse(item.annotation):
            continue
        call = item.value if isinstance(item.value, ast.Call) else None
        if call and any(k.arg == "init" and isinstance(k.value, ast.Constant) and k.value.value is False
                        for k in call.keywords):
            continue
        out.append(item.target)
    return out


def _imported_from(tree: ast.Module, path: Path, name: str) -> Path | None:
    """The file a module's `from X import name` points at."""
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and any(a.name == name for a in node.names):
            if node.level == 0:
                return module_file(node.module or "")
            base = path.parent
            for _ in range(node.level - 1):
                base = base.parent
            target = base.joinpath(*(node.module or "").split(".")) if node.module else base
            for candidate in (target.with_suffix(".py"), target / "__init__.py"):
                if candidate.is_file():
                    return candidate
    return None


def _defining_file(package_init: Path, name: str) -> Path | None:
    """For a lazy package (`transformers`), the top-level module of the package that defines `name`."""
    if package_init.name != "__init__.py":
        return None
    needle = f"\nclass {name}".encode()
    for candidate in sorted(package_init.parent.glob("*.py")):
        try:
            if needle in candidate.read_bytes():
                return candidate
        except OSError:
            continue
    return None
