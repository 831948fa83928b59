import pyarrow.parquet as pq

from mnemo.diffusion.loading import load_model
from mnemo.diffusion.sample import (
    generate,
    plan_requests,
    sample_seed,
    samples_table,
)
from mnemo.mitigate.neurons import build_mitigation, mitigation_info_table
from mnemo.mitigate.wen_embedding import reference_magnitude
from mnemo.nemo.localize import read_localized
from mnemo.workflow import fault_point, job, write_parquet

with job(snakemake) as log:
    settings = snakemake.params.generate
    variant, name = snakemake.wildcards.variant, snakemake.wildcards.mitigation
    model = load_model(snakemake)
    prompts = pq.read_table(snakemake.input.prompts, columns=["prompt_id", "prompt"])
    ids, texts = prompts.column("prompt_id").to_pylist(), prompts.column("prompt").to_pylist()
    n = settings["samples_per_prompt"]
    extra = {}
    if hasattr(snakemake.input, "neurons"):
        extra["localized"] = read_localized(snakemake.input.neurons, snakemake.params.search_mode)
    if hasattr(snakemake.input, "scores"):
        scores = pq.read_table(snakemake.input.scores).to_pylist()
        extra["flagged"] = {r["prompt_id"] for r in scores if r["nemo_flagged"]}
        extra["reference_magnitude"] = reference_magnitude(scores)  # wen_n's smallest n, first step
    mitigation, info = build_mitigation(
        name, snakemake.params.mitigation, model, blocks=snakemake.params.blocks, prompt_ids=ids, prompts=texts,
        seeds=[[sample_seed(pid, i, settings["seed"]) for i in range(n)] for pid in ids], steps=settings["steps"],
        **extra,
    )
    requests = plan_requests(ids, texts, n, snakemake.params.guidance, settings["seed"])
    images, seconds = generate(model, requests, settings["steps"], settings["batch_size"], mitigation,
                               on_batch=lambda i: fault_point("generate", i))
    table = samples_table(requests, images, variant, name, settings["steps"])
    write_parquet(table, snakemake.output.samples)
    write_parquet(mitigation_info_table(variant, name, info), snakemake.output.info)
    log.info("%d samples in %.1f s (%.2f images/s)", len(requests), sum(seconds), len(requests) / sum(seconds))
