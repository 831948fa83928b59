from mnemo.copydetect.descriptors import train_copydetect
from mnemo.data.dataset import cache_images, patient_holdout, read_cache
from mnemo.diffusion.train import write_history
from mnemo.workflow import device_of, job

with job(snakemake) as log:
    holdout = snakemake.params.holdout
    cache = read_cache(snakemake.input.cache, columns=["patient_id", "image"])
    held = patient_holdout(cache.column("patient_id").to_pylist(), holdout["fraction"], holdout["seed"])
    images = cache_images(cache)[~held]
    settings = {k: v for k, v in snakemake.params.settings.items() if k != "kind"}
    log.info("training %s on %d images (%d held out for calibration)", snakemake.wildcards.descriptor,
             len(images), int(held.sum()))
    net, history = train_copydetect(images, settings, seed=settings.get("seed", 0), device=device_of(snakemake),
                                    log=lambda row: log.info("%s", row))
    net.save_pretrained(snakemake.output.model)
    write_history(history, snakemake.output.history)
