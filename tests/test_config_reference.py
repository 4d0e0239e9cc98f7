"""docs/configs.md's reference is what scaleq.config_reference generates from the config
dataclasses: a key added, removed or given another default makes this test fail until the page is
regenerated (``python -m scaleq.config_reference --write``)."""

from __future__ import annotations

import dataclasses

from scaleq import config_reference
from scaleq.config_reference import DOC, SECTIONS, model_rows, reference, section_rows, with_reference
from scaleq.models.registry import MODELS


def test_the_page_holds_the_generated_reference():
    page = DOC.read_text()
    assert with_reference(page) == page, "docs/configs.md is stale: run python -m scaleq.config_reference --write"


def test_every_key_has_a_type_a_default_and_a_meaning():
    rows = [row for prefix, cls in SECTIONS.items() for row in section_rows(prefix, cls)]
    rows += [row for name, cls in MODELS.items() for row in model_rows(name, cls)]
    assert [key for key, kind, default, meaning in rows if not (kind and default and meaning)] == []
    # every field of every section is a row, or a section of its own, or the model's own keys
    keys = {row[0] for row in rows}
    for prefix, cls in SECTIONS.items():
        for field in dataclasses.fields(cls):
            key = f"{prefix}.{field.name}".lstrip(".")
            assert key in keys or key in SECTIONS or key == "model.options", key
    assert {"model.kernel", "model.edge_chunk"} <= keys


def test_a_changed_default_makes_the_page_stale(monkeypatch):
    before = reference()
    monkeypatch.setattr(config_reference, "default_of", lambda field: "`changed`")
    assert reference() != before
