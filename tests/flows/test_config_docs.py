"""docs/CONFIG.md documents every spec field with the default, range and meaning the code has."""

from pathlib import Path

from flows import config_docs

DOC = Path(__file__).resolve().parents[2] / "docs" / "CONFIG.md"


def test_config_md_matches_the_spec_models():
    text = DOC.read_text()
    start, end = text.index(config_docs.BEGIN), text.index(config_docs.END) + len(config_docs.END)
    assert text[start:end] == config_docs.render(), \
        "docs/CONFIG.md is stale: run `.venv/bin/python -m flows.config_docs --write docs/CONFIG.md`"


def test_every_field_has_a_description():
    for heading, model in config_docs.sections():
        for name, field in model.model_fields.items():
            assert field.description, f"{heading}.{name} has no description (Field(description=...))"
