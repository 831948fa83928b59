import pyarrow.parquet as pq

from mnemo.detect.metrics import median_mad
from mnemo.evaluate.clip_alignment import ClipAlignment, clip_alignment_table
from mnemo.workflow import device_of, job, write_parquet

with job(snakemake) as log:
    scorer = ClipAlignment(snakemake.input.clip, device_of(snakemake))
    table = clip_alignment_table(pq.read_table(snakemake.input.samples), pq.read_table(snakemake.input.prompts),
                                 scorer, snakemake.params.batch_size)
    write_parquet(table, snakemake.output[0])
    log.info("A_CLIP of %d samples: median %.3f, MAD %.3f", table.num_rows, *median_mad(table.column("a_clip")))
