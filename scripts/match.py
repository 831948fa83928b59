import pyarrow.parquet as pq

from mnemo.copydetect.embeddings import read_embeddings
from mnemo.copydetect.replication import (
    MatchConfig,
    diversity,
    heldout_baseline,
    match_samples,
    per_prompt,
    threshold_names,
)
from mnemo.data.dataset import patients_by_image
from mnemo.workflow import device_of, job, read_json, write_parquet

with job(snakemake) as log:
    settings = snakemake.params.match
    config = MatchConfig(top_k=settings["top_k"], thresholds=tuple(settings["thresholds"]),
                         chunk_queries=settings["chunk_queries"], chunk_keys=settings["chunk_keys"])
    samples = read_embeddings(snakemake.input.samples)
    train = read_embeddings(snakemake.input.train)
    rows = pq.read_table(snakemake.input.sample_rows, columns=["sample_id", "prompt_id", "guidance"])
    patients = patients_by_image(snakemake.input.cache)
    prompts = pq.read_table(snakemake.input.prompts)
    calibration = read_json(snakemake.input.calibration)
    baseline = None
    if hasattr(snakemake.input, "heldout"):  # patients the model never saw
        heldout = read_embeddings(snakemake.input.heldout)
        baseline = heldout_baseline(samples, train, heldout, patients_by_image(snakemake.input.heldout_cache),
                                    settings["calibration"]["fpr"], config, device_of(snakemake))
        log.info("held-out baseline: %d images of %d patients, margin %.4f at false-positive rate %g",
                 baseline.images, baseline.patients, baseline.margin, baseline.fpr)
    matches = match_samples(samples, rows, train, patients, prompts, config, device_of(snakemake), baseline)
    write_parquet(matches, snakemake.output.matches)
    thresholds = threshold_names(config.thresholds, calibration["threshold"])
    write_parquet(per_prompt(matches, diversity(samples, rows), thresholds), snakemake.output.prompts)
    log.info("matched %d samples against %d training images (thresholds %s)", len(samples.ids), len(train.ids),
             thresholds)
