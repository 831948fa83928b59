import pyarrow.parquet as pq

from mnemo.localize import LocalizeConfig, localize_prompts, reference_table, results_table
from mnemo.workflow import job, load_model, read_json, write_parquet

with job(snakemake) as log:
    settings = dict(snakemake.params.localize)
    compare = settings.pop("compare_modes")
    config = LocalizeConfig(**settings, seed=snakemake.params.seed, steps=snakemake.params.steps)
    model = load_model(snakemake)
    prompts = pq.read_table(snakemake.input.prompts)
    scores = pq.read_table(snakemake.input.scores, columns=["prompt_id", "nemo_flagged"]).to_pylist()
    flagged = [r["prompt_id"] for r in scores if r["nemo_flagged"]]
    tau = read_json(snakemake.input.threshold)["tau"]
    log.info("localizing %d flagged prompts (tau %.4f)", len(flagged), tau)
    layers, stats, results = localize_prompts(model, prompts, flagged, tau, config, compare, log=log.info)
    table = results_table(results, layers, tau, config)
    write_parquet(table, snakemake.output.neurons)
    write_parquet(reference_table(layers, stats), snakemake.output.reference)
