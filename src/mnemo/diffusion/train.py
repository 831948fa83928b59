"""Training: noise-prediction loss, AdamW + warm-up, EMA, condition dropout, resumable checkpoints.

One loop serves every variant; a variant only changes numbers in `TrainConfig` (condition dropout
for classifier-free guidance, Wen et al.'s training-time filter). All randomness comes from one
CPU generator whose state is checkpointed, so a killed run resumes to bit-identical weights.

The loop trains on uint8 images (pixel models) or on cached float latents (latent models). Under
`torchrun` (torch.distributed initialised) every process draws the same global batch from the
same generator and trains on its own shard of it; DistributedDataParallel averages the gradients,
so the processes' weights stay equal and the recipe means the same with 1 or N processes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mnemo.diffusion.model import DiffusionModel

CHECKPOINT_NAME = "last.pt"
FILTER_COUNTS = ("duplicated_seen", "duplicated_dropped", "unique_seen", "unique_dropped")
FILTER_CALIBRATIONS = ("unique", "conditioned")


@dataclass
class FilterConfig:
    """Wen et al. training-time mitigation: drop high-magnitude samples from each step's loss.

    `threshold` fixes the cut as Wen's code does (2 on SD latents, fine-tuning). Without it the cut
    is the `percentile` of the warm-up steps' magnitudes over `calibration` samples: those of images
    seen once in the training set (`unique`), so that the filter drops that share of ordinary images
    and whatever stands out beyond them, or of every conditioned sample (`conditioned`). Samples
    drawn with the empty prompt (condition dropout) have magnitude 0: never calibrated on, never
    dropped."""

    warmup_steps: int = 100
    percentile: float | None = None  # 99 unless threshold is given
    threshold: float | None = None
    calibration: str = "unique"

    def __post_init__(self) -> None:
        if self.threshold is not None and self.percentile is not None:
            raise ValueError("train.filter: give threshold (fixed, as Wen's code) or percentile, not both")
        if self.threshold is None and self.percentile is None:
            self.percentile = 99.0
        if self.calibration not in FILTER_CALIBRATIONS:
            raise ValueError(f"train.filter.calibration={self.calibration!r}; expected one of {FILTER_CALIBRATIONS}")


@dataclass
class TrainConfig:
    steps: int = 1200
    batch_size: int = 32
    learning_rate: float = 1e-3
    lr_schedule: str = "cosine"
    warmup_steps: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    condition_dropout: float = 0.1
    checkpoint_every: int = 100
    log_every: int = 50
    seed: int = 0
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    train_text_encoder: bool | None = None  # None: trained from scratch, frozen when fine-tuning
    filter: FilterConfig | None = None

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> TrainConfig:
        values = dict(config)
        if values.get("filter") is not None:
            values["filter"] = FilterConfig(**values["filter"])
        return cls(**values)


@dataclass
class TrainResult:
    history: list[dict[str, float]] = field(default_factory=list)
    filter_threshold: float | None = None
    # conditioned samples after the warm-up and how many of them the filter dropped, for images
    # whose content appears more than once in the training set and for images seen once
    filter_counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FILTER_COUNTS, 0))
    resumed_from_step: int = 0
    seconds: float = 0.0
    weights_digest: str = ""  # of the final weights, under torchrun only: every process must hold the same


def fingerprint(*parts: Any) -> str:
    """Stable hash of configs and data, stored in checkpoints so a changed recipe never resumes."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _trainable(model: DiffusionModel, text_encoder: bool = True) -> list[torch.nn.Parameter]:
    return list(model.unet.parameters()) + (list(model.text_encoder.parameters()) if text_encoder else [])


