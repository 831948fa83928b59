"""Small pieces shared by the library's own nets (the copy-detection descriptor and the label
classifier): image conversion, normalisation layer, optimiser schedule and batch order.

One implementation each, so that the two nets read images alike and train alike; changing one of
these changes the weights both train to for a given seed.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ShuffledBatches", "adamw_warmup_cosine", "as_uint8", "group_norm", "resize", "to_channels",
           "unit_float", "warmup_cosine"]


def unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [0, 1]; floats are accepted only if already in [0, 1]."""
    if images.ndim != 4:
        raise ValueError(f"expected images of shape (N, C, H, W), got {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    if images.is_floating_point():
        if images.numel() and (images.min() < -1e-6 or images.max() > 1 + 1e-6):
            raise ValueError("float images must lie in [0, 1]; pass uint8 for [0, 255] data")
        return images.float()
    raise TypeError(f"expected uint8 (or float in [0, 1]) images, got {images.dtype}")


def as_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [0, 1] -> uint8 [0, 255], rounded (values outside [0, 1] are clamped)."""
    return (x * 255.0).round().clamp(0, 255).to(torch.uint8)


def to_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Grey from colour by the channel mean, colour from grey by repetition."""
    if x.shape[1] == channels:
        return x
    if channels == 1:
        return x.mean(dim=1, keepdim=True)
    if x.shape[1] == 1:
        return x.expand(-1, channels, -1, -1)
    raise ValueError(f"cannot map {x.shape[1]} channels to {channels}")


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Antialiased bilinear resize to (H, W); a no-op at that size already."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 8 groups (as many as divide `channels`): independent of batch composition."""
    return nn.GroupNorm(math.gcd(8, channels), channels)


def warmup_cosine(steps: int, warmup_steps: int, floor: float = 0.01):
    """Learning-rate factor per step: linear warm-up to 1, then cosine down to `floor`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, steps - warmup_steps)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return factor


def adamw_warmup_cosine(module: nn.Module, lr: float, weight_decay: float, steps: int, warmup_steps: int
                        ) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW with weight decay on weight matrices and kernels only (not on biases and norm
    parameters), stepped per batch through `warmup_cosine`. Group 0 holds the decayed parameters."""
    decay = [p for p in module.parameters() if p.ndim > 1]
    no_decay = [p for p in module.parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(steps, warmup_steps))


class ShuffledBatches:
    """Batches of `batch_size` indices (at most n) from a fresh permutation of range(n) per pass;
    a pass's tail shorter than a batch is skipped. Every draw comes from `generator`."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator) -> None:
        self.n = n
        self.batch_size = min(batch_size, n)
        self.generator = generator
        self.order = torch.randperm(n, generator=generator)
        self.cursor = 0

    def __iter__(self) -> ShuffledBatches:
        return self

    def __next__(self) -> torch.Tensor:
        if self.cursor + self.batch_size > self.n:
            self.order, self.cursor = torch.randperm(self.n, generator=self.generator), 0
        idx = self.order[self.cursor : self.cursor + self.batch_size]
        self.cursor += self.batch_size
        return idx


def config_from_any(cls: type, config: Any) -> Any:
    """A settings dataclass from itself, a (workflow config) dict with unknown keys ignored, or None."""
    if config is None:
        return cls()
    if isinstance(config, cls):
        return config
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in dict(config).items() if k in names}
    if "channels" in kwargs:
        kwargs["channels"] = tuple(kwargs["channels"])
    return cls(**kwargs)
