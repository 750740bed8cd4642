"""docs/DATA.md's format table lists every registered format with the fields and description the code has."""

from pathlib import Path

from flows import config_docs, data_docs
from tasks.formats import FORMATS

DOC = Path(__file__).resolve().parents[2] / "docs" / "DATA.md"


def test_data_md_matches_the_format_registry():
    assert config_docs.generated_part(DOC.read_text(), data_docs.BEGIN) == data_docs.render(), \
        "docs/DATA.md is stale: run `.venv/bin/python -m flows.data_docs --write docs/DATA.md`"


def test_every_format_has_a_row_and_a_description():
    table = data_docs.render()
    for fmt in FORMATS:
        assert fmt.description.strip(), f"format {fmt.name} has no description (tasks/formats.py)"
        assert f"| {fmt.kind} | `{fmt.name}` |" in table


def test_writing_replaces_only_the_table(tmp_path):
    doc = tmp_path / "DATA.md"
    doc.write_text(f"# by hand\n\n{data_docs.BEGIN}\nold table\n{config_docs.END}\n\nmore prose\n")
    data_docs.main(["--write", str(doc)], data_docs.BEGIN, data_docs.render)
    assert doc.read_text() == f"# by hand\n\n{data_docs.render()}\n\nmore prose\n"