class Denoiser(torch.nn.Module):
    """Text encoder + UNet as one module: the one thing DistributedDataParallel wraps."""

    def __init__(self, unet: torch.nn.Module, text_encoder: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet
        self.text_encoder = text_encoder

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return self.unet(noisy, timesteps, encoder_hidden_states=self.text_encoder(ids)[0]).sample


def process_group() -> tuple[int, int]:
    """(rank, world size) under torchrun; (0, 1) in a single process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_sum(value: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        import torch.distributed as dist

        value = value.clone()
        dist.all_reduce(value)
    return value


def _all_gather(value: torch.Tensor, world: int) -> torch.Tensor:
    if world == 1:
        return value
    import torch.distributed as dist

    parts = [torch.empty_like(value) for _ in range(world)]
    dist.all_gather(parts, value.contiguous())
    return torch.cat(parts)


def _autocast(device: torch.device, mixed_precision: str):
    if device.type != "cuda" or mixed_precision == "no":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[mixed_precision]
    return torch.autocast("cuda", dtype=dtype)


def weights_digest(*modules: torch.nn.Module) -> str:
    """SHA-256 (16 hex digits) of the modules' parameters and buffers, bit for bit."""
    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in module.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically: a kill during the write leaves the previous checkpoint intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def train(
    model: DiffusionModel,
    images: torch.Tensor,
    prompts: list[str],
    config: TrainConfig,
    checkpoint_dir: str | Path,
    device: str | torch.device = "cpu",
    run_fingerprint: str = "",
    on_checkpoint: Callable[[int], None] | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    duplicated: torch.Tensor | None = None,
) -> TrainResult:
    """Train `model` in place on `images` (N, C, H, W: uint8 pixels, or float latents already
    scaled by the VAE's factor) with their `prompts`; ends on EMA weights. `duplicated` (N bools:
    the image's content is in the training set more than once) calibrates Wen's filter on the
    others and splits its drop counts; None counts every image as seen once."""
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel
    from tqdm import tqdm

    rank, world = process_group()
    batch = config.batch_size
    if batch % world:
        raise ValueError(f"train.batch_size {batch} must be a multiple of the {world} training processes")
    shard = slice(rank * batch // world, (rank + 1) * batch // world)
    device = torch.device(device)
    model.to(device)
    train_text_encoder = True if config.train_text_encoder is None else config.train_text_encoder
    model.unet.train()
    model.text_encoder.train(train_text_encoder)
    model.unet.requires_grad_(True)
    model.text_encoder.requires_grad_(train_text_encoder)
    if config.gradient_checkpointing:
        model.unet.enable_gradient_checkpointing()
        if train_text_encoder:
            model.text_encoder.activation_checkpointing_enable()
    params = _trainable(model, train_text_encoder)
    denoiser = Denoiser(model.unet, model.text_encoder)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        denoiser = DistributedDataParallel(denoiser, device_ids=[device] if device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    lr_scheduler = get_scheduler(
        config.lr_schedule, optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=config.steps
    )
    ema = EMAModel(params, decay=config.ema_decay, use_ema_warmup=True)
    noise_scheduler = model.scheduler
    generator = torch.Generator().manual_seed(config.seed)

    token_ids = model.token_ids(prompts).cpu()
    empty_ids = model.token_ids([""]).cpu()
    data = images.to(device)
    n_images = len(images)
    duplicated = torch.zeros(n_images, dtype=torch.bool) if duplicated is None else duplicated.bool().cpu()
    magnitudes_seen: list[torch.Tensor] = []
    result = TrainResult()

    checkpoint_path = Path(checkpoint_dir) / CHECKPOINT_NAME
    start = 0
    if checkpoint_path.is_file():
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
        if state.get("fingerprint") == run_fingerprint:
            model.unet.load_state_dict(state["unet"])
            model.text_encoder.load_state_dict(state["text_encoder"])
            optimizer.load_state_dict(state["optimizer"])
            lr_scheduler.load_state_dict(state["lr_scheduler"])
            ema.load_state_dict(state["ema"])
            generator.set_state(state["generator"])
            result.history = state["history"]
            result.filter_threshold = state["filter_threshold"]
            result.filter_counts = state.get("filter_counts", result.filter_counts)
            magnitudes_seen = state["magnitudes_seen"]
            start = result.resumed_from_step = state["step"]
            log(f"resumed from checkpoint {checkpoint_path} at step {start}")
        else:
            log(f"ignoring checkpoint {checkpoint_path}: made by a different recipe or dataset")

    def checkpoint(step: int) -> None:
        if rank != 0:  # every process holds the same weights; one writes them
            return
        save_checkpoint(
            checkpoint_path,
            {
                "step": step,
                "fingerprint": run_fingerprint,
                "unet": model.unet.state_dict(),
                "text_encoder": model.text_encoder.state_dict(),
                "optimizer": optimizer.state_dict(),
                "lr_scheduler": lr_scheduler.state_dict(),
                "ema": ema.state_dict(),
                "generator": generator.get_state(),
                "history": result.history,
                "filter_threshold": result.filter_threshold,
                "filter_counts": result.filter_counts,
                "magnitudes_seen": magnitudes_seen,
            },
        )
        if on_checkpoint is not None:
            on_checkpoint(step)

    began = time.perf_counter()
    bar = tqdm(range(start, config.steps), desc="train", initial=start, total=config.steps, unit="step",
               disable=not progress or rank != 0, mininterval=5)
    for step in bar:
        tick = time.perf_counter()
        # --- batch: every random draw comes from `generator`, in a fixed order; each process
        # takes its shard of the same global batch ------------------------------------------
        index = torch.randint(n_images, (batch,), generator=generator)
        dropped = torch.rand(batch, generator=generator) < config.condition_dropout
        noise = torch.randn((batch, *images.shape[1:]), generator=generator)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch,), generator=generator)
        index, dropped, noise, timesteps = index[shard], dropped[shard], noise[shard], timesteps[shard]
        ids = torch.where(dropped[:, None], empty_ids, token_ids[index]).to(device)
        x0 = data[index].float()
        if data.dtype == torch.uint8:
            x0 = x0 / 127.5 - 1
        noise, timesteps = noise.to(device), timesteps.to(device)
        noisy = noise_scheduler.add_noise(x0, noise, timesteps)

        # --- loss --------------------------------------------------------------------------
        with _autocast(device, config.mixed_precision):
            prediction = denoiser(noisy, timesteps, ids)
        per_sample = F.mse_loss(prediction.float(), noise, reduction="none").mean(dim=(1, 2, 3))
        keep = torch.ones(len(per_sample), dtype=torch.bool, device=device)
        if config.filter is not None:
            keep = _wen_filter(model, noisy, timesteps, prediction, empty_ids.to(device), config, step,
                               magnitudes_seen, result, device, world, dropped.to(device), duplicated[index].to(device))
        kept = int(_all_sum(keep.sum(), world))

        # --- update (a fully filtered batch makes none) ------------------------------------
        # DDP averages gradients over the processes: scaling by `world` makes the update the
        # mean over every kept sample of the global batch
        loss = (per_sample * keep).sum() / max(kept, 1)
        grad_norm = 0.0
        if kept:
            optimizer.zero_grad(set_to_none=True)
            (loss * world if world > 1 else loss).backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, config.grad_clip))
            optimizer.step()
            ema.step(params)
        lr_scheduler.step()

        result.history.append({
            "step": step + 1,
            "loss": float(_all_sum(loss.detach(), world)),
            "lr": float(lr_scheduler.get_last_lr()[0]),
            "grad_norm": grad_norm,
            "filtered_fraction": 1.0 - kept / batch,
            "seconds": time.perf_counter() - tick,
        })
        if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
            recent = result.history[-config.log_every:]
            mean_loss = sum(r["loss"] for r in recent) / len(recent)
            images_per_second = batch * len(recent) / max(sum(r["seconds"] for r in recent), 1e-9)
            bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{images_per_second:.1f}")
            if rank == 0:
                log(f"step {step + 1}/{config.steps} loss {mean_loss:.4f} lr {result.history[-1]['lr']:.2e} "
                    f"{images_per_second:.1f} images/s")
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
            checkpoint(step + 1)
    bar.close()

    if config.gradient_checkpointing:
        model.unet.disable_gradient_checkpointing()
        if train_text_encoder:
            model.text_encoder.activation_checkpointing_disable()
    ema.copy_to(params)
    model.eval()
    if world > 1:
        result.weights_digest = weights_digest(model.unet, model.text_encoder)
    result.seconds = time.perf_counter() - began
    return result


