"""NeMo's detection: a prompt is memorized when some of its samples' noise differences
are alike beyond tau (max pairwise MS-SSIM per sample).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mnemo.detect.config import DetectConfig
from mnemo.diffusion.model import DiffusionModel
from mnemo.diffusion.sample import seeds_per_prompt
from mnemo.nemo.signal import (
    noise_differences,
    normalize_maps,
    pairwise_ms_ssim,
    per_sample_max,
    signal_timestep,
    ssim_kernel_size,
)


@dataclass
class NemoDetection:
    pairwise: torch.Tensor        # (P, pairs)
    sample_max: torch.Tensor      # (P, n)
    kernel_size: int


def nemo_detection(model: DiffusionModel, prompt_ids: Sequence[str], prompts: Sequence[str],
                   config: DetectConfig) -> NemoDetection:
    seeds = seeds_per_prompt(prompt_ids, config.nemo_samples, config.seed)
    timestep = signal_timestep(model, config.nemo_steps, config.nemo_timestep)
    delta = noise_differences(model, prompts, seeds, timestep, config.batch_size)
    kernel = ssim_kernel_size(min(delta.shape[-2:]), config.betas, config.kernel_size)
    pairwise, pairs = pairwise_ms_ssim(normalize_maps(delta), kernel, config.betas)
    return NemoDetection(pairwise, per_sample_max(pairwise, pairs, config.nemo_samples), kernel)

