"""NeMo's initial selection: value neurons whose activation on the prompt is out of distribution.

A neuron is selected when its mean |value activation| on the prompt lies more than theta
standard deviations from its mean over the reference (non-memorized) prompts, plus the top-k
neurons of each layer by raw activation. Activations need no UNet pass: the value layers act on
the prompt embedding alone. The search tries a schedule of ever wider selections, theta down and
k up, until blocking one removes the memorization signal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mnemo.diffusion.model import DiffusionModel
from mnemo.nemo.blocking import ValueLayer, value_activations


@dataclass
class ReferenceStats:
    """Per-neuron mean and std of mean |value activation| over non-memorized prompts."""

    mean: torch.Tensor
    std: torch.Tensor
    prompts: int


def encode_prompts(model: DiffusionModel, prompts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """Prompt embeddings, `batch_size` prompts per text-encoder call, so that a run encodes its
    reference prompts once for the statistics and the search thresholds alike."""
    with torch.no_grad():
        return torch.cat([model.encode_prompts(list(prompts[begin:begin + batch_size]))
                          for begin in range(0, len(prompts), batch_size)])


def reference_statistics(model: DiffusionModel, layers: Sequence[ValueLayer], prompts: Sequence[str] | torch.Tensor,
                         batch_size: int = 256) -> ReferenceStats:
    """Statistics of the reference prompts, given as text or as their embeddings (`encode_prompts`)."""
    embeds = prompts if isinstance(prompts, torch.Tensor) else encode_prompts(model, prompts, batch_size)
    with torch.no_grad():
        rows = [value_activations(layers, embeds[begin:begin + batch_size])
                for begin in range(0, len(embeds), batch_size)]
    activations = torch.cat(rows).double()
    return ReferenceStats(activations.mean(0), activations.std(0), len(embeds))


def load_reference_stats(path: str, layers: Sequence[ValueLayer]) -> ReferenceStats:
    """Published per-layer statistics, e.g. NeMo's `statistics_additional_laion_prompts_v1_4.pt`:
    a (means, stds) pair of per-layer tensors in the searched layers' order (SD: 6 down, then mid)."""
    try:
        means, stds = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"config key 'localize.reference_stats': {path} is not a (means, stds) pair of "
                         f"per-layer tensors ({error})") from None
    widths = [layer.width for layer in layers]
    given = [int(m.numel()) for m in means]
    if given != widths or [int(s.numel()) for s in stds] != widths:
        raise ValueError(f"config key 'localize.reference_stats': {path} holds statistics for layers of widths "
                         f"{given}; the searched layers ({len(layers)}) have widths {widths}")
    return ReferenceStats(torch.cat([m.flatten() for m in means]).double(),
                          torch.cat([s.flatten() for s in stds]).double(), 0)


def initial_candidates(stats: ReferenceStats, layers: Sequence[ValueLayer], activation: torch.Tensor,
                       theta: float, top_k: int) -> list[list[int]]:
    """Per layer, the OOD neurons (|a - mu| / sigma > theta, ascending) followed by the top-k by raw
    activation (descending), as global indices. A neuron can appear twice; the order and the
    duplicates are what NeMo's neuron-by-neuron pruning walks through."""
    z = (activation - stats.mean).abs() / stats.std.clamp_min(1e-12)
    lists = []
    for layer in layers:
        span = slice(layer.offset, layer.offset + layer.width)
        selected = (torch.nonzero(z[span] > theta).flatten() + layer.offset).tolist()
        if top_k > 0:
            selected += (torch.topk(activation[span], min(top_k, layer.width)).indices + layer.offset).tolist()
        lists.append(selected)
    return lists


def as_mask(lists: Sequence[Sequence[int]], total: int) -> torch.Tensor:
    """Per-layer index lists -> the boolean mask of the neurons they block."""
    mask = torch.zeros(total, dtype=torch.bool)
    for selected in lists:
        mask[list(selected)] = True
    return mask


def selection_schedule(theta: float, theta_step: float, theta_min: float, top_k: int,
                       k_max: int) -> list[tuple[float, int]]:
    """(theta, k) pairs NeMo tries in order: after each failed selection theta falls by a step
    (while above its floor) and k rises by one; the schedule ends as soon as theta reaches the
    floor or k reaches k_max, so that value itself is never tried (official: 5 -> 1.25, k 0 -> 15)."""
    schedule = []
    k = top_k
    while True:
        schedule.append((theta, k))
        if theta > theta_min:
            theta -= theta_step
        k += 1
        if theta <= theta_min + 1e-9 or k >= k_max:
            return schedule
