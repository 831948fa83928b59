"""Metric tables: DuckDB SQL (in `mnemo/report/sql/*.sql`) over the Parquet/JSON/TSV outputs of the run.

Every figure in a table is computed by a query over the rows written by earlier stages, never
typed in; the queries are plain files a reader can rerun in any DuckDB shell.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import duckdb

# Source = (path, constant columns identifying it, e.g. {"variant": "cfg"})
Source = tuple[str, Mapping[str, Any]]

SECTIONS: tuple[tuple[str, str, str], ...] = (
    ("headline", "The answer",
     "Per variant: the prompts that memorize (their samples reproduce their own training images above "
     "the calibrated threshold), the detector that finds them best (AUC, and the papers' detectors), and "
     "per mitigation what it removes (memorizing prompts' samples still copying, unmitigated → mitigated) "
     "and what it costs (label AUC, similarity of the other prompts' samples to their unmitigated twins). "
     "n/a: not measurable in this run."),
    ("regime", "Memorization regime",
     "Per variant, what NeMo and Wen et al. presuppose: the planted prompts memorized by a minority of "
     "neurons, other prompts' samples varying with the seed and not copying (beyond what held-out "
     "patients' images give), and the detectors telling the two apart. Primary descriptor, unmitigated "
     "set nearest the report's guidance; columns are explained in `regime.sql`."),
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
    ("mode_agreement", "Search modes compared",
     "The run's search mode and one-by-one search (lockstep, if that is the run's) on the same prompts: "
     "identical initial and refined neurons; UNet calls and seconds (a lockstep prompt's are its share of "
     "the calls it rode on)."),
    ("neurons_per_layer", "Neurons per value layer", "Refined neurons of all localized prompts."),
    ("mitigation", "Mitigations",
     "Per descriptor, each at its own calibrated threshold: a mitigation chosen with one descriptor (the "
     "sample check uses the primary) is judged by the others too. Twin similarity: each sample vs the "
     "unmitigated sample drawn from the same seed, in that descriptor's space."),
    ("nemo_paper", "NeMo-style evaluation per prompt group",
     "Per prompt the median over its samples, then median and MAD over prompts: SSCD_Orig (similarity "
     "to the prompt's own training images; also the per-prompt max), SSCD_Gen (to the unmitigated twin), "
     "D_SSCD (diversity), A_CLIP (CLIP image-text alignment, with `clip.model`; empty without)."),
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
# The headline's per-variant columns, shown on a variant's first row only in the Markdown.
HEADLINE_ONCE = ("variant", "memorizing_prompts", "detected_against", "best_detector", "paper_detectors")


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
def _columns(spec: str) -> str:
    """'name TYPE, ...' -> 'CAST(NULL AS TYPE) AS name, ...'"""
    pairs = [part.split() for part in spec.split(",")]
    return ", ".join(f"CAST(NULL AS {kind}) AS {name}" for name, kind in pairs)


EMPTY_VIEWS = {
    "matches": _columns("variant VARCHAR, mitigation VARCHAR, sample_id VARCHAR, prompt_id VARCHAR, "
                        "guidance FLOAT, nn_image_id VARCHAR, nn_similarity FLOAT, source_similarity FLOAT, "
                        "heldout_similarity FLOAT, beyond_heldout BOOLEAN, descriptor VARCHAR"),
    "embeddings": _columns("descriptor VARCHAR, variant VARCHAR, mitigation VARCHAR, id VARCHAR, "
                           "embedding FLOAT[]"),
    "match_prompts": _columns('descriptor VARCHAR, variant VARCHAR, mitigation VARCHAR, prompt_id VARCHAR, '
                              '"group" VARCHAR, guidance FLOAT, samples BIGINT, max_similarity FLOAT, '
                              'median_similarity FLOAT, max_source_similarity FLOAT, median_source_similarity FLOAT, '
                              'replication_rate_0_5 DOUBLE, replication_rate_0_7 DOUBLE, '
                              'replication_rate_calibrated DOUBLE, threshold_calibrated DOUBLE, '
                              'replication_rate_beyond_heldout DOUBLE, heldout_margin FLOAT, '
                              'median_heldout_similarity FLOAT, same_patient_rate DOUBLE, diversity FLOAT, recipe VARCHAR'),
    "detection_metrics": _columns('variant VARCHAR, detector VARCHAR, "n" BIGINT, steps VARCHAR, truth VARCHAR, '
                                  'positives BIGINT, negatives BIGINT, auc DOUBLE, tpr_at_1pct_fpr DOUBLE, '
                                  'spearman_vs_similarity DOUBLE'),
    "fidelity": _columns("variant VARCHAR, mitigation VARCHAR, guidance DOUBLE, samples BIGINT, "
                         "label_auc_not_planted DOUBLE, label_auc_findings_not_planted DOUBLE, "
                         "prompt_accuracy_not_planted DOUBLE, label_auc_all DOUBLE, frechet_distance DOUBLE, "
                         "frechet_real BIGINT, frechet_fake BIGINT, frechet_feature_space VARCHAR"),
    "classifier": _columns("mean_auc DOUBLE"),
    "calibration": _columns("descriptor VARCHAR, recipe VARCHAR, n_images BIGINT, n_patients BIGINT, auc DOUBLE, "
                            "threshold DOUBLE, tpr_at_threshold DOUBLE, positive_median DOUBLE, negative_p99 DOUBLE, "
                            "n_same_patient BIGINT, same_patient_median DOUBLE, same_patient_frac_above DOUBLE"),
    "neurons": _columns("variant VARCHAR, prompt_id VARCHAR, mode VARCHAR, memorized BOOLEAN, success BOOLEAN, "
                        "relaxed BOOLEAN, initial_count INTEGER, refined_count INTEGER, checked_count INTEGER, "
                        "initial_neurons INTEGER[], refined_neurons INTEGER[], refined_layers VARCHAR[], sample_checks INTEGER, "
                        "sample_seconds DOUBLE, unet_calls DOUBLE, seconds DOUBLE"),
    "scores": _columns("variant VARCHAR, prompt_id VARCHAR, nemo_flagged BOOLEAN"),
    "reference_stats": _columns("variant VARCHAR, layer VARCHAR, channel INTEGER, neuron INTEGER"),
    "train_summary": _columns("variant VARCHAR, mean_step_seconds DOUBLE, filter_threshold DOUBLE, "
                              "filtered_fraction_mean DOUBLE, filtered_share_duplicated DOUBLE, "
                              "filtered_share_unique DOUBLE"),
    "retrigger": _columns("variant VARCHAR, arm VARCHAR, prompt_id VARCHAR, similarity_before DOUBLE, "
                          "similarity_after DOUBLE, replicated_after BOOLEAN, threshold DOUBLE, "
                          "optimisation_steps BIGINT, final_loss DOUBLE, seconds DOUBLE"),
    "clip": _columns("variant VARCHAR, mitigation VARCHAR, sample_id VARCHAR, prompt_id VARCHAR, guidance DOUBLE, "
                     "a_clip DOUBLE"),
    "mitigation_info": _columns("variant VARCHAR, mitigation VARCHAR, prompt_id VARCHAR, iterations BIGINT, "
                                "initial_loss DOUBLE, final_loss DOUBLE, target_loss DOUBLE, seconds DOUBLE"),
    "benchmarks": _columns("job VARCHAR, s DOUBLE, max_rss DOUBLE, cpu_time DOUBLE"),
}

# Why a table has no rows in a run (the Markdown says "n/a: why" instead of an empty table): what it
# needs that the run does not have.
NOT_AVAILABLE = {
    "headline": "no sample set in this run",
    "regime": "no unmitigated sample set matched against training images (the Stable Diffusion track "
              "without `prompts.originals`)",
    "calibration": "no descriptor was calibrated: there are no reference images to calibrate on "
                   "(the Stable Diffusion track without `prompts.originals`)",
    "replication": "no training images to match the samples against (the Stable Diffusion track without "
                   "`prompts.originals`)",
    "detection": "no detection scores in this run",
    "localization": "no prompt was localized: no variant has a neuron mitigation (nemo, random, ...), or "
                    "`localize.prompts` chose none",
    "mode_agreement": "the two search modes were not compared (`localize.compare_modes` is off, or nothing "
                      "was localized)",
    "neurons_per_layer": "no neuron was localized in this run",
    "mitigation": "no training images to measure replication against (the Stable Diffusion track without "
                  "`prompts.originals`)",
    "nemo_paper": "no embedded samples in this run",
    "fidelity": "the label classifier and Fréchet distance need labelled training images (the X-ray track); "
                "the Stable Diffusion track has none",
    "wen_cost": "no Wen et al. mitigation in this run (no `wen_embedding` mitigation, no filtered training)",
    "retrigger": "no re-trigger test: it needs localized neurons and the memorized prompts' training images",
    "cost": "no benchmark files in this run",
}

# Views over every descriptor that also get a `<name>_primary` view of the primary descriptor's rows.
PRIMARY_VIEWS = ("matches", "embeddings")
# Tables whose Markdown shows every descriptor (the others show the primary one).
ALL_DESCRIPTOR_TABLES = ("calibration", "mitigation")

# Columns left out of a view's sources (the samples' PNG bytes: the tables never read images).
VIEW_COLUMNS = {"samples_primary": "* EXCLUDE (image)"}


def register(con: duckdb.DuckDBPyConnection, name: str, sources: Sequence[Source], columns: str = "*") -> None:
    """View `name` = UNION ALL of the sources, each tagged with its constant columns."""
    if not sources:
        empty = EMPTY_VIEWS.get(name, "NULL AS _empty")
        con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT {empty} WHERE FALSE")
        return
    # a view with known columns has them all, NULL in files written before a column existed
    parts = [f"SELECT {EMPTY_VIEWS[name]} WHERE FALSE"] if name in EMPTY_VIEWS else []
    for path, labels in sources:
        tags = "".join(f"{_literal(v)} AS {k}, " for k, v in labels.items())
        parts.append(f"SELECT {tags}{columns} FROM {_reader(str(path))}")
    con.execute(f"CREATE OR REPLACE VIEW {name} AS " + " UNION ALL BY NAME ".join(parts))


def connect(sources: Mapping[str, Sequence[Source]], settings: Mapping[str, Any],
            benchmarks: Sequence[Source] = ()) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with a view per source group (`table_sources` in rules/common.smk), the
    benchmark files as `benchmarks` and the run's `settings` (primary_descriptor, primary_mode,
    report_guidance) as a one-row table the queries read."""
    con = duckdb.connect()
    names = list(settings)
    selects = ", ".join(f"${i + 1} AS {name}" for i, name in enumerate(names))
    con.execute(f"CREATE TABLE settings AS SELECT {selects}", [settings[name] for name in names])
    for name, entries in sources.items():
        register(con, name, [(path, labels) for path, labels in entries], VIEW_COLUMNS.get(name, "*"))
    for name in EMPTY_VIEWS.keys() - sources.keys() - {"benchmarks"}:  # a view this run has no source for
        register(con, name, [])
    for name in PRIMARY_VIEWS:  # most tables judge by the primary descriptor alone
        con.execute(f"CREATE OR REPLACE VIEW {name}_primary AS SELECT * FROM {name} "
                    "WHERE descriptor = (SELECT primary_descriptor FROM settings)")
    register(con, "benchmarks", list(benchmarks))
    return con


