"""Copy-detection augmentations in plain torch, batched and driven by an explicit generator.

A copy detector is only as good as the edits it was taught to ignore: these are the SSCD-style
edits (crops, shifts, flips, blur, noise, contrast, small erasures) used both to train the in-house
descriptor and, in a milder form (`copy_edit`), to stand in for "a copy of a training image" when
calibrating a similarity threshold. Every random number comes from the `torch.Generator` passed in,
drawn in a fixed order whatever the per-sample decisions are, so a seed reproduces a batch exactly.

Images are float tensors in [0, 1] of shape (N, C, H, W). Sizes (blur sigma, shifts, erased areas)
are fractions of the image side, so one recipe means the same edit at 32 px and at 512 px.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "copy_edit",
    "gaussian_blur",
    "gaussian_noise",
    "random_contrast_gamma",
    "random_erase",
    "random_flip",
    "random_resized_crop",
    "random_shift",
    "strong_augment",
]


def _rand(n: int, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Uniform [0, 1) draws from the generator's own device, then moved next to the images."""
    return torch.rand(n, generator=generator, device=generator.device).to(like.device, like.dtype)


def _uniform(
    n: int, low: float, high: float, generator: torch.Generator, like: torch.Tensor
) -> torch.Tensor:
    return low + (high - low) * _rand(n, generator, like)


