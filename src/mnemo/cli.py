"""The `mnemo` command: check configs, print the config reference, show a finished run's summary.

    mnemo config check [FILE ...]           validate FILEs merged over config.yaml, as the Snakefile does
    mnemo config reference [--output PATH]  the config reference generated from config.schema.yaml
    mnemo summary [RESULTS]                 RESULTS/tables/summary.md of a finished run

Import-light on purpose (no torch, no snakemake): `mnemo --help` answers at once. The workflow
itself runs with `snakemake` (see README.md).
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

SCHEMA_NAME = "config.schema.yaml"
BASE_CONFIG_NAME = "config.yaml"
REFERENCE_PATH = "docs/config.md"


class CliError(Exception):
    """A problem the command reports in one line and exits 1 on."""


# --------------------------------------------------------------------------------------------
# where the workflow is


def workflow_dir(given: str | Path | None = None) -> Path:
    """The folder holding Snakefile, config.yaml and config.schema.yaml.

    The given folder, else the current one when it holds the schema, else the checkout this
    package was installed from (an editable install).
    """
    if given is not None:
        path = Path(given)
        if not (path / SCHEMA_NAME).is_file():
            raise CliError(f"{path}: no {SCHEMA_NAME} here; give the workflow folder (the one with the Snakefile)")
        return path
    here = Path()
    if (here / SCHEMA_NAME).is_file():
        return here
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / SCHEMA_NAME).is_file():
        return checkout
    raise CliError(f"no {SCHEMA_NAME} in {Path.cwd()}; run in the workflow folder or pass --workflow-dir")


def _load_yaml(path: Path) -> Any:
    import yaml

    try:
        text = path.read_text()
    except OSError as error:
        raise CliError(f"{path}: {error.strerror or error}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise CliError(f"{path}: not valid YAML: {error}") from None


# --------------------------------------------------------------------------------------------
# config check


def _update(config: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge as Snakemake's update_config: mappings merge key by key, anything else replaces."""
    for key, value in overrides.items():
        if isinstance(value, Mapping):
            base = config.get(key)
            config[key] = _update(base if isinstance(base, dict) else {}, value)
        else:
            config[key] = copy.deepcopy(value)
    return config


def merged_config(files: Sequence[str | Path], workdir: Path) -> tuple[dict[str, Any], list[str]]:
    """The config the Snakefile sees for `snakemake --configfile FILES...`, and the files it came from.

    The files are merged in order; unless the result is a Stable Diffusion track config
    (dataset.source: prompts, complete on its own) it is merged over the workflow's config.yaml.
    """
    overrides: dict[str, Any] = {}
    for name in files:
        content = _load_yaml(Path(name))
        if content is None:
            continue
        if not isinstance(content, Mapping):
            raise CliError(f"{name}: a config file must be a mapping of keys, not {type(content).__name__}")
        _update(overrides, content)
    sources = [str(name) for name in files]
    dataset = overrides.get("dataset")
    if isinstance(dataset, Mapping) and dataset.get("source") == "prompts":
        return overrides, sources
    base = workdir / BASE_CONFIG_NAME
    return _update(_load_yaml(base) or {}, overrides), [str(base), *sources]


def check_config(files: Sequence[str | Path], workdir: Path) -> tuple[dict[str, Any], list[str]]:
    """Validate as the Snakefile does; raise mnemo.config.ConfigError naming the first bad key.

    Returns the validated config (defaults filled in) and the files it was merged from.
    """
    from mnemo.config import validate

    config, sources = merged_config(files, workdir)
    return validate(config, workdir / SCHEMA_NAME), sources


# --------------------------------------------------------------------------------------------
# config reference