def benchmark_sources(paths: Sequence[str], root: str | Path) -> list[Source]:
    """Snakemake benchmark TSVs under `root`, each tagged with its job name (its path below root)."""
    return [(str(p), {"job": str(Path(p).relative_to(root).with_suffix(""))}) for p in paths]


def query(name: str) -> str:
    return resources.files("mnemo.report").joinpath("sql", f"{name}.sql").read_text()


def run_queries(con: duckdb.DuckDBPyConnection, names: Sequence[str],
                log: Callable[[str], object] | None = None) -> dict[str, Any]:
    """Run each named query. A table whose inputs this run does not produce (e.g. no variant is
    localized) has no rows: every view binds, empty ones with their columns (EMPTY_VIEWS). A query
    that fails all the same (a bug) becomes a one-row "n/a" note, its error sent to `log`, so that
    one table never takes the others down and no error message reaches the summary."""
    import pyarrow as pa

    tables = {}
    for name in names:
        try:
            tables[name] = con.sql(query(name)).to_arrow_table()
        except duckdb.Error as error:
            (log or print)(f"table {name}: query failed: {error}")
            tables[name] = pa.table({"note": ["n/a: the query failed in this run (its error is in the tables "
                                              "job's log)"]})
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


def markdown(table, once: Sequence[str] = ()) -> str:
    """A Markdown table; columns in `once` are written on the first of consecutive rows with the
    same value of the first of them only (e.g. a variant's facts on its first mitigation's row)."""
    header = "| " + " | ".join(table.column_names) + " |"
    rule = "|" + "|".join("---" for _ in table.column_names) + "|"
    body, previous = [], object()
    for row in table.to_pylist():
        key = row[once[0]] if once else None
        cells = [("" if once and key == previous and name in once else _cell(value)) for name, value in row.items()]
        previous = key
        body.append("| " + " | ".join(cells) + " |")
    return "\n".join([header, rule, *body])


