"""config.schema.yaml's `default:` is the one source of a setting's default.

The library dataclasses that mirror a config section must default to what the schema fills in,
and config.yaml may depart from a schema default only where the demo means to (listed below).
`TABLE` maps each such dataclass to its section; the tests walk its fields.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((ROOT / "config.schema.yaml").read_text())

# dataclass ("module:Class") -> schema path of the section it mirrors ("*": any name of a map,
# "kind=x": the branch of that kind), and its fields that are not keys of that section, with why.
TABLE: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {
    "mnemo.phantoms:PhantomConfig": (("phantoms",), {}),
    "mnemo.data.dataset:CacheConfig": (("dataset",), {
        "shard_rows": "storage layout of the cache, not a setting",
        "chunk_rows": "storage layout of the cache, not a setting",
    }),
    "mnemo.data.promptset:PromptSetConfig": (("prompts",), {}),
    "mnemo.diffusion.model:ModelConfig": (("model",), {}),
    "mnemo.diffusion.model:UNetConfig": (("model", "unet"), {}),
    "mnemo.diffusion.model:TextEncoderConfig": (("model", "text_encoder"), {}),
    "mnemo.diffusion.model:SchedulerConfig": (("model", "scheduler"), {}),
    "mnemo.diffusion.train:TrainConfig": (("train",), {}),
    "mnemo.diffusion.train:FilterConfig": (("train", "filter"), {}),
    "mnemo.diffusion.vae:VAETrainConfig": (("vaes", "*", "train"), {}),
    "mnemo.diffusion.vae:VAEConfig": (("vaes", "*", "train", "model"), {}),
    "mnemo.copydetect.descriptors:CopyDetectTrainConfig": (("descriptors", "*", "kind=copydetect"), {
        "in_channels": "grey X-ray cache: fixed at 1, not a setting",
        "gem_p": "architecture constant (SSCD's GeM p = 3), not a setting",
        "learn_p": "architecture constant, not a setting",
        "weight_decay": "training constant, not a setting",
        "warmup_steps": "training constant, not a setting",
        "flip_p": "training constant (no flips: laterality), not a setting",
        "progress": "progress bar, not a setting",
    }),
    "mnemo.copydetect.replication:MatchConfig": (("match",), {}),
    "mnemo.detect.config:DetectConfig": (("detect",), {
        "seed": "generate.seed, passed by the detect rule",
    }),
    "mnemo.nemo.localize:LocalizeConfig": (("localize",), {
        "steps": "detect.steps, passed by the localize rule",
        "nemo_steps": "detect.nemo_steps, passed by the localize rule (detection and search share the signal)",
        "nemo_timestep": "detect.nemo_timestep, passed by the localize rule",
    }),
    "mnemo.nemo.sample_check:SampleCheckConfig": (("localize", "sample_check"), {
        "guidance": "the variant's highest mitigation guidance, passed by the localize rule",
        "steps": "generate.steps, passed by the localize rule",
        "first_index": "sample indices past generation's, not a setting",
    }),
    "mnemo.mitigate.wen_embedding:WenEmbeddingConfig": (("mitigations", "*", "kind=wen_embedding"), {}),
    "mnemo.mitigate.retrigger:RetriggerConfig": (("retrigger",), {
        "sampling_steps": "generate.steps, passed by the retrigger rule",
    }),
    "mnemo.evaluate.fidelity:ClassifierTrainConfig": (("fidelity",), {
        "channels": "architecture constant, not a setting",
        "input_size": "architecture constant, not a setting",
        "dropout": "training constant, not a setting",
        "stem_stride": "architecture constant, not a setting",
        "weight_decay": "training constant, not a setting",
        "warmup_steps": "training constant, not a setting",
        "shift": "augmentation constant, not a setting",
        "noise": "augmentation constant, not a setting",
        "log_every": "logging, not a setting",
        "progress": "progress bar, not a setting",
    }),
}

# Known disagreements in code being restructured elsewhere (src/mnemo/phantoms, src/mnemo/nemo):
# (class, field) -> reason. strict: fixing the dataclass makes the case fail until it is removed here.
KNOWN_MISMATCHES: dict[tuple[str, str], str] = {}

# config.yaml keys whose value departs from the schema default on purpose, and why.
DEMO_DEPARTURES = {
    "localize.blocks": "the demo model copies through the up blocks too (docs/findings.md)",
    "localize.signal": "the paper's noise difference cannot see the demo model's copying (docs/findings.md)",
    "localize.signal_step": "the demo's guidance direction is read three steps in (docs/findings.md)",
    "localize.score": "the demo's guidance direction is scored by projection (docs/findings.md)",
    "localize.prompts": "the demo searches its planted prompts, as NeMo searches a given list; its detection flags 30 of 32",
    "mitigations": "the demo compares every mitigation kind",
    "report.title": "the demo's own title",
}

CONFIG_CLASS = re.compile(r"^@dataclass[^\n]*\nclass (\w+Config)\b", re.MULTILINE)


def _ref(node: dict) -> dict:
    while "$ref" in node:
        target = SCHEMA
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _object(node: dict) -> dict:
    """The node itself, or the one object branch of a `oneOf` (e.g. `null` or an object)."""
    node = _ref(node)
    if "properties" not in node and "oneOf" in node:
        objects = [b for b in map(_ref, node["oneOf"]) if "properties" in b]
        if len(objects) == 1:
            return objects[0]
    return node


def section(path: tuple[str, ...]) -> dict:
    node = SCHEMA
    for part in path:
        node = _object(node)
        if part == "*":
            node = node["additionalProperties"]
        elif part.startswith("kind="):
            kind = part.removeprefix("kind=")
            node = next(b for b in node["oneOf"] if b["properties"]["kind"].get("const") == kind)
        else:
            node = node["properties"][part]
    return _object(node)


def _load(target: str) -> type:
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _same(a: Any, b: Any) -> bool:
    a, b = _plain(a), _plain(b)
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


def _cases():
    """(class, field) for every mirrored field that has a schema default."""
    for target, (path, skipped) in TABLE.items():
        name = target.split(":")[1]
        try:
            cls = _load(target)
        except Exception:  # restructured elsewhere: this row fails (the test imports it again), not the file
            yield pytest.param(target, None, id=f"{name}-import")
            continue
        properties = section(path).get("properties", {})
        for field in dataclasses.fields(cls):
            if field.name in skipped or field.name not in properties or "default" not in properties[field.name]:
                continue
            if dataclasses.is_dataclass(_default(field)):
                continue  # a nested section: its own row compares it
            marks = []
            if (name, field.name) in KNOWN_MISMATCHES:
                marks = [pytest.mark.xfail(strict=True, reason=KNOWN_MISMATCHES[name, field.name])]
            yield pytest.param(target, field.name, marks=marks, id=f"{name}.{field.name}")


@pytest.mark.parametrize(("target", "name"), list(_cases()))
def test_dataclass_default_is_the_schema_default(target: str, name: str) -> None:
    cls = _load(target)
    path, _ = TABLE[target]
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    expected = section(path)["properties"][name]["default"]
    actual = _default(field)
    assert _same(actual, expected), (
        f"{cls.__name__}.{name} defaults to {actual!r}, config.schema.yaml's {'.'.join(path)}.{name} "
        f"to {expected!r}: the schema is the one source")


@pytest.mark.parametrize("target", list(TABLE))
def test_fields_are_config_keys_or_skipped_with_a_reason(target: str) -> None:
    cls = _load(target)
    path, skipped = TABLE[target]
    properties = set(section(path).get("properties", {}))
    names = {f.name for f in dataclasses.fields(cls)}
    assert not (unknown := names - properties - set(skipped)), (
        f"{cls.__name__} fields {sorted(unknown)} are not keys of {'.'.join(path)}: list them in TABLE with the reason")
    assert not (stale := set(skipped) - names), f"TABLE skips {sorted(stale)}, which {cls.__name__} does not have"
    assert not (keys := set(skipped) & properties), f"TABLE skips {sorted(keys)}, which are config keys: compare them"
    for field in dataclasses.fields(cls):
        nested = _default(field)
        if dataclasses.is_dataclass(nested):
            assert any(t.endswith(f":{type(nested).__name__}") for t in TABLE), (
                f"{cls.__name__}.{field.name} is a nested section: give {type(nested).__name__} its own row")


def test_table_lists_every_config_dataclass() -> None:
    found = {m.group(1) for p in (ROOT / "src" / "mnemo").rglob("*.py") for m in CONFIG_CLASS.finditer(p.read_text())}
    listed = {t.split(":")[1] for t in TABLE}
    assert found - listed == set(), f"config dataclasses missing from TABLE: {sorted(found - listed)}"


def _departures(value: Any, node: dict, key: str = ""):
    """config.yaml keys whose value differs from the schema default."""
    node = _object(node)
    if not isinstance(value, dict) or "properties" not in node:
        return
    for name, item in value.items():
        prop, dotted = node["properties"][name], f"{key}{name}"
        default = prop.get("default", None)
        if "default" in prop and default != {} and not _same(item, default):
            yield dotted
        elif isinstance(item, dict):
            yield from _departures(item, prop, f"{dotted}.")


def test_config_yaml_departs_from_schema_defaults_only_on_purpose() -> None:
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    found = set(_departures(config, SCHEMA))
    assert found - set(DEMO_DEPARTURES) == set(), (
        f"config.yaml differs from the schema default at {sorted(found - set(DEMO_DEPARTURES))}: make the "
        "schema default the value, or list a deliberate departure in DEMO_DEPARTURES")
    assert set(DEMO_DEPARTURES) - found == set(), f"no longer departures: {sorted(set(DEMO_DEPARTURES) - found)}"