def _apply_mask(n: int, p: float, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Per-sample Bernoulli(p) as a (N,) bool; always draws, so the random stream stays aligned."""
    return _rand(n, generator, like) < p


def _check(x: torch.Tensor) -> None:
    if x.ndim != 4:
        raise ValueError(f"expected images of shape (N, C, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"expected a float tensor in [0, 1], got {x.dtype}")


def _affine(x: torch.Tensor, theta: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=False)


def random_resized_crop(
    x: torch.Tensor,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.5, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """Crop a random area fraction in `scale` with aspect in `ratio`, resized back to (H, W).

    The aspect ratio is clamped to what fits inside the image at the drawn area (instead of
    torchvision's rejection loop), so scale=(1, 1) is exactly the identity.
    """
    _check(x)
    n = x.shape[0]
    area = _uniform(n, scale[0], scale[1], generator, x).clamp(1e-4, 1.0)
    log_r = _uniform(n, math.log(ratio[0]), math.log(ratio[1]), generator, x)
    log_r = torch.maximum(torch.minimum(log_r, -area.log()), area.log())
    w = (area * log_r.exp()).sqrt().clamp(max=1.0)
    h = (area / log_r.exp()).sqrt().clamp(max=1.0)
    cx = (2 * _rand(n, generator, x) - 1) * (1 - w)
    cy = (2 * _rand(n, generator, x) - 1) * (1 - h)
    theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0], theta[:, 0, 2] = w, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    return _affine(x, theta)


def random_shift(
    x: torch.Tensor, generator: torch.Generator, max_shift: float = 0.1, p: float = 1.0
) -> torch.Tensor:
    """Translate by a whole number of pixels (up to max_shift x side), edges repeated.

    Whole pixels and nearest sampling keep the shift lossless, so it adds no hidden blur.
    """
    _check(x)
    n, _, hgt, wid = x.shape
    apply = _apply_mask(n, p, generator, x).to(x.dtype)
    dx = torch.round(_uniform(n, -max_shift, max_shift, generator, x) * wid) * apply
    dy = torch.round(_uniform(n, -max_shift, max_shift, generator, x) * hgt) * apply
    theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = -2 * dx / wid
    theta[:, 1, 2] = -2 * dy / hgt
    return _affine(x, theta, mode="nearest")


def random_flip(x: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Horizontal flip with probability p per sample."""
    _check(x)
    flip = _apply_mask(x.shape[0], p, generator, x).view(-1, 1, 1, 1)
    return torch.where(flip, x.flip(-1), x)


def gaussian_blur(
    x: torch.Tensor,
    generator: torch.Generator,
    sigma: tuple[float, float] = (0.005, 0.05),
    p: float = 1.0,
) -> torch.Tensor:
    """Separable Gaussian blur with a per-sample sigma (fraction of the shorter side).

    Samples not drawn for blurring get sigma ~ 0, i.e. a delta kernel, so the whole batch goes
    through one grouped convolution.
    """
    _check(x)
    n, c, hgt, wid = x.shape
    apply = _apply_mask(n, p, generator, x).to(x.dtype)
    side = min(hgt, wid)
    sig = _uniform(n, sigma[0], sigma[1], generator, x) * side * apply
    radius = min(max(1, math.ceil(3 * sigma[1] * side)), side - 1)
    taps = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-(taps[None] ** 2) / (2 * sig.clamp_min(1e-3)[:, None] ** 2))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    kernel = kernel.repeat_interleave(c, dim=0)  # (N*C, K)
    y = x.reshape(1, n * c, hgt, wid)
    y = F.pad(y, (radius, radius, 0, 0), mode="reflect")
    y = F.conv2d(y, kernel[:, None, None, :], groups=n * c)
    y = F.pad(y, (0, 0, radius, radius), mode="reflect")
    y = F.conv2d(y, kernel[:, None, :, None], groups=n * c)
    return y.reshape(n, c, hgt, wid)


def gaussian_noise(
    x: torch.Tensor,
    generator: torch.Generator,
    std: tuple[float, float] = (0.0, 0.05),
    p: float = 1.0,
) -> torch.Tensor:
    """Additive Gaussian noise with a per-sample standard deviation, clipped to [0, 1]."""
    _check(x)
    n = x.shape[0]
    apply = _apply_mask(n, p, generator, x).to(x.dtype)
    s = _uniform(n, std[0], std[1], generator, x) * apply
    noise = torch.randn(x.shape, generator=generator, device=generator.device).to(x.device, x.dtype)
    return (x + s.view(-1, 1, 1, 1) * noise).clamp(0.0, 1.0)


def random_contrast_gamma(
    x: torch.Tensor,
    generator: torch.Generator,
    brightness: float = 0.2,
    contrast: float = 0.3,
    gamma: float = 0.3,
    p: float = 1.0,
) -> torch.Tensor:
    """Brightness shift, contrast scaling about the image mean, then a gamma curve.

    Exposure and windowing differ between X-ray exports of one study; a copy detector must not
    separate them. contrast/gamma are log-symmetric: factors in [1/(1+a), 1+a].
    """
    _check(x)
    n = x.shape[0]
    apply = _apply_mask(n, p, generator, x).to(x.dtype)
    b = _uniform(n, -brightness, brightness, generator, x) * apply
    lc, lg = math.log1p(contrast), math.log1p(gamma)
    c = (_uniform(n, -lc, lc, generator, x) * apply).exp()
    g = (_uniform(n, -lg, lg, generator, x) * apply).exp()
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    y = (x - mean) * c.view(-1, 1, 1, 1) + mean + b.view(-1, 1, 1, 1)
    return y.clamp(0.0, 1.0).pow(g.view(-1, 1, 1, 1))


def random_erase(
    x: torch.Tensor,
    generator: torch.Generator,
    p: float = 0.25,
    area: tuple[float, float] = (0.02, 0.08),
) -> torch.Tensor:
    """Fill one small random rectangle per selected sample with a random grey level.

    Teaches the descriptor that a local edit (a text overlay, a changed marker) keeps a copy.
    """
    _check(x)
    n, _, hgt, wid = x.shape
    apply = _apply_mask(n, p, generator, x)
    a = _uniform(n, area[0], area[1], generator, x)
    log_r = _uniform(n, math.log(0.5), math.log(2.0), generator, x)
    rw = (a * log_r.exp()).sqrt().clamp(max=1.0)
    rh = (a / log_r.exp()).sqrt().clamp(max=1.0)
    x0 = _rand(n, generator, x) * (1 - rw)
    y0 = _rand(n, generator, x) * (1 - rh)
    fill = _rand(n, generator, x)
    xs = (torch.arange(wid, device=x.device, dtype=x.dtype) + 0.5) / wid
    ys = (torch.arange(hgt, device=x.device, dtype=x.dtype) + 0.5) / hgt
    inx = (xs[None] >= x0[:, None]) & (xs[None] < (x0 + rw)[:, None])  # (N, W)
    iny = (ys[None] >= y0[:, None]) & (ys[None] < (y0 + rh)[:, None])  # (N, H)
    mask = (iny[:, :, None] & inx[:, None, :] & apply[:, None, None])[:, None]  # (N, 1, H, W)
    return torch.where(mask, fill.view(-1, 1, 1, 1).expand_as(x), x)


def strong_augment(
    x: torch.Tensor,
    generator: torch.Generator,
    strength: float = 1.0,
    flip_p: float = 0.5,
) -> torch.Tensor:
    """SSCD-style training view: crop always, then flip/shift/contrast/blur/noise/erase by chance.

    `strength` scales every range (0 = identity crop only, 1 = default recipe), so training can
    be made harder or milder without touching the composition.
    """
    _check(x)
    s = float(strength)
    y = random_resized_crop(x, generator, scale=(max(0.05, 1 - 0.6 * s), 1.0))
    y = random_flip(y, generator, p=flip_p)
    y = random_shift(y, generator, max_shift=0.08 * s, p=0.5)
    y = random_contrast_gamma(
        y, generator, brightness=0.2 * s, contrast=0.4 * s, gamma=0.4 * s, p=0.8
    )
    y = gaussian_blur(y, generator, sigma=(0.002, 0.002 + 0.05 * s), p=0.5)
    y = gaussian_noise(y, generator, std=(0.0, 0.06 * s), p=0.5)
    y = random_erase(y, generator, p=0.25 * min(s, 1.0), area=(0.01, 0.01 + 0.07 * s))
    return y


def copy_edit(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A mild edit that still counts as "a copy": what a generated near-duplicate looks like.

    Crop keeping >= 70% of the area, a shift of a few pixels, light blur, noise and exposure
    change; no flip (a flipped chest X-ray is anatomically a different-looking image).
    """
    _check(x)
    y = random_resized_crop(x, generator, scale=(0.7, 1.0), ratio=(0.9, 1 / 0.9))
    y = random_shift(y, generator, max_shift=0.06, p=0.5)
    y = random_contrast_gamma(y, generator, brightness=0.08, contrast=0.15, gamma=0.15, p=1.0)
    y = gaussian_blur(y, generator, sigma=(0.002, 0.025), p=0.5)
    y = gaussian_noise(y, generator, std=(0.0, 0.03), p=0.5)
    return y
