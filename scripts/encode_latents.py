from mnemo.data.dataset import cache_images, read_cache
from mnemo.diffusion.vae import encode_latents, load_vae, save_latents
from mnemo.workflow import device_of, job

with job(snakemake) as log:
    cache = read_cache(snakemake.input.cache, columns=["content_hash", "image"])
    vae = load_vae(snakemake.input.vae, device=device_of(snakemake))
    latents = encode_latents(vae, cache_images(cache), snakemake.params.batch_size, device=device_of(snakemake))
    log.info("encoded %d images to latents %s", len(latents), tuple(latents.shape[1:]))
    save_latents(snakemake.output.latents, latents, cache.column("content_hash").to_pylist())
