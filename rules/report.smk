# Stage 6: metric tables (DuckDB SQL over everything above) and the report's figures.

from mnemo.report.tables import TABLE_NAMES


rule tables:
    input:
        code("tables"),
        table_inputs,
        sql=lambda wc: sorted(str(p) for p in (Path(workflow.basedir) / "src/mnemo/report/sql").glob("*.sql")),
        benchmarks=benchmark_files,
    output:
        summary=report(
            f"{R}/tables/summary.md",
            caption="../report/summary.rst",
            category="6. Tables",
            labels={"table": "summary (Markdown)"},
        ),
        tables=expand(f"{R}/tables/{{name}}.csv", name=TABLE_NAMES),
    params:
        sources=table_sources(),
        primary=primary(),
        primary_mode=config["localize"]["mode"],
        title=config["report"]["title"],
    conda:
        "../envs/mnemo.yaml"
    log:
        f"{R}/logs/tables.log",
    resources:
        mem_mb=4000,
        runtime=20,
    script:
        "../scripts/tables.py"
