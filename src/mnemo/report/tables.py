"""Metric tables: DuckDB SQL (in `mnemo/report/sql/*.sql`) over the Parquet/JSON/TSV outputs of the run.

Every figure in a table is computed by a query over the rows written by earlier stages, never
typed in; the queries are plain files a reader can rerun in any DuckDB shell.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import duckdb

# Source = (path, constant columns identifying it, e.g. {"variant": "cfg"})
Source = tuple[str, Mapping[str, Any]]

SECTIONS: tuple[tuple[str, str, str], ...] = (
    ("calibration", "Descriptor calibration",
     "Copies (crop, shift, blur, noise, contrast edits) of held-out images vs images of other patients."),
    ("replication", "Replication of training images",
     "Per descriptor, variant, mitigation, guidance and prompt group. Rates are over samples; "
     "similarity quantiles over prompts (each prompt's highest nearest-neighbour similarity)."),
    ("detection", "Memorization detection",
     "AUC and TPR at 1% FPR against three truths: `planted` (memorized by construction), `replicated` "
     "(a sample's nearest training image is above the calibrated threshold) and `replicated_own` (a "
     "sample reproduces one of the prompt's own training images); Spearman correlation of the score "
     "with the measured similarity."),
    ("localization", "NeMo localization",
     "Neurons per memorized prompt (median and MAD over prompts), success rate, search cost."),
    ("mode_agreement", "Batched vs one-by-one search",
     "Both searches on the same prompts: identical refined neurons, and their UNet calls."),
    ("neurons_per_layer", "Neurons per value layer", "Refined neurons of all localized prompts."),
    ("mitigation", "Mitigations",
     "Primary descriptor, calibrated threshold. Twin similarity: each sample vs the unmitigated sample "
     "drawn from the same seed."),
    ("nemo_paper", "NeMo-style evaluation per prompt group",
     "Per prompt the median over its samples, then median and MAD over prompts: SSCD_Orig (similarity "
     "to the prompt's own training images), SSCD_Gen (to the unmitigated twin), D_SSCD (diversity)."),
    ("fidelity", "Label fidelity and sample quality",
     "Label classifier AUC of generated samples against their prompts' labels; Fréchet distance "
     "to real images in the named feature space."),
    ("wen_cost", "Cost of Wen et al.'s mitigations",
     "Inference-time: optimisation iterations and seconds per prompt. Training-time: step time with the "
     "filter over step time without."),
    ("retrigger", "Re-trigger test (Finding Dori)",
     "With the neurons blocked, a prompt embedding optimised toward the memorized image (and, as "
     "control, toward a non-memorized one): similarity of samples to the target before and after."),
    ("cost", "Compute cost per job", "From Snakemake benchmark files (wall seconds, peak RSS)."),
)
TABLE_NAMES: tuple[str, ...] = tuple(name for name, _, _ in SECTIONS)


def _literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


def _reader(path: str) -> str:
    quoted = _literal(str(path))
    if path.endswith(".parquet"):
        return f"read_parquet({quoted})"
    if path.endswith(".json"):
        return f"read_json_auto({quoted})"
    if path.endswith(".tsv"):
        return f"read_csv({quoted}, delim='\\t', header=true)"
    raise ValueError(f"no reader for {path}")


# Columns of views that may have no source in a run (e.g. no reference images on the SD track),
# so that queries joining them still bind and return NULLs.
EMPTY_VIEWS = {
    "matches_primary": "CAST(NULL AS VARCHAR) AS variant, CAST(NULL AS VARCHAR) AS mitigation, "
                       "CAST(NULL AS VARCHAR) AS sample_id, CAST(NULL AS FLOAT) AS source_similarity",
}


def register(con: duckdb.DuckDBPyConnection, name: str, sources: Sequence[Source], columns: str = "*") -> None:
    """View `name` = UNION ALL of the sources, each tagged with its constant columns."""
    if not sources:
        empty = EMPTY_VIEWS.get(name, "NULL AS _empty")
        con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT {empty} WHERE FALSE")
        return
    parts = []
    for path, labels in sources:
        tags = "".join(f"{_literal(v)} AS {k}, " for k, v in labels.items())
        parts.append(f"SELECT {tags}{columns} FROM {_reader(str(path))}")
    con.execute(f"CREATE OR REPLACE VIEW {name} AS " + " UNION ALL BY NAME ".join(parts))


def query(name: str) -> str:
    return resources.files("mnemo.report").joinpath("sql", f"{name}.sql").read_text()


def run_queries(con: duckdb.DuckDBPyConnection, names: Sequence[str]) -> dict[str, Any]:
    """Run each named query. A table whose inputs this run does not produce (e.g. no variant is
    localized) becomes a one-row note instead of failing the whole stage."""
    import pyarrow as pa

    tables = {}
    for name in names:
        try:
            tables[name] = con.sql(query(name)).to_arrow_table()
        except (duckdb.CatalogException, duckdb.BinderException) as error:
            reason = str(error).splitlines()[0]
            tables[name] = pa.table({"note": [f"not computed in this run: {reason}"]})
    return tables


def write_csv(table, path: str | Path) -> None:
    with Path(path).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(table.column_names)
        for row in table.to_pylist():
            writer.writerow([_cell(v, csv_mode=True) for v in row.values()])


def _cell(value: Any, csv_mode: bool = False) -> str:
    if value is None:
        return "" if csv_mode else "–"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if csv_mode:
            return repr(value)
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"
    if isinstance(value, list):
        return " ".join(_cell(v) for v in value)
    return str(value)


def markdown(table) -> str:
    header = "| " + " | ".join(table.column_names) + " |"
    rule = "|" + "|".join("---" for _ in table.column_names) + "|"
    body = ["| " + " | ".join(_cell(v) for v in row.values()) + " |" for row in table.to_pylist()]
    return "\n".join([header, rule, *body])


def summary_markdown(tables: Mapping[str, Any], title: str, primary: str | None = None,
                     preamble: str = "") -> str:
    """All tables as Markdown; tables with a `descriptor` column show the primary descriptor only
    (the CSV has every descriptor)."""
    import pyarrow.compute as pc

    lines = [f"# {title}", ""]
    if preamble:
        lines += [preamble, ""]
    for name, heading, note in SECTIONS:
        if name not in tables:
            continue
        table = tables[name]
        source = f"Table `{name}.csv`, query `mnemo/report/sql/{name}.sql`."
        if primary and "descriptor" in table.column_names and name != "calibration":
            table = table.filter(pc.equal(table.column("descriptor"), primary)).drop_columns(["descriptor"])
            source += f" Descriptor: `{primary}` (all descriptors in the CSV)."
        lines += [f"## {heading}", "", note, "", source, ""]
        lines += [markdown(table) if table.num_rows else "_no rows_", ""]
    return "\n".join(lines)
