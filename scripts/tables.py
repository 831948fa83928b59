from pathlib import Path

import duckdb

from mnemo.report.tables import TABLE_NAMES, register, run_queries, summary_markdown, write_csv
from mnemo.workflow import job

with job(snakemake) as log:
    sources = snakemake.params.sources
    con = duckdb.connect()
    con.execute("CREATE TABLE settings AS SELECT ? AS primary_descriptor, ? AS primary_mode",
                [snakemake.params.primary, snakemake.params.primary_mode])
    for name, entries in sources.items():
        columns = "* EXCLUDE (image)" if name == "samples_primary" else "*"
        register(con, name, [(p, labels) for p, labels in entries], columns)
    root = Path(snakemake.config["results"]) / "benchmarks"
    benchmarks = [(p, {"job": str(Path(p).relative_to(root).with_suffix(""))}) for p in snakemake.input.benchmarks]
    register(con, "benchmarks", benchmarks)
    tables = run_queries(con, TABLE_NAMES)
    for name, path in zip(TABLE_NAMES, snakemake.output.tables, strict=True):
        write_csv(tables[name], path)
        log.info("table %s: %d rows", name, tables[name].num_rows)
    Path(snakemake.output.summary).write_text(summary_markdown(tables, snakemake.params.title, snakemake.params.primary))
