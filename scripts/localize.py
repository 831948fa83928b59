import pyarrow.parquet as pq

from mnemo.copydetect.descriptors import build_descriptor
from mnemo.copydetect.embeddings import read_embeddings
from mnemo.diffusion.loading import load_model
from mnemo.nemo.blocking import value_layers
from mnemo.nemo.localize import LocalizeConfig, localize_prompts, reference_table, results_table
from mnemo.nemo.published import (
    compare_with_published,
    published_table,
    read_official,
    write_official,
)
from mnemo.nemo.sample_check import SampleCheck, SampleCheckConfig
from mnemo.nemo.targets import prompts_to_localize
from mnemo.workflow import device_of, job, read_json, write_parquet

with job(snakemake) as log:
    settings = dict(snakemake.params.localize)
    compare = settings.pop("compare_modes")
    published = settings.pop("published")
    which = settings.pop("prompts")
    config = LocalizeConfig(**settings, steps=snakemake.params.steps, **snakemake.params.nemo_signal)
    model = load_model(snakemake)
    prompts = pq.read_table(snakemake.input.prompts)
    scores = pq.read_table(snakemake.input.scores, columns=["prompt_id", "nemo_flagged"]).to_pylist()
    chosen = prompts_to_localize(prompts.select(["prompt_id", "memorized_truth"]).to_pylist(), scores, which)
    tau = read_json(snakemake.input.threshold)["tau"]
    check = None
    if (checking := snakemake.params.sample_check) is not None:
        descriptor = build_descriptor(checking["descriptor"], checking["descriptor_settings"],
                                      snakemake.input.get("descriptor_model"), device_of(snakemake))
        threshold = read_json(snakemake.input.calibration)["threshold"]
        training = read_embeddings(snakemake.input.training).vectors
        check = SampleCheck(model, value_layers(model.unet, config.blocks), descriptor, threshold,
                            SampleCheckConfig(checking["samples"], checking["guidance"], checking["steps"],
                                              checking["batch_size"], checking["quantile"]), config.factor,
                            training)
        log.info("sample check: %d samples at guidance %g, copy threshold %.3f (%s, %d training images)",
                 checking["samples"], checking["guidance"], threshold, checking["descriptor"], len(training))
    log.info("localizing %d prompts (localize.prompts: %s; %d flagged by detection; tau %.4f)", len(chosen), which,
             sum(r["nemo_flagged"] for r in scores), tau)
    layers, stats, results = localize_prompts(model, prompts, chosen, tau, config, compare, log=log.info,
                                              sample_check=check)
    table = results_table(results, layers, tau, config)
    write_parquet(table, snakemake.output.neurons)
    write_parquet(reference_table(layers, stats), snakemake.output.reference)
    rows = [r for r in table.to_pylist() if r["mode"] == config.mode]
    captions = dict(zip(prompts.column("prompt_id").to_pylist(), prompts.column("prompt").to_pylist(), strict=True))
    widths = [layer.width for layer in layers]
    write_official(snakemake.output.statistics, rows, captions, widths)
    compared = compare_with_published(rows, captions, read_official(published), widths) if published else []
    write_parquet(published_table(compared), snakemake.output.published)