def _wen_filter(model, noisy, timesteps, prediction, empty_ids, config, step, magnitudes_seen, result, device,
                world, dropped, duplicated):
    """Per-sample ||eps(x_t, prompt) - eps(x_t, empty)||; keep those below the threshold. Warm-up
    magnitudes are gathered over the processes, so that every one sets the same threshold."""
    with torch.no_grad(), _autocast(device, config.mixed_precision):
        empty_embeds = model.text_encoder(empty_ids)[0].expand(len(noisy), -1, -1)
        unconditional = model.unet(noisy, timesteps, encoder_hidden_states=empty_embeds).sample
    magnitude = (prediction.detach().float() - unconditional.float()).flatten(1).norm(dim=1)
    settings = config.filter
    if settings.threshold is None and step < settings.warmup_steps:
        calibrated = ~dropped & (~duplicated if settings.calibration == "unique" else torch.ones_like(dropped))
        magnitudes_seen.append(_all_gather(torch.where(calibrated, magnitude, torch.nan), world).cpu())
        return torch.ones_like(magnitude, dtype=torch.bool)
    if result.filter_threshold is None:
        if settings.threshold is not None:
            result.filter_threshold = float(settings.threshold)
        else:
            seen = torch.cat(magnitudes_seen)
            seen = seen[~seen.isnan()]
            if not len(seen):
                raise ValueError(f"train.filter: no {settings.calibration} conditioned sample in the "
                                 f"{settings.warmup_steps} warm-up steps to calibrate the threshold on")
            result.filter_threshold = float(torch.quantile(seen, settings.percentile / 100))
    keep = filter_mask(magnitude, result.filter_threshold) | dropped
    conditioned = ~dropped
    counts = torch.stack([(conditioned & group & also).sum() for group in (duplicated, ~duplicated)
                          for also in (conditioned, ~keep)])  # in FILTER_COUNTS' order: one reduction
    for name, count in zip(FILTER_COUNTS, _all_sum(counts, world).tolist(), strict=True):
        result.filter_counts[name] += int(count)
    return keep


