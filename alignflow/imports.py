"""Which of the project's own modules a module reaches, read from source with `ast`: nothing is imported.

A module reaches another when its file imports it (`import`, `from ... import`, relative or not, at the
top or inside a function) or holds a string constant equal to its dotted name (a child process started
as `python -m tasks.trainer`; a bare top-level name such as "storage" does not count). Running a module
runs its packages' `__init__.py` first, so `closure` adds those. A module loaded by a name built at run
time (`import_module(f"tasks.{name}")`) is not seen.

`modules(root, packages)` lists a project's modules (top-level packages that are missing are skipped); the
other functions take that listing, or list this repository's, so a test can point them at a tree of its own.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("alignflow", "deployments", "distributed", "flows", "serving", "storage", "tasks")  # the top-level packages
Project = dict[str, Path]  # modules(): the functions below take one, or list this repository's


@dataclass(frozen=True)
class Facts:
    """What one file says about other modules, and a digest of its code."""

    imports: tuple[tuple[int, str, tuple[str, ...]], ...]  # (level, module, names); `import a.b`: (0, "a.b", ())
    strings: frozenset[str]  # every string constant in the file
    digest: str  # sha256 of its code without comments, docstrings or layout


@functools.lru_cache(maxsize=1024)
def facts(source: bytes) -> Facts:
    """Parse once per distinct source (a file edited in place is new source, whatever its mtime).

    The digest is of the code as `ast.unparse` prints it, docstrings dropped: one walk over the tree does
    both. Printed source rather than `ast.dump`, whose node fields change with each Python version."""
    tree = ast.parse(source)
    imports, strings = [], set()
    for node in ast.walk(tree):  # a node's children are queued before it is seen: dropping them is safe
        if isinstance(node, ast.Import):
            imports += [(0, alias.name, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            imports.append((node.level, node.module or "", tuple(alias.name for alias in node.names)))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            strings.add(node.value)
        elif isinstance(node, DEFINITIONS) and has_docstring(node):
            node.body = node.body[1:]
    code = ast.unparse(tree)
    return Facts(tuple(imports), frozenset(strings), hashlib.sha256(code.encode()).hexdigest())


DEFINITIONS = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def has_docstring(node: ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """Whether the body starts with a string on its own."""
    first = node.body[0] if node.body else None
    return isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str)


def modules(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """Every project module by dotted name; a package's name maps to its `__init__.py`."""
    found = {}
    for package in packages:
        for path in sorted((Path(root) / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def digest(module: str, project: Project | None = None) -> str:
    """sha256 of the module's code, comments and docstrings left out."""
    project = modules() if project is None else project
    return facts(project[module].read_bytes()).digest


def _longest_known(name: str, project: Project) -> str | None:
    """The longest dotted prefix of `name` that is a project module (`tasks.stage.stage` -> `tasks.stage`)."""
    while name and name not in project:
        name = name.rpartition(".")[0]
    return name or None


def _imported(module: str, level: int, name: str, names: tuple[str, ...], project: Project) -> set[str]:
    """The project modules one import statement in `module` names."""
    if level:  # relative: from the module's package, `level - 1` packages up
        package = module.split(".") if project[module].name == "__init__.py" else module.split(".")[:-1]
        name = ".".join(package[:len(package) - level + 1] + ([name] if name else []))
    targets = [f"{name}.{n}" if f"{name}.{n}" in project else name for n in names] or [name]
    return {found for target in targets if (found := _longest_known(target, project))}


def imports(module: str, project: Project | None = None) -> set[str]:
    """The project modules `module`'s import statements name (itself left out)."""
    project = modules() if project is None else project
    statements = facts(project[module].read_bytes()).imports
    return set().union(*(_imported(module, *statement, project) for statement in statements)) - {module}


def references(module: str, project: Project | None = None) -> set[str]:
    """What `module` imports, plus the project modules its string constants name (itself left out).

    Only dotted names count ("tasks.trainer"): a bare package name ("storage") is too often a plain word."""
    project = modules() if project is None else project
    named = {name for name in facts(project[module].read_bytes()).strings & project.keys() if "." in name}
    return (imports(module, project) | named) - {module}


def closure(module: str, project: Project | None = None) -> set[str]:
    """`module` and every project module it reaches, directly or not, with the packages that hold them."""
    project = modules() if project is None else project
    if module not in project:
        raise ValueError(f"{module} is not one of the project's modules")
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            parents = {name.rsplit(".", depth)[0] for depth in range(1, name.count(".") + 1)}
            todo += (references(name, project) | parents) & project.keys()
    return seen


def import_graph(project: Project | None = None) -> dict[str, set[str]]:
    """Every project module and the project modules its import statements name."""
    project = modules() if project is None else project
    return {name: imports(name, project) for name in project}


def cycles(graph: dict[str, set[str]] | None = None) -> list[list[str]]:
    """The import cycles: each strongly connected component of more than one module, sorted (Tarjan).

    `import_graph` leaves out a module's import of itself; a self-loop in a graph given here counts."""
    graph = import_graph() if graph is None else graph
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)
