import pyarrow.parquet as pq

from mnemo.detect.detector import DetectConfig, detect_prompts
from mnemo.diffusion.loading import load_model
from mnemo.workflow import job, write_json, write_parquet

with job(snakemake) as log:
    config = DetectConfig(**snakemake.params.detect, seed=snakemake.params.seed)
    model = load_model(snakemake)
    prompts = pq.read_table(snakemake.input.prompts)
    result = detect_prompts(model, prompts, config)
    write_parquet(result["scores"], snakemake.output.scores)
    write_parquet(result["pairwise"], snakemake.output.pairwise)
    write_parquet(result["significance"], snakemake.output.tokens)
    write_json(result["threshold"], snakemake.output.threshold)
    flagged = sum(result["scores"].column("nemo_flagged").to_pylist())
    log.info("tau = %.4f from %d reference prompts; %d of %d prompts flagged", result["threshold"]["tau"],
             result["threshold"]["reference_prompts"], flagged, len(prompts))
