import pyarrow.parquet as pq

from mnemo.copydetect.descriptors import build_descriptor
from mnemo.data.dataset import cache_images, read_cache
from mnemo.diffusion.loading import load_model
from mnemo.mitigate.retrigger import RetriggerConfig, retrigger_table, run_retrigger
from mnemo.nemo.blocking import value_layers
from mnemo.nemo.localize import read_localized
from mnemo.workflow import device_of, job, read_json, write_parquet

with job(snakemake) as log:
    settings = dict(snakemake.params.retrigger)
    max_prompts = settings.pop("max_prompts")
    config = RetriggerConfig(**settings, sampling_steps=snakemake.params.sampling_steps)
    device = device_of(snakemake)
    model = load_model(snakemake)
    localized = read_localized(snakemake.input.neurons, snakemake.params.search_mode)
    prompts = pq.read_table(snakemake.input.prompts)
    cache = read_cache(snakemake.input.cache, columns=["image_id", "image"])
    images = dict(zip(cache.column("image_id").to_pylist(), cache_images(cache), strict=True))
    descriptor = build_descriptor(snakemake.params.descriptor_name, snakemake.params.descriptor,
                                  snakemake.input.get("descriptor_model"), device)
    threshold = read_json(snakemake.input.calibration)["threshold"]
    rows = run_retrigger(model, value_layers(model.unet, snakemake.params.blocks), localized, prompts, images,
                         descriptor, threshold, config, max_prompts, log=log.info)
    write_parquet(retrigger_table(rows), snakemake.output[0])
