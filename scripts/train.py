from mnemo.data.dataset import cache_images, read_cache
from mnemo.diffusion.model import DiffusionModel, ModelConfig
from mnemo.diffusion.train import TrainConfig, fingerprint, train, write_history, write_summary
from mnemo.workflow import device_of, fault_point, job

with job(snakemake) as log:
    cache = read_cache(snakemake.input.cache, columns=["prompt", "content_hash", "image"])
    prompts = cache.column("prompt").to_pylist()
    images = cache_images(cache)
    model_config = ModelConfig.from_dict(snakemake.params.model)
    train_config = TrainConfig.from_dict(snakemake.params.train)
    model = DiffusionModel.from_config(model_config, prompts, seed=train_config.seed)
    run_id = fingerprint(snakemake.params.model, snakemake.params.train,
                         cache.column("content_hash").to_pylist(), prompts)
    log.info("training %s on %d images (%s), fingerprint %s", snakemake.wildcards.variant, len(images),
             tuple(images.shape[1:]), run_id)
    result = train(model, images, prompts, train_config, snakemake.params.checkpoint_dir,
                   device=device_of(snakemake), run_fingerprint=run_id, log=log.info,
                   on_checkpoint=lambda step: fault_point("train", step))
    model.save_pretrained(snakemake.output.model)
    write_history(result.history, snakemake.output.history)
    write_summary(result, train_config, snakemake.output.summary)
