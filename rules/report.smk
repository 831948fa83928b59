# Stage 6: metric tables (DuckDB SQL over everything above) and the report's figures.

from mnemo.tables import TABLE_NAMES


def table_sources(wildcards=None):
    """Every file the tables read, grouped by the view it feeds, with identifying columns."""
    d0 = primary()
    sources = {
        "prompts": [(f"{R}/prompts/prompts.parquet", {})],
        "calibration": [(f"{R}/descriptors/{d}/calibration.json", {}) for d in descriptors()],
        "match_prompts": [
            (f"{R}/matches/{d}/{v}/{m}_prompts.parquet", {"variant": v, "mitigation": m})
            for d in descriptors()
            for v, m in sample_sets()
        ],
        "samples_primary": [
            (f"{R}/samples/{v}/{m}.parquet", {}) for v, m in sample_sets()
        ],
        "embeddings_primary": [
            (f"{R}/embeddings/{d0}/{v}/{m}.parquet", {"variant": v, "mitigation": m})
            for v, m in sample_sets()
        ],
        "detection_metrics": [
            (f"{R}/validation/{v}/detection_metrics.parquet", {}) for v in variants()
        ],
        "neurons": [
            (f"{R}/localize/{v}/neurons.parquet", {"variant": v}) for v in localized_variants()
        ],
        "mitigation_info": [
            (f"{R}/samples/{v}/{m}_info.parquet", {}) for v, m in sample_sets()
        ],
        "fidelity": [
            (f"{R}/fidelity/{v}/{m}.json", {"variant": v, "mitigation": m}) for v, m in sample_sets()
        ],
        "classifier": [(f"{R}/fidelity/classifier/evaluation.json", {})],
        "train_summary": [
            (f"{R}/models/{v}/train_summary.json", {"variant": v}) for v in variants()
        ],
        "retrigger": [(f"{R}/retrigger/{v}.parquet", {"variant": v}) for v in localized_variants()],
    }
    return sources


def table_inputs(wildcards):
    files = [path for group in table_sources().values() for path, _ in group]
    return files


rule tables:
    input:
        code("tables", "plots"),
        table_inputs,
        sql=lambda wc: sorted(str(p) for p in (Path(workflow.basedir) / "src/mnemo/sql").glob("*.sql")),
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
    log:
        f"{R}/logs/tables.log",
    resources:
        mem_mb=4000,
        runtime=20,
    script:
        "../scripts/tables.py"
