from mnemo.data.dataset import cache_images, read_cache
from mnemo.diffusion.train import fingerprint, write_history
from mnemo.diffusion.vae import VAETrainConfig, train_vae
from mnemo.workflow import device_of, fault_point, job

with job(snakemake) as log:
    cache = read_cache(snakemake.input.cache, columns=["content_hash", "image"])
    images = cache_images(cache)
    run_id = fingerprint(snakemake.params.train, cache.column("content_hash").to_pylist())
    vae, history = train_vae(images, VAETrainConfig.from_dict(snakemake.params.train), snakemake.params.checkpoint_dir,
                             device=device_of(snakemake), run_fingerprint=run_id, log=log.info,
                             on_checkpoint=lambda step: fault_point("train_vae", step))
    vae.save_pretrained(snakemake.output.model)
    write_history(history, snakemake.output.history)