def filter_mask(magnitude: torch.Tensor, threshold: float) -> torch.Tensor:
    """Samples strictly below the threshold stay in the loss (Wen et al. drop >= threshold)."""
    return magnitude < threshold


def _filter_shares(counts: dict[str, int]) -> dict[str, float | int | None]:
    """Share of conditioned samples the filter dropped, for duplicated and for unique images."""
    shares: dict[str, float | int | None] = {}
    for name in ("duplicated", "unique"):
        seen = counts.get(f"{name}_seen", 0)
        shares[f"filtered_share_{name}"] = counts.get(f"{name}_dropped", 0) / seen if seen else None
        shares[f"filter_{name}_samples"] = seen
    return shares


def write_history(history: list[dict[str, float]], path: str | Path) -> None:
    import csv

    with Path(path).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)


def write_summary(result: TrainResult, config: TrainConfig, path: str | Path) -> None:
    summary = {
        "steps": config.steps,
        "resumed_from_step": result.resumed_from_step,
        "seconds_this_run": round(result.seconds, 2),
        "final_loss_mean_last_50": sum(r["loss"] for r in result.history[-50:]) / max(1, len(result.history[-50:])),
        "filter_threshold": result.filter_threshold,
        "filtered_fraction_mean": sum(r["filtered_fraction"] for r in result.history) / max(1, len(result.history)),
        **_filter_shares(result.filter_counts),
        "mean_step_seconds": sum(r["seconds"] for r in result.history) / max(1, len(result.history)),
        "config": asdict(config),
    }
    Path(path).write_text(json.dumps(summary, indent=2) + "\n")
