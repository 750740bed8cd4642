"""A stage's cache key follows its code without being told which modules that is: tasks/stage.py's
ArtifactCachePolicy hashes every project module the stage's module reaches (alignflow/imports.py), so an edit
to any of them reruns the stage, and a comment, a docstring or an unrelated module does not.

Keys are computed the way Prefect tests its own cache policies, by calling `compute_key` directly; the code
is a small tree written into tmp_path (one copy per variant) or a copy of this repository's."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

from alignflow import imports
from storage import ArtifactRef
from tasks.stage import FRAMEWORK, ArtifactCachePolicy, RunContext, code_version

ROOT = Path(__file__).resolve().parents[2]

# A stage module that imports a helper, and starts a child (`python -m tasks.child`) whose function loads
# through another module: the loader is reached only through the child.
TREE = {
    "tasks/__init__.py": '"""Stages."""\n',
    "tasks/train.py": '''"""Stage `train`."""
import subprocess
import sys

from tasks import helper


def train(rows):
    """Train on `rows`."""
    # scale first
    rows = helper.scale(rows)
    return subprocess.run([sys.executable, "-m", "tasks.child", str(rows)])
''',
    "tasks/helper.py": "def scale(rows):\n    return rows * 2\n",
    "tasks/child.py": '''def main():
    from .loader import load

    return load()
''',
    "tasks/loader.py": "def load():\n    return 1\n",
    "tasks/unrelated.py": "def other():\n    return 3\n",
}


def variant(tmp_path: Path, label: str, changes: dict[str, str] | None = None) -> Path:
    """TREE, with `changes` ({"tasks/loader.py": new text}), written under tmp_path / label."""
    root = tmp_path / label
    for name, text in dict(TREE, **(changes or {})).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def key(root: Path, digest: str = "sha256:aa", module: str = "tasks.train") -> str:
    policy = ArtifactCachePolicy(stage="train", modules=(module,), libraries=(), root=root)
    run = RunContext(name="demo", store=str(root / "store"), cache_dir=str(root / "cache"))
    data = ArtifactRef("demo/data", "dataset", 1, digest)
    return policy.compute_key(task_ctx=None, inputs={"run": run, "data": data}, flow_parameters={})


def test_the_same_inputs_give_the_same_key_and_other_digests_another(tmp_path):
    root = variant(tmp_path, "base")
    assert key(root) == key(root) == key(variant(tmp_path, "copy"))
    assert key(root).startswith("train-")
    assert key(root, digest="sha256:bb") != key(root)


def test_the_closure_follows_imports_children_and_relative_imports(tmp_path):
    project = imports.modules(variant(tmp_path, "base"))
    assert imports.closure("tasks.train", project) == {"tasks", "tasks.train", "tasks.helper", "tasks.child",
                                                      "tasks.loader"}
    assert imports.references("tasks.child", project) == {"tasks.loader"}


def test_an_edit_to_a_module_reached_only_through_another_changes_the_key(tmp_path):
    base = key(variant(tmp_path, "base"))
    assert key(variant(tmp_path, "loader", {"tasks/loader.py": "def load():\n    return 2\n"})) != base


def test_an_edit_to_an_imported_helper_changes_the_key_and_an_unrelated_module_does_not(tmp_path):
    base = key(variant(tmp_path, "base"))
    assert key(variant(tmp_path, "helper", {"tasks/helper.py": "def scale(rows):\n    return rows * 3\n"})) != base
    assert key(variant(tmp_path, "unrelated", {"tasks/unrelated.py": "def other():\n    return 4\n"})) == base


def test_comments_docstrings_and_layout_keep_the_key(tmp_path):
    base = key(variant(tmp_path, "base"))
    train = TREE["tasks/train.py"]
    edits = {
        "comment": train.replace("# scale first", "# scale the rows first, then train"),
        "docstrings": train.replace('"""Train on `rows`."""', '"""Train on `rows`, twice over."""')
                           .replace('"""Stage `train`."""', '"""Stage `train`: trains."""'),
        "layout": train.replace("rows = helper.scale(rows)", "rows = helper.scale(\n        rows)"),
    }
    for label, text in edits.items():
        assert text != train
        assert key(variant(tmp_path, label, {"tasks/train.py": text})) == base, label
    changed = train.replace("scale(rows)", "scale(rows + 1)")
    assert key(variant(tmp_path, "code", {"tasks/train.py": changed})) != base


def test_cycles_are_the_strongly_connected_components(tmp_path):
    root = variant(tmp_path, "loop", {"tasks/helper.py": "from tasks import unrelated\n",
                                      "tasks/unrelated.py": "import tasks.child\n",
                                      "tasks/child.py": "from tasks.helper import x\n"})
    assert imports.cycles(imports.import_graph(imports.modules(root))) == [["tasks.child", "tasks.helper",
                                                                             "tasks.unrelated"]]
    assert imports.cycles(imports.import_graph(imports.modules(variant(tmp_path, "base")))) == []
    assert imports.cycles({"a": {"a"}, "b": {"a"}}) == [["a"]]


def copy_of_this_repository(tmp_path: Path) -> Path:
    for package in imports.PACKAGES:
        if (ROOT / package).is_dir():
            shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def add_statement(path: Path, function: str, statement: str) -> None:
    """Append `statement` to the body of the top-level `function` in the module at `path`."""
    lines = path.read_text().splitlines(keepends=True)
    node = next(n for n in ast.parse("".join(lines)).body if isinstance(n, ast.FunctionDef) and n.name == function)
    indent = " " * node.body[-1].col_offset
    lines.insert(node.end_lineno, f"{indent}{statement}\n")
    path.write_text("".join(lines))


def test_grpo_is_keyed_on_the_reward_model_loader(tmp_path):
    """GRPO's training child loads the reward model through tasks.reward_model: an edit there reruns GRPO."""
    assert "tasks.reward_model" in imports.closure("tasks.grpo")
    before, after = copy_of_this_repository(tmp_path / "before"), copy_of_this_repository(tmp_path / "after")
    add_statement(after / "tasks" / "reward_model.py", "load_reward_model", "folder = str(folder)")
    assert code_version(("tasks.grpo",), after) != code_version(("tasks.grpo",), before)
    assert code_version(("tasks.sft",), after) == code_version(("tasks.sft",), before)  # SFT never loads it


def test_the_framework_left_out_of_every_key_is_what_tasks_stage_reaches():
    """Editing the stage machinery or the store reruns no stage; a module tasks.stage starts to import must be
    added to FRAMEWORK (when it cannot shape a result) or the import reconsidered."""
    assert imports.closure("tasks.stage") - FRAMEWORK == {"tasks"}
    assert FRAMEWORK <= imports.closure("tasks.stage")
