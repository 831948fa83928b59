import pyarrow.parquet as pq

from mnemo.data.dataset import read_cache
from mnemo.detect.validation import detection_metrics, detectors_of, replication_by_prompt
from mnemo.report.plots import plot_detection_roc, plot_score_vs_similarity, top_bottom_grid
from mnemo.workflow import job, read_json, write_parquet

with job(snakemake) as log:
    variant = snakemake.wildcards.variant
    scores = pq.read_table(snakemake.input.scores)
    measured = hasattr(snakemake.input, "replication")
    replication, threshold = {}, None
    if measured:
        threshold = read_json(snakemake.input.calibration)["threshold"]
        replication = replication_by_prompt(pq.read_table(snakemake.input.replication), threshold)
    table = detection_metrics(scores, replication, variant)
    write_parquet(table, snakemake.output.metrics)
    for row in table.to_pylist():
        log.info("%-15s vs %-10s AUC %.3f TPR@1%%FPR %.3f spearman %.3f", row["detector"], row["truth"], row["auc"],
                 row["tpr_at_1pct_fpr"], row["spearman_vs_similarity"])
    plot_detection_roc(scores, replication, detectors_of(scores), snakemake.output.roc, title=variant)
    plot_score_vs_similarity(scores, replication, snakemake.params.grid_detector, threshold, snakemake.output.scatter)
    samples = pq.read_table(snakemake.input.samples)
    cache = read_cache(snakemake.input.cache, columns=["image_id", "image"]) if measured else None
    matches = pq.read_table(snakemake.input.matches) if measured else None
    top_bottom_grid(scores, samples, matches, cache, snakemake.params.grid_detector, snakemake.params.grid_prompts,
                    snakemake.output.grid, guidance=snakemake.params.grid_guidance)