def summary_markdown(tables: Mapping[str, Any], title: str, primary: str | None = None,
                     preamble: str = "", figures: Sequence[str] = ()) -> str:
    """All tables as Markdown, the headline first; tables with a `descriptor` column show the primary
    descriptor only (the CSV has every descriptor), except those in ALL_DESCRIPTOR_TABLES. `figures`: paths listed at the end (the figures
    of the HTML report)."""
    import pyarrow.compute as pc

    lines = [f"# {title}", ""]
    if preamble:
        lines += [preamble, ""]
    for name, heading, note in SECTIONS:
        if name not in tables:
            continue
        table = tables[name]
        source = f"Table `{name}.csv`, query `mnemo/report/sql/{name}.sql`."
        if primary and "descriptor" in table.column_names and name not in ALL_DESCRIPTOR_TABLES:
            table = table.filter(pc.equal(table.column("descriptor"), primary)).drop_columns(["descriptor"])
            source += f" Descriptor: `{primary}` (all descriptors in the CSV)."
        if name == "headline":  # the answer first, its explanation under it
            once = [c for c in HEADLINE_ONCE if c in table.column_names]
            lines += [f"## {heading}", "",
                      markdown(table, once) if table.num_rows else f"n/a: {NOT_AVAILABLE[name]}", "",
                      note, "", source, ""]
            continue
        lines += [f"## {heading}", "", note, "", source, ""]
        lines += [markdown(table) if table.num_rows else f"n/a: {NOT_AVAILABLE.get(name, 'no rows in this run')}", ""]
    if figures:
        lines += ["## Figures", "", "In the HTML report (`snakemake --report report.html`) and as files:", ""]
        lines += [f"- `{path}`" for path in figures] + [""]
    return "\n".join(lines)
