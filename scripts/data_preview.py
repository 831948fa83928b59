import pyarrow.parquet as pq

from mnemo.report.inputs import cache_image_ids, training_images
from mnemo.report.plots import data_preview, preview_image_ids
from mnemo.workflow import job, read_json

with job(snakemake) as log:
    prompts = pq.read_table(snakemake.input.prompts)
    ids = cache_image_ids(snakemake.input.cache)
    listed, others = preview_image_ids(prompts, ids)
    training = training_images(snakemake.input.cache, [i for _, row in listed for i in row] + others)
    summary = read_json(snakemake.input.summary)
    size = data_preview(prompts, ids, training, snakemake.output[0], summary)
    log.info("data preview of %d images, %d x %d px", len(training), *size)
