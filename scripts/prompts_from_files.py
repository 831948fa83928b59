from mnemo.data.promptset import build_prompt_set_from_files, original_images, read_prompt_file
from mnemo.workflow import job, write_parquet

with job(snakemake) as log:
    settings = snakemake.params.prompts
    memorized = read_prompt_file(snakemake.input.memorized, memorized=True)
    unmemorized = read_prompt_file(snakemake.input.unmemorized, memorized=False)
    table = build_prompt_set_from_files(memorized, unmemorized, original_images(settings.get("originals")),
                                        settings.get("max_memorized"), settings.get("max_unmemorized"))
    write_parquet(table, snakemake.output[0])
    groups = table.column("group").to_pylist()
    log.info("prompt set: %s", {g: groups.count(g) for g in sorted(set(groups))})