def _resolve(schema: Mapping[str, Any], root: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The schema with a local $ref merged in (its own keys win), and the ref's name."""
    schema = dict(schema)
    ref = schema.pop("$ref", None)
    if ref is None:
        return schema, None
    if not ref.startswith("#/"):
        raise ValueError(f"only local $refs are supported, got {ref}")
    target: Any = root
    for part in ref[2:].split("/"):
        target = target[part]
    resolved, _ = _resolve(target, root)
    resolved.update(schema)
    return resolved, ref


def _flow(value: Any) -> str:
    """A value as YAML flow text, the way config.yaml writes it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        plain = re.fullmatch(r"[A-Za-z0-9_./^$()|:+*?\[\]-]+", value) and not re.fullmatch(
            r"(?i)null|true|false|yes|no|on|off|~|[-+.0-9eE]+", value)
        return value if plain else '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    return str(value)


_TYPE_NAMES = {"string": "string", "integer": "integer", "number": "number", "boolean": "boolean",
               "null": "null", "object": "mapping", "array": "list"}


def _type_of(schema: Mapping[str, Any], root: Mapping[str, Any]) -> str:
    schema, _ = _resolve(schema, root)
    for key in ("oneOf", "anyOf"):
        if key in schema:
            names: list[str] = []
            for branch in schema[key]:
                name = _type_of(branch, root)
                if name not in names:
                    names.append(name)
            return " or ".join(names)
    values = schema["enum"] if "enum" in schema else [schema["const"]] if "const" in schema else None
    if values is not None:
        kinds = []
        for value in values:
            kind = ("null" if value is None else "boolean" if isinstance(value, bool)
                    else "integer" if isinstance(value, int) else "number" if isinstance(value, float)
                    else "string")
            if kind not in kinds:
                kinds.append(kind)
        return " or ".join(kinds)
    kind = schema.get("type")
    if kind is None:
        return "mapping" if "properties" in schema or "additionalProperties" in schema else "any"
    if isinstance(kind, list):
        return " or ".join(_TYPE_NAMES.get(k, k) for k in kind)
    if kind == "array":
        items = schema.get("items")
        return f"list of {_type_of(items, root)}" if items else "list"
    return _TYPE_NAMES.get(kind, kind)


def _range(schema: Mapping[str, Any]) -> str:
    """Numeric bounds as `0 ≤ x ≤ 1`, `x ≥ 1`, `x > 0`."""
    low = (f"{schema['minimum']!r} ≤ " if "minimum" in schema
           else f"{schema['exclusiveMinimum']!r} < " if "exclusiveMinimum" in schema else "")
    high = (f" ≤ {schema['maximum']!r}" if "maximum" in schema
            else f" < {schema['exclusiveMaximum']!r}" if "exclusiveMaximum" in schema else "")
    if low and high:
        return f"{low}x{high}"
    if high:
        return f"x{high}"
    if "minimum" in schema:
        return f"x ≥ {schema['minimum']!r}"
    if "exclusiveMinimum" in schema:
        return f"x > {schema['exclusiveMinimum']!r}"
    return ""


def _allowed(schema: Mapping[str, Any], root: Mapping[str, Any]) -> list[str]:
    """What values the key takes beyond its type: choices, range, pattern, sizes."""
    schema, _ = _resolve(schema, root)
    parts: list[str] = []
    for key in ("oneOf", "anyOf"):
        for branch in schema.get(key, []):
            parts += _allowed(branch, root)
    if "enum" in schema:
        parts.append(" | ".join(f"`{_flow(v)}`" for v in schema["enum"]))
    if "const" in schema:
        parts.append(f"`{_flow(schema['const'])}`")
    numeric = _range(schema)
    if numeric:
        parts.append(numeric)
    if "pattern" in schema:
        parts.append(f"matches `{schema['pattern']}`")
    if schema.get("type") == "array" or "items" in schema:
        low, high = schema.get("minItems"), schema.get("maxItems")
        if low is not None and low == high:
            parts.append(f"exactly {low} items")
        else:
            if low:
                parts.append(f"at least {low} item{'s' if low > 1 else ''}")
            if high is not None:
                parts.append(f"at most {high} items")
        if schema.get("uniqueItems"):
            parts.append("no repeats")
        if "items" in schema:
            parts += [f"items: {p}" for p in _allowed(schema["items"], root)]
    if "minProperties" in schema:
        count = schema["minProperties"]
        parts.append(f"at least {count} entr{'ies' if count > 1 else 'y'}")
    if "propertyNames" in schema and "pattern" in schema["propertyNames"]:
        parts.append(f"names match `{schema['propertyNames']['pattern']}`")
    return parts


def _cell(text: str) -> str:
    """One Markdown table cell: one line, pipes escaped, <tag>-like text outside code spans kept as text."""
    parts = " ".join(str(text).split()).split("`")
    for i in range(0, len(parts), 2):
        parts[i] = re.sub(r"<(?=[A-Za-z/!?])", "&lt;", parts[i])
    return "`".join(parts).replace("|", "\\|")


def _rows(schema: Mapping[str, Any], root: Mapping[str, Any], path: str, rows: list[tuple[str, ...]],
          seen_refs: dict[str, str], note: str = "") -> None:
    """One row per key below `schema` (an object schema), depth first, in schema order."""
    schema, _ = _resolve(schema, root)
    required = set(schema.get("required", []))
    for name, raw in schema.get("properties", {}).items():
        _row(raw, root, f"{path}.{name}" if path else name, rows, seen_refs, note, name in required)
    extra = schema.get("additionalProperties")
    if isinstance(extra, Mapping):
        _row(extra, root, f"{path}.<name>", rows, seen_refs, note, False)
    for branch in schema.get("oneOf", []):
        branch_schema, _ = _resolve(branch, root)
        kind = branch_schema.get("properties", {}).get("kind", {})
        if "const" in kind:
            for name, raw in branch_schema.get("properties", {}).items():
                label = f"kind `{kind['const']}`"
                _row(raw, root, f"{path}.{name}", rows, seen_refs, label,
                     name in set(branch_schema.get("required", [])) and name != "kind")
        elif branch_schema.get("properties") or isinstance(branch_schema.get("additionalProperties"), Mapping):
            _rows(branch_schema, root, path, rows, seen_refs, note)


def _row(raw: Mapping[str, Any], root: Mapping[str, Any], path: str, rows: list[tuple[str, ...]],
         seen_refs: dict[str, str], note: str, required: bool) -> None:
    schema, ref = _resolve(raw, root)
    allowed = _allowed(schema, root)
    if required:
        allowed.insert(0, "required")
    description = raw.get("description", schema.get("description", ""))
    if note:
        description = f"({note}) {description}".strip()
    default = f"`{_flow(schema['default'])}`" if "default" in schema else "—"
    expands = bool(schema.get("properties") or isinstance(schema.get("additionalProperties"), Mapping)
                   or any(_resolve(b, root)[0].get("properties") for b in schema.get("oneOf", [])))
    if expands and ref is not None and ref in seen_refs:
        description = f"{description}; keys as `{seen_refs[ref]}`".lstrip("; ")
        expands = False
    rows.append((f"`{path}`", _cell(_type_of(schema, root)), _cell(default),
                 _cell("; ".join(allowed)) or "—", _cell(description) or "—"))
    if expands:
        if ref is not None:
            seen_refs[ref] = path
        _rows(schema, root, path, rows, seen_refs)


def render_reference(schema: Mapping[str, Any]) -> str:
    """docs/config.md: every key of the schema with its type, default, allowed values and description."""
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated from config.schema.yaml by `mnemo config reference --output docs/config.md`;",
        "     do not edit by hand: tests/test_docs.py fails when this file and the schema disagree. -->",
        "",
        schema.get("description", "").strip(),
        "",
        "A config file sets any of these keys; `snakemake --configfile my.yaml` deep-merges it over",
        "`config.yaml` (a Stable Diffusion track config with `dataset.source: prompts` is used on its",
        "own), and `mnemo config check my.yaml` validates the result the same way. *default* is the value",
        "the schema fills in when the merged config leaves the key out; — means none (`config.yaml` sets",
        "the key, or it is optional). `config.yaml` itself sets many keys to other values for the demo.",
        "`<name>` stands for a name you choose (a variant, descriptor or mitigation); keys marked",
        "(kind `x`) apply to entries of that kind.",
        "",
    ]
    header = ["| key | type | default | allowed | description |", "|---|---|---|---|---|"]
    seen_refs: dict[str, str] = {}
    top_rows: list[tuple[str, ...]] = []
    sections: list[tuple[str, str, list[tuple[str, ...]]]] = []
    for name, raw in schema.get("properties", {}).items():
        rows: list[tuple[str, ...]] = []
        _row(raw, schema, name, rows, seen_refs, "", name in set(schema.get("required", [])))
        if len(rows) == 1:
            top_rows += rows
        else:
            resolved, _ = _resolve(raw, schema)
            sections.append((name, raw.get("description", resolved.get("description", "")), rows))
    if top_rows:
        lines += ["## Top-level keys", "", *header, *("| " + " | ".join(r) + " |" for r in top_rows), ""]
    for name, description, rows in sections:
        lines += [f"## `{name}`", ""]
        if description:
            lines += [" ".join(description.split()), ""]
        lines += [*header, *("| " + " | ".join(r) + " |" for r in rows), ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def reference_text(workdir: Path) -> str:
    return render_reference(_load_yaml(workdir / SCHEMA_NAME))


# --------------------------------------------------------------------------------------------
# command line


def _config_check(args: argparse.Namespace) -> int:
    from mnemo.config import ConfigError, validate

    workdir = workflow_dir(args.workflow_dir)
    config, sources = merged_config(args.files, workdir)
    try:
        validate(config, workdir / SCHEMA_NAME)
    except ConfigError as error:
        print(f"invalid configuration ({' + '.join(sources)}): {error}", file=sys.stderr)
        return 1
    print(f"ok ({' + '.join(sources)})")
    return 0


def _config_reference(args: argparse.Namespace) -> int:
    text = reference_text(workflow_dir(args.workflow_dir))
    if args.output:
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
        print(f"wrote {output}")
    else:
        sys.stdout.write(text)
    return 0


def _summary(args: argparse.Namespace) -> int:
    results = Path(args.results)
    summary = results if results.is_file() else results / "tables" / "summary.md"
    if not summary.is_file():
        raise CliError(f"no {summary}: {results} holds no finished run's tables; run `make run` "
                       "(or `snakemake --cores all`) first, or give the results folder of a finished run")
    sys.stdout.write(summary.read_text())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mnemo",
        description="Find, localize and remove memorization in diffusion models. The workflow runs "
                    "with `snakemake` (or `make run`); this command checks configs and reads results.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    config = commands.add_parser("config", help="check config files; print the config reference",
                                 description="Check config files; print the config reference.")
    config_commands = config.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    check = config_commands.add_parser(
        "check", help="validate config files as the workflow would",
        description="Validate FILEs merged in order over config.yaml, as `snakemake --configfile FILE ...` "
                    "does (a config with dataset.source: prompts is complete on its own). Prints ok, "
                    "or the first bad key and exits 1.")
    check.add_argument("files", nargs="*", metavar="FILE", help="config files (none: config.yaml alone)")
    reference = config_commands.add_parser(
        "reference", help="print the config reference generated from config.schema.yaml",
        description="The config reference (docs/config.md) generated from config.schema.yaml.")
    reference.add_argument("--output", "-o", metavar="PATH", help=f"write it here (e.g. {REFERENCE_PATH})")
    for sub in (check, reference):
        sub.add_argument("--workflow-dir", metavar="DIR",
                         help="folder with config.yaml and config.schema.yaml (default: the current "
                              "folder, else this package's checkout)")

    summary = commands.add_parser("summary", help="print a finished run's summary tables",
                                  description="Print RESULTS/tables/summary.md, every metric table of a run.")
    summary.add_argument("results", nargs="?", default="results", metavar="RESULTS",
                         help="results folder of the run (default: results)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {("config", "check"): _config_check, ("config", "reference"): _config_reference,
                ("summary", None): _summary}
    handler = handlers[(args.command, getattr(args, "config_command", None))]
    try:
        return handler(args)
    except CliError as error:
        print(f"mnemo {args.command}: {error}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `mnemo summary | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
