import pyarrow.dataset as ds
import pyarrow.parquet as pq

from mnemo.report.inputs import training_images
from mnemo.report.plots import sample_sheet, sheet_layout
from mnemo.workflow import job, read_json

with job(snakemake) as log:
    variant, mitigation = snakemake.wildcards.variant, snakemake.wildcards.mitigation
    settings = snakemake.params.sheet
    prompts = pq.read_table(snakemake.input.prompts, columns=["prompt_id", "group"]).to_pylist()
    groups = {r["prompt_id"]: r["group"] for r in prompts}
    # only the samples (and training images) the sheet shows are read: a sample set can be gigabytes
    rows = pq.read_table(snakemake.input.samples, columns=["sample_id", "prompt_id", "guidance", "sample_index"])
    _, layout = sheet_layout(rows.to_pylist(), groups, settings["guidance"], settings["prompts"], settings["seeds"])
    wanted = sorted(r["sample_id"] for cells in layout.values() for r in cells.values())
    samples = ds.dataset(snakemake.input.samples, format="parquet").to_table(
        columns=["sample_id", "prompt_id", "guidance", "sample_index", "image"],
        filter=ds.field("sample_id").isin(wanted))
    matches = training = threshold = None
    if hasattr(snakemake.input, "matches"):
        matches = ds.dataset(snakemake.input.matches, format="parquet").to_table(
            columns=["sample_id", "nn_image_id", "nn_similarity"], filter=ds.field("sample_id").isin(wanted))
        training = training_images(snakemake.input.cache, matches.column("nn_image_id").to_pylist())
        threshold = read_json(snakemake.input.calibration)["threshold"]
    size = sample_sheet(samples, snakemake.output[0], matches, training, threshold, groups,
                        guidance=settings["guidance"], max_prompts=settings["prompts"], max_seeds=settings["seeds"],
                        title=f"{variant} / {mitigation}")
    log.info("contact sheet of %d samples (%d prompts), %d x %d px", samples.num_rows, len(layout), *size)
