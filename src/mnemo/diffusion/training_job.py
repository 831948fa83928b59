"""One variant's training, from files to files: read the cache (or its cached latents), build a
model from the config or load the pipeline it fine-tunes, train, save a pipeline folder.

A plain, JSON-able `TrainingJob` so that the same function runs in the Snakemake job itself and
in every process that torchrun starts for multi-GPU training.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mnemo.diffusion.model import DiffusionModel, ModelConfig
from mnemo.diffusion.train import (
    TrainConfig,
    TrainResult,
    fingerprint,
    process_group,
    train,
    weights_digest,
)


@dataclass
class TrainingJob:
    cache: str
    model_dir: str
    history: str
    summary: str
    checkpoint_dir: str
    model: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    threads: int = 1
    pretrained: str | None = None  # pipeline folder to fine-tune (None: a model built from `model`)
    vae: str | None = None  # AutoencoderKL folder of a latent model
    latents: str | None = None  # that VAE's latents of the cache (mnemo.diffusion.vae.save_latents)
    text_encoder: str | None = None  # pipeline folder whose text encoder a new UNet is trained against


def run_training_job(job: TrainingJob, device: str | torch.device | None = None, log=print,
                     on_checkpoint=None) -> TrainResult:
    """Train the job's model; the process of rank 0 writes the pipeline, history and summary."""
    from mnemo.data.dataset import cache_images, read_cache
    from mnemo.diffusion.train import write_history, write_summary

    device = torch.device(device or job.device)
    cache = read_cache(job.cache, columns=["prompt", "content_hash", "image"])
    prompts = cache.column("prompt").to_pylist()
    hashes = cache.column("content_hash").to_pylist()
    train_config = TrainConfig.from_dict(job.train)
    parts: list[Any] = [job.model, job.train, hashes, prompts]
    vae = None
    if job.vae is not None:
        from mnemo.diffusion.vae import load_latents, load_vae

        vae = load_vae(job.vae)
        samples, latents_id = load_latents(job.latents, hashes)
        parts.append(latents_id)
    else:
        samples = cache_images(cache)
    if job.pretrained is not None:
        model = DiffusionModel.from_pretrained(job.pretrained)
        if train_config.train_text_encoder is None:
            train_config.train_text_encoder = False  # fine-tuning keeps the pipeline's text encoder
        parts = [{"pretrained": str(Path(job.pretrained).resolve())}, *parts]
    else:
        model_config = ModelConfig.from_dict(job.model)
        if vae is not None:  # the UNet denoises the VAE's latents
            model_config.unet.channels, model_config.unet.resolution = samples.shape[1], samples.shape[-1]
            model_config.unet.__post_init__()
        model = DiffusionModel.from_config(model_config, prompts, seed=train_config.seed,
                                           text_encoder_from=job.text_encoder)
        if job.text_encoder is not None:
            if train_config.train_text_encoder is None:
                train_config.train_text_encoder = False  # a given encoder stays as it is, as SD's CLIP
            # its weights, not its path: a donor variant retrained in place must not resume old checkpoints
            parts = [{"text_encoder": weights_digest(model.text_encoder)}, *parts]
    if vae is not None:
        model.vae = vae
        model.image_channels = int(cache_images(cache.slice(0, 1)).shape[1])
    expected = model.sample_shape
    if tuple(samples.shape[1:]) != tuple(expected):
        raise ValueError(f"the model denoises {tuple(expected)} but the training data is {tuple(samples.shape[1:])}: "
                         "dataset.resolution must equal the UNet's sample size times the VAE's downsampling")
    run_id = fingerprint(*parts)
    rank, world = process_group()
    log(f"training on {len(samples)} samples {tuple(samples.shape[1:])} in {world} process(es), fingerprint {run_id}")
    copies = Counter(hashes)
    duplicated = torch.tensor([copies[h] > 1 for h in hashes], dtype=torch.bool)
    result = train(model, samples, prompts, train_config, job.checkpoint_dir, device=device,
                   run_fingerprint=run_id, log=log, on_checkpoint=on_checkpoint, duplicated=duplicated)
    if rank == 0:
        model.save_pretrained(job.model_dir)
        write_history(result.history, job.history)
        write_summary(result, train_config, job.summary)
    return result
