"""The house's rules, read from the imports (alignflow/imports.py; nothing is imported): no import loops,
serving/ standing on alignflow's base modules and storage/ only, and no stage module importing another's."""

from __future__ import annotations

import re

from alignflow.imports import cycles, import_graph, modules

GRAPH = import_graph()
STAGES = {name for name, path in modules().items()
          if name.startswith("tasks.") and re.search(r"^@stage\(", path.read_text(), re.M)}


def test_there_are_no_import_loops():
    assert cycles(GRAPH) == []


def test_serving_stands_on_alignflow_s_base_and_storage_only():
    outside = {(name, other) for name, targets in GRAPH.items() if name.split(".")[0] == "serving"
               for other in targets if other.split(".")[0] not in ("serving", "alignflow", "storage")
               or other.startswith(("alignflow.cli", "alignflow.service"))}
    assert outside == set()


def test_no_stage_module_imports_another_stage_module():
    """A helper two stages share lives in a module of its own; serving lives in serving/, not in deploy."""
    found = {(name, other) for name in STAGES for other in GRAPH[name] if other in STAGES and other != name}
    assert found == set()


def test_the_stages_are_found_and_the_scan_sees_imports_inside_functions():
    assert {"tasks.deploy", "tasks.evaluate", "tasks.sft", "tasks.sample", "tasks.reward"} <= STAGES
    assert "serving.rollout" in GRAPH["tasks.evaluate"]  # imported inside model_access only
