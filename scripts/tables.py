from pathlib import Path

from mnemo.report.tables import (
    TABLE_NAMES,
    benchmark_sources,
    connect,
    run_queries,
    summary_markdown,
    write_csv,
)
from mnemo.workflow import job

with job(snakemake) as log:
    results = Path(snakemake.params.results)
    settings = {"primary_descriptor": snakemake.params.primary, "primary_mode": snakemake.params.primary_mode,
                "report_guidance": float(snakemake.params.guidance)}
    benchmarks = benchmark_sources(snakemake.input.benchmarks, results / "benchmarks")
    con = connect(snakemake.params.sources, settings, benchmarks)
    tables = run_queries(con, TABLE_NAMES, log=log.error)
    for name, path in zip(TABLE_NAMES, snakemake.output.tables, strict=True):
        write_csv(tables[name], path)
        log.info("table %s: %d rows", name, tables[name].num_rows)
    figures = [str(Path(p).relative_to(results)) for p in snakemake.input.figures]
    Path(snakemake.output.summary).write_text(
        summary_markdown(tables, snakemake.params.title, snakemake.params.primary, figures=figures))
