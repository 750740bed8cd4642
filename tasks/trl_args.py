"""Which arguments a TRL config class takes, read from the installed source, so that a typo in a stage's
`trainer_args` is refused with the spec's other problems instead of minutes later in the trainer.

Importing TRL to ask it takes about 8 s on two cores; reading its dataclasses' fields from their source
takes milliseconds. The source is tokenized, never run (and not `ast.parse`d: CPython 3.11's AST builder
fails with "recursion depth mismatch" when another thread of a Prefect worker parses at the same time):

>>> "max_steps" in config_fields("trl.trainer.sft_config.SFTConfig")   # inherited from TrainingArguments
True

When the class cannot be found (another TRL layout), `config_fields` returns None and the trainer's own
check, in its child process, stays the one that decides.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import io
import keyword
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

MAX_DEPTH = 8  # base classes followed


def unknown_args(config_class: str, args: dict, where: str) -> list[str]:
    """One problem per key of `args` that `config_class` (dotted path) does not take."""
    if not args:
        return []
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


@dataclass
class Source:
    """What a module's source says at its top level: its classes (bases, the fields `__init__` takes) and
    its `from X import Y` lines."""

    classes: dict[str, tuple[list[str], set[str]]] = field(default_factory=dict)
    imports: dict[str, tuple[int, str, str]] = field(default_factory=dict)  # name -> (level, module, original)


@functools.lru_cache(maxsize=64)
def _source(path: Path) -> Source | None:
    """`path` read with the tokenizer (pure Python; `ast.parse` is not safe beside another thread's)."""
    try:
        lines = list(_logical_lines(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, tokenize.TokenError, IndentationError, SyntaxError):
        return None
    found, current = Source(), None
    for depth, words in lines:
        if depth == 0:
            current = words[1] if words[0] == "class" and len(words) > 1 else None
            if current:
                found.classes[current] = (_bases(words), set())
            elif words[0] == "from":
                found.imports.update(_imports(words))
        elif depth == 1 and current and _is_init_field(words):
            found.classes[current][1].add(words[0])
    return found


def _logical_lines(text: str):
    """(indent depth, the line's tokens as strings) for each logical line of Python source."""
    depth, line = 0, []
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type == tokenize.INDENT:
            depth += 1
        elif token.type == tokenize.DEDENT:
            depth -= 1
        elif token.type in (tokenize.NEWLINE, tokenize.ENDMARKER):
            if line:
                yield depth, line
            line = []
        elif token.type not in (tokenize.NL, tokenize.COMMENT):
            line.append(token.string)


def _is_init_field(words: list[str]) -> bool:
    """`name: annotation [= value]` in a class body, not a ClassVar and not `field(init=False)`."""
    if len(words) < 3 or words[1] != ":" or keyword.iskeyword(words[0]) or not words[0].isidentifier():
        return False
    rest = words[2:]
    return "ClassVar" not in rest and not any(rest[i:i + 3] == ["init", "=", "False"] for i in range(len(rest)))


def _bases(words: list[str]) -> list[str]:
    """`class A(b.B, Generic[T], metaclass=M):` -> ['B', 'Generic']."""
    if len(words) < 3 or words[2] != "(":
        return []
    bases, group, level = [], [], 0
    for word in words[3:]:
        level += word in "([{" and len(word) == 1
        level -= word in ")]}" and len(word) == 1
        if level < 0 or (word == "," and level == 0):
            names = [w for w in group if w.isidentifier()]
            if names and "=" not in group:
                bases.append(names[-1])
            group = []
            if level < 0:
                break
        elif level == 0:
            group.append(word)
    return bases


def _imports(words: list[str]) -> dict[str, tuple[int, str, str]]:
    """`from ..x.y import A, B as C` -> {'A': (2, 'x.y', 'A'), 'C': (2, 'x.y', 'B')}."""
    at = words.index("import") if "import" in words else len(words)
    head = words[1:at]
    dots = next((i for i, w in enumerate(head) if set(w) != {"."}), len(head))  # `...` is one token
    level, module = sum(len(w) for w in head[:dots]), "".join(head[dots:])
    names = [w for w in words[at + 1:] if w not in ("(", ")")]
    out, i = {}, 0
    while i < len(names):
        original, alias = names[i], names[i]
        if i + 2 < len(names) and names[i + 1] == "as":
            alias, i = names[i + 2], i + 2
        if original != ",":
            out[alias] = (level, module, original)
        i += 1
    return out


def _class_fields(path: Path, name: str, depth: int) -> set[str] | None:
    source = _source(path)
    if source is None:
        return None
    if name not in source.classes:
        found = _defining_file(path, name)  # `from transformers import X`: X lives in one of its modules
        return _class_fields(found, name, depth) if found and found != path else None
    bases, fields = source.classes[name]
    fields = set(fields)
    for base in bases:
        if base == "object" or depth <= 0:
            continue
        target, original = _imported_from(source, path, base) or (path, base)
        inherited = _class_fields(target, original, depth - 1)
        if inherited is None:
            return None  # a base we cannot read: better no check than a wrong one
        fields |= inherited
    return fields


def _imported_from(source: Source, path: Path, name: str) -> tuple[Path, str] | None:
    """The file a module's `from X import name` points at, and the name there."""
    if name not in source.imports:
        return None
    level, module, original = source.imports[name]
    if level == 0:
        found = module_file(module)
        return (found, original) if found else None
    base = path.parent
    for _ in range(level - 1):
        base = base.parent
    target = base.joinpath(*module.split(".")) if module else base
    for candidate in (target.with_suffix(".py"), target / "__init__.py"):
        if candidate.is_file():
            return candidate, original
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
