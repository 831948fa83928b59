"""The config reference (docs/config.md) is generated from config.schema.yaml and kept current."""

from __future__ import annotations

from pathlib import Path

import yaml

from mnemo.cli import render_reference

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((ROOT / "config.schema.yaml").read_text())


def _properties(schema, path=""):
    """Every (path, subschema) under `properties` and named entries, including kind branches."""
    for name, sub in schema.get("properties", {}).items():
        yield f"{path}.{name}".lstrip("."), sub
        yield from _properties(sub, f"{path}.{name}")
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        yield f"{path}.<name>".lstrip("."), extra
        yield from _properties(extra, f"{path}.<name>")
    for branch in schema.get("oneOf", []):
        yield from _properties(branch, path)


def test_committed_reference_equals_the_generated_one():
    committed = (ROOT / "docs" / "config.md").read_text()
    assert committed == render_reference(SCHEMA), (
        "docs/config.md is stale: regenerate it with `mnemo config reference --output docs/config.md`")


def test_every_schema_key_has_a_description():
    undocumented = [path for path, sub in _properties(SCHEMA) if not sub.get("description")]
    undocumented += [f"$defs.train.{path}" for path, sub in _properties(SCHEMA["$defs"]["train"])
                     if not sub.get("description")]
    assert not undocumented, f"schema keys without a description: {undocumented}"


def test_reference_lists_every_key_with_its_default():
    text = render_reference(SCHEMA)
    for path in ("train.steps", "variants.<name>.guidance", "localize.sample_check.quantile",
                 "mitigations.<name>.min_share", "descriptors.<name>.weights", "train.filter.percentile"):
        assert f"| `{path}` |" in text, path
    row = next(line for line in text.splitlines() if line.startswith("| `localize.blocks` |"))
    assert "`[down, mid]`" in row and "`up`" in row
