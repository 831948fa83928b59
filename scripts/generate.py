import pyarrow as pa
import pyarrow.parquet as pq

from mnemo.detect.names import wen_n_of, wen_reference_detector
from mnemo.diffusion.sample import (
    generate,
    plan_requests,
    sample_seed,
    samples_table,
)
from mnemo.mitigate.neurons import build_mitigation
from mnemo.nemo.localize import read_localized
from mnemo.workflow import fault_point, job, load_model, write_parquet

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
        # the smallest n of the detect.wen_n the scores were written with (n = 1 by default)
        target = wen_reference_detector(wen_n_of(scores[0] if scores else ()))
        reference = sorted(r[target] for r in scores if r["reference"])
        extra["reference_magnitude"] = reference[len(reference) // 2]
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
    info_table = pa.Table.from_pylist([{"variant": variant, "mitigation": name, **r} for r in info]) if info \
        else pa.table({"variant": pa.array([], pa.string()), "mitigation": pa.array([], pa.string()),
                       "prompt_id": pa.array([], pa.string())})
    write_parquet(info_table, snakemake.output.info)
    log.info("%d samples in %.1f s (%.2f images/s)", len(requests), sum(seconds), len(requests) / sum(seconds))
