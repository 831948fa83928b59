"""The VAE of latent variants: a diffusers AutoencoderKL from a local folder, or one trained here
on the X-ray cache; and the cache's latents, encoded once per VAE and resolution and read by every
variant that names the VAE (the UNet never encodes an image while it trains).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mnemo.diffusion.train import CHECKPOINT_NAME, fingerprint, save_checkpoint


@dataclass
class VAEConfig:
    """A small AutoencoderKL; each block after the first halves the resolution."""

    block_out_channels: tuple[int, ...] = (32, 64)
    latent_channels: int = 4
    layers_per_block: int = 1
    norm_num_groups: int = 8


@dataclass
class VAETrainConfig:
    steps: int = 2000
    batch_size: int = 16
    learning_rate: float = 1e-4
    kl_weight: float = 1e-6
    checkpoint_every: int = 200
    log_every: int = 50
    seed: int = 0
    model: VAEConfig = field(default_factory=VAEConfig)

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> VAETrainConfig:
        values = dict(config)
        values["model"] = VAEConfig(**values.get("model", {}))
        return cls(**values)


def build_vae(config: VAEConfig, channels: int, seed: int = 0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    levels = len(config.block_out_channels)
    return AutoencoderKL(
        in_channels=channels, out_channels=channels, latent_channels=config.latent_channels,
        block_out_channels=tuple(config.block_out_channels), layers_per_block=config.layers_per_block,
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
        norm_num_groups=config.norm_num_groups,
    )


def load_vae(path: str | Path, device: str | torch.device = "cpu"):
    """A local AutoencoderKL folder (a pipeline's `vae/` subfolder or a `save_pretrained` one)."""
    from diffusers import AutoencoderKL

    root = Path(path)
    if not (root / "config.json").is_file():
        raise FileNotFoundError(f"{root} is not a diffusers AutoencoderKL folder (no config.json)")
    vae = AutoencoderKL.from_pretrained(root).to(device)
    vae.eval().requires_grad_(False)
    return vae


def _to_vae(images: torch.Tensor, vae) -> torch.Tensor:
    """uint8 images -> [-1, 1], grey repeated to the VAE's channels."""
    x = images.float() / 127.5 - 1
    if x.shape[1] < vae.config.in_channels:
        x = x.expand(-1, vae.config.in_channels, -1, -1)
    return x


def train_vae(images: torch.Tensor, config: VAETrainConfig, checkpoint_dir: str | Path,
              device: str | torch.device = "cpu", run_fingerprint: str = "", progress: bool = True,
              log: Callable[[str], None] = print, on_checkpoint: Callable[[int], None] | None = None):
    """Reconstruction (MSE) + kl_weight * KL, resumable like the UNet's training; sets the
    `scaling_factor` to 1 / std of the latents, as Stable Diffusion's VAE was calibrated."""
    from tqdm import tqdm

    device = torch.device(device)
    vae = build_vae(config.model, images.shape[1], config.seed).to(device).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.learning_rate)
    generator = torch.Generator().manual_seed(config.seed)
    history: list[dict[str, float]] = []
    path = Path(checkpoint_dir) / CHECKPOINT_NAME
    start = 0
    if path.is_file():
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state.get("fingerprint") == run_fingerprint:
            vae.load_state_dict(state["vae"])
            optimizer.load_state_dict(state["optimizer"])
            generator.set_state(state["generator"])
            history, start = state["history"], state["step"]
            log(f"resumed from checkpoint {path} at step {start}")
    bar = tqdm(range(start, config.steps), desc="train_vae", initial=start, total=config.steps, unit="step",
               disable=not progress, mininterval=5)
    for step in bar:
        tick = time.perf_counter()
        index = torch.randint(len(images), (config.batch_size,), generator=generator)
        x = images[index].to(device).float() / 127.5 - 1
        posterior = vae.encode(x).latent_dist
        reconstruction = vae.decode(posterior.sample(generator=generator)).sample
        mse = torch.nn.functional.mse_loss(reconstruction, x)
        kl = posterior.kl().mean() / x[0].numel()
        loss = mse + config.kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seconds = time.perf_counter() - tick
        history.append({"step": step + 1, "loss": float(loss.detach()), "mse": float(mse.detach()), "kl": float(kl.detach()), "seconds": seconds})
        if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
            bar.set_postfix(mse=f"{float(mse.detach()):.4f}", img_s=f"{config.batch_size / max(seconds, 1e-9):.1f}")
            log(f"step {step + 1}/{config.steps} mse {float(mse.detach()):.4f} kl {float(kl.detach()):.4f}")
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
            save_checkpoint(path, {"step": step + 1, "fingerprint": run_fingerprint, "vae": vae.state_dict(),
                                   "optimizer": optimizer.state_dict(), "generator": generator.get_state(),
                                   "history": history})
            if on_checkpoint is not None:
                on_checkpoint(step + 1)
    bar.close()
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        sample = images[: min(len(images), 256)].to(device)
        spread = torch.cat([vae.encode(_to_vae(b, vae)).latent_dist.mean for b in sample.split(32)]).std()
    vae.register_to_config(scaling_factor=float(1.0 / spread.clamp_min(1e-6)))
    return vae, history


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor, batch_size: int = 32, device: str | torch.device = "cpu",
                   progress: bool = True) -> torch.Tensor:
    """uint8 images (N, C, H, W) -> scaled latent means (N, latent_channels, h, w), float32 on the CPU."""
    from tqdm import tqdm

    vae.to(device)
    out = []
    for batch in tqdm(images.split(batch_size), desc="encode", unit="batch", disable=not progress, mininterval=5):
        x = _to_vae(batch.to(device), vae).to(vae.dtype)
        out.append((vae.encode(x).latent_dist.mean * vae.config.scaling_factor).float().cpu())
    return torch.cat(out)


def save_latents(path: str | Path, latents: torch.Tensor, content_hashes: list[str]) -> None:
    """Latents with the content hash of each row's image, so a reader can check they still match."""
    import os

    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({"latents": latents.contiguous()}, str(tmp),
              metadata={"content_hashes": ",".join(content_hashes), "id": fingerprint(content_hashes, latents.shape)})
    os.replace(tmp, path)


def load_latents(path: str | Path, content_hashes: list[str]) -> tuple[torch.Tensor, str]:
    """(latents, an id of the file for checkpoints' fingerprints); refuses latents of other images."""
    import hashlib

    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as handle:
        stored = handle.metadata()["content_hashes"].split(",")
    if stored != list(content_hashes):
        raise ValueError(f"{path} holds latents of other images than the cache: encode them again")
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    return load_file(str(path))["latents"], digest
