"""NeMo's memorization signal: the noise difference eps(x_T, t, y) - x_T on the initial
noise, min-max normalised, compared by multi-scale SSIM; tau from reference prompts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mnemo.diffusion.model import DiffusionModel
from mnemo.diffusion.sample import batch_slices, ddim_scheduler, initial_noise


@torch.no_grad()
def first_step_noise_differences(model: DiffusionModel, prompts: Sequence[str], seeds: Sequence[Sequence[int]],
                                 steps: int, batch_size: int = 64) -> torch.Tensor:
    """delta = eps(x_T, t_1, prompt) - x_T for every (prompt, seed): (prompts, n, C, H, W)."""
    n = len(seeds[0])
    flat_seeds = [s for row in seeds for s in row]
    texts = [p for p in prompts for _ in range(n)]
    t1 = ddim_scheduler(model, steps).timesteps[0]
    out = []
    for part in batch_slices(len(flat_seeds), batch_size):
        latents = initial_noise(flat_seeds[part], model.sample_shape, model.device, model.dtype)
        eps = model.unet(latents, t1, encoder_hidden_states=model.encode_prompts(texts[part])).sample
        out.append((eps - latents).float().cpu())
    return torch.cat(out).view(len(prompts), n, *model.sample_shape)


def normalize_maps(delta: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each (sample, channel) map over its pixels, as NeMo does before SSIM."""
    flat = delta.flatten(-2)
    low, high = flat.min(dim=-1, keepdim=True).values, flat.max(dim=-1, keepdim=True).values
    return ((flat - low) / (high - low).clamp_min(1e-12)).view_as(delta)


def ssim_kernel_size(size: int, betas: Sequence[float], requested: int | str = "auto") -> int:
    """Largest odd Gaussian kernel <= 11 that MS-SSIM with len(betas) scales allows at `size`."""
    scale = 2 ** (len(betas) - 1)
    if requested != "auto":
        kernel = int(requested)
        if (kernel - 1) * scale >= size:
            raise ValueError(
                f"config key 'detect.kernel_size': {kernel} is too large for {size}px maps with "
                f"{len(betas)} MS-SSIM scales; use 'auto' or at most {(size - 1) // scale}"
            )
        return kernel
    kernel = 11
    while kernel > 1 and (kernel - 1) * scale >= size:
        kernel -= 2
    if kernel < 3:
        raise ValueError(f"maps of {size}px are too small for MS-SSIM with {len(betas)} scales")
    return kernel


def ms_ssim(a: torch.Tensor, b: torch.Tensor, kernel_size: int, betas: Sequence[float]) -> torch.Tensor:
    """Per-pair MS-SSIM of maps in [0, 1] (torchmetrics), with a Gaussian window of `kernel_size`.

    torchmetrics derives the Gaussian window from sigma, not from kernel_size, so sigma is set to
    give that window: 1.5 for 11 (NeMo's default), proportionally smaller below.
    """
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

    sigma = 1.5 if kernel_size == 11 else (kernel_size - 1) / 2 / 3.5
    return multiscale_structural_similarity_index_measure(
        a.float().cpu(), b.float().cpu(), kernel_size=kernel_size, sigma=sigma, betas=tuple(betas),
        data_range=1.0, reduction="none",
    )


def pairwise_ms_ssim(maps: torch.Tensor, kernel_size: int, betas: Sequence[float],
                     batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """MS-SSIM of every pair within each prompt: maps (P, n, C, H, W) -> (P, n(n-1)/2), pair index."""
    prompts, n = maps.shape[:2]
    pairs = torch.combinations(torch.arange(n), r=2)
    left = maps[:, pairs[:, 0]].flatten(0, 1)
    right = maps[:, pairs[:, 1]].flatten(0, 1)
    scores = [ms_ssim(left[part], right[part], kernel_size, betas) for part in batch_slices(len(left), batch_size)]
    return torch.cat(scores).view(prompts, len(pairs)), pairs


def per_sample_max(pairwise: torch.Tensor, pairs: torch.Tensor, n: int) -> torch.Tensor:
    """Each sample's highest similarity to another sample of its prompt: (P, n)."""
    out = torch.full((pairwise.shape[0], n), -torch.inf)
    for column, (a, b) in enumerate(pairs.tolist()):
        out[:, a] = torch.maximum(out[:, a], pairwise[:, column])
        out[:, b] = torch.maximum(out[:, b], pairwise[:, column])
    return out


def memorization_threshold(reference_pairwise: torch.Tensor) -> float:
    """tau_mem = mean + 1 std of the pairwise scores of non-memorized prompts (NeMo)."""
    values = reference_pairwise.flatten().double()
    return float(values.mean() + values.std())

