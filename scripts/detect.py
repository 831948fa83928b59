import pyarrow.parquet as pq

from mnemo.detect import DetectConfig, detect_prompts
from mnemo.model import DiffusionModel
from mnemo.workflow import device_of, job, write_json, write_parquet

with job(snakemake) as log:
    config = DetectConfig(**snakemake.params.detect, seed=snakemake.params.seed)
    model = DiffusionModel.from_pretrained(snakemake.input.model, device=device_of(snakemake))
    prompts = pq.read_table(snakemake.input.prompts)
    result = detect_prompts(model, prompts, config)
    write_parquet(result["scores"], snakemake.output.scores)
    write_parquet(result["pairwise"], snakemake.output.pairwise)
    write_parquet(result["significance"], snakemake.output.tokens)
    write_json(result["threshold"], snakemake.output.threshold)
    flagged = sum(result["scores"].column("nemo_flagged").to_pylist())
    log.info("tau = %.4f from %d reference prompts; %d of %d prompts flagged", result["threshold"]["tau"],
             result["threshold"]["reference_prompts"], flagged, len(prompts))
