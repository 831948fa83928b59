"""Wen et al.'s inference-time mitigation: optimise the conditional prompt embedding so that
the first-step text-conditional magnitude falls, then sample with it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mnemo.diffusion.model import DiffusionModel


@dataclass
class WenEmbeddingConfig:
    learning_rate: float = 0.05
    iterations: int = 10
    target_loss: float | str = "auto"
    prompts_per_batch: int = 8
    only_flagged: bool = False


def optimize_prompt_embeddings(model: DiffusionModel, prompts: Sequence[str], seeds: Sequence[Sequence[int]],
                               steps: int, config: WenEmbeddingConfig, target: float) -> list[dict[str, Any]]:
    """Wen et al.: minimise ||eps(x_T, e) - eps(x_T, empty)|| over each prompt's latents w.r.t. e.

    Prompts are optimised together (one UNet call per iteration for many prompts); each stops on
    its own once its loss (one norm over its n latents) reaches `target`, and stays frozen after.
    The start token's embedding is never changed.
    """
    from mnemo.diffusion.sample import ddim_scheduler, initial_noise

    t1 = ddim_scheduler(model, steps).timesteps[0]
    n = len(seeds[0])
    results: list[dict[str, Any]] = []
    for begin in range(0, len(prompts), config.prompts_per_batch):
        tick = time.perf_counter()
        group = list(prompts[begin:begin + config.prompts_per_batch])
        latents = initial_noise([s for row in seeds[begin:begin + len(group)] for s in row], model.sample_shape,
                                model.device, model.dtype)
        with torch.no_grad():
            start = model.encode_prompts(group)
            empty = model.encode_prompts([""]).expand(len(latents), -1, -1)
            eps_empty = model.unet(latents, t1, encoder_hidden_states=empty).sample.float()
        embeds = start.clone().float().requires_grad_(True)
        optimizer = torch.optim.AdamW([embeds], lr=config.learning_rate)
        active = torch.ones(len(group), dtype=torch.bool)
        iterations = [0] * len(group)
        first_loss: list[float] = []
        last_loss = torch.zeros(len(group))
        for step in range(config.iterations + 1):  # `iterations` optimiser steps, each loss measured after it
            eps = model.unet(latents, t1, encoder_hidden_states=embeds.to(model.dtype).repeat_interleave(n, 0)).sample
            losses = (eps.float() - eps_empty).view(len(group), -1).norm(dim=1)
            last_loss = losses.detach().cpu()
            if not first_loss:
                first_loss = last_loss.tolist()
            active &= last_loss > target
            if not active.any() or step == config.iterations:
                break
            frozen = embeds.detach().clone()
            optimizer.zero_grad()
            losses[active.to(losses.device)].sum().backward()
            embeds.grad[:, 0] = 0  # the start token stays put
            optimizer.step()
            with torch.no_grad():  # prompts that are done keep their embedding exactly
                embeds[~active.to(embeds.device)] = frozen[~active.to(embeds.device)]
                embeds[:, 0] = frozen[:, 0]  # AdamW's weight decay would move it despite the zero grad
            for i in range(len(group)):
                iterations[i] += int(active[i])
        seconds = (time.perf_counter() - tick) / len(group)
        for i in range(len(group)):
            results.append({"embedding": embeds[i].detach().to(model.dtype), "iterations": iterations[i],
                            "initial_loss": first_loss[i], "final_loss": float(last_loss[i]),
                            "target_loss": float(target), "seconds": seconds})
    return results


def reference_magnitude(scores: Sequence[dict[str, Any]], column: str | None = None) -> float:
    """The scale of `target_loss: auto`: the median (upper, for an even count) first-step
    text-conditional magnitude of the reference (non-memorized) prompts, from the detect stage's
    score rows. `column` defaults to the detector wen_reference_detector picks among those the scores
    were written with (the smallest n of detect.wen_n)."""
    from mnemo.detect.names import wen_n_of, wen_reference_detector

    if column is None:
        column = wen_reference_detector(wen_n_of(scores[0] if scores else ()))
    reference = sorted(float(r[column]) for r in scores if r["reference"])
    if not reference:
        raise ValueError(f"target_loss: auto needs reference prompts' {column} in the detection scores; none found")
    return reference[len(reference) // 2]
