from mnemo.data.dataset import read_cache
from mnemo.data.privacy import load_salt
from mnemo.data.promptset import PromptSetConfig, build_prompt_set, read_planted_manifest
from mnemo.workflow import job, write_parquet

with job(snakemake) as log:
    cache = read_cache(snakemake.input.cache, columns=["image_id", "patient_id", "prompt"])
    planted = None
    if snakemake.input.planted:
        planted = read_planted_manifest(snakemake.input.planted[0], load_salt(snakemake.params.salt_file))
    table = build_prompt_set(cache, PromptSetConfig(**snakemake.params.prompts), snakemake.params.uncertainty, planted)
    write_parquet(table, snakemake.output[0])
    log.info("prompt set: %s", {g: table.column("group").to_pylist().count(g) for g in ("planted", "other", "heldout")})
