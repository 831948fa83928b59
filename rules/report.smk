# Stage 6: metric tables (DuckDB SQL over everything above) and the report's figures.

from mnemo.report.tables import TABLE_NAMES


rule contact_sheet:
    input:
        code("contact_sheet"),
        unpack(contact_sheet_inputs),
        samples=f"{R}/samples/{{variant}}/{{mitigation}}.parquet",
        prompts=f"{R}/prompts/prompts.parquet",
    output:
        report(
            f"{R}/samples/{{variant}}/{{mitigation}}_sheet.png",
            caption="../report/samples.rst",
            category="3. Generation",
            labels={"variant": "{variant}", "mitigation": "{mitigation}", "figure": "contact sheet"},
        ),
    params:
        sheet={
            "guidance": config["report"]["guidance"],
            "prompts": config["report"]["sheet_prompts"],
            "seeds": config["report"]["sheet_seeds"],
        },
    conda:
        "../envs/mnemo.yaml"
    log:
        f"{R}/logs/contact_sheet/{{variant}}/{{mitigation}}.log",
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../scripts/contact_sheet.py"


rule tables:
    input:
        code("tables"),
        table_inputs,
        sql=lambda wc: sorted(str(p) for p in (Path(workflow.basedir) / "src/mnemo/report/sql").glob("*.sql")),
        benchmarks=benchmark_files,
        figures=report_figures,
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
        guidance=config["report"]["guidance"],
        results=lambda wc, output: str(Path(output.summary).parent.parent),  # results/tables/summary.md
    conda:
        "../envs/mnemo.yaml"
    log:
        f"{R}/logs/tables.log",
    resources:
        mem_mb=4000,
        runtime=20,
    script:
        "../scripts/tables.py"
