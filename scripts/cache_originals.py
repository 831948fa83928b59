from mnemo.data.dataset import build_originals_cache
from mnemo.data.promptset import original_images, read_prompt_file
from mnemo.workflow import job, write_json

with job(snakemake) as log:
    settings = snakemake.params.prompts
    memorized = read_prompt_file(snakemake.input.memorized, memorized=True)
    limit = settings.get("max_memorized")
    memorized = memorized[:limit] if limit else memorized
    count = build_originals_cache(memorized, original_images(settings.get("originals")), snakemake.output.cache,
                                  snakemake.params.resolution)
    write_json({"images_cached": count, "prompts": len(memorized)}, snakemake.output.summary)
    log.info("cached %d original images of %d memorized prompts", count, len(memorized))
