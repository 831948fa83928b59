from pathlib import Path

from mnemo.phantoms import generate_phantom_dataset
from mnemo.workflow import job

with job(snakemake) as log:
    out_dir = Path(snakemake.output.train).parent
    summary = generate_phantom_dataset(out_dir, snakemake.params.phantoms, workers=snakemake.threads, overwrite=True)
    log.info("phantoms: %s", summary)
