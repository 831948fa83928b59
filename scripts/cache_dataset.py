from mnemo.data.dataset import CacheConfig, build_cache, write_summary
from mnemo.data.privacy import load_salt
from mnemo.workflow import job, notify

with job(snakemake) as log:
    settings = snakemake.params.dataset
    config = CacheConfig(
        resolution=settings["resolution"],
        uncertainty=settings["uncertainty"],
        frontal_only=settings["frontal_only"],
        max_images=settings["max_images"],
        on_bad_image=settings["on_bad_image"],
        multiframe=settings["multiframe"],
        text_column=settings["text_column"],
        workers=snakemake.threads,
    )
    summary = build_cache(
        snakemake.input.csv,
        snakemake.params.image_root,
        snakemake.output.cache,
        config,
        salt=load_salt(snakemake.params.salt_file),
        rejected_csv=snakemake.output.rejected,
    )
    write_summary(summary, snakemake.output.summary)
    log.info("cached %d images, rejected %d (listed in %s), %.1f images/s",
             summary.images_cached, summary.images_rejected, snakemake.output.rejected,
             summary.images_per_second)
    if summary.text_column:
        log.info("prompts from column %r: %d; empty there, so the label prompt: %d", summary.text_column,
                 summary.prompts_from_text, summary.prompts_from_labels)
    if summary.images_rejected:
        notify(log, f"{summary.images_rejected} image(s) skipped (on_bad_image: skip); "
                    f"reasons in {snakemake.output.rejected}")
