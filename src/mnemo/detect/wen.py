"""Wen et al.'s detector: the text-conditional noise magnitude
|| eps(x_t, prompt) - eps(x_t, empty) || along the sampling path, and per-token significance.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mnemo.detect.config import DetectConfig
from mnemo.detect.names import wen_detector
from mnemo.diffusion.model import DiffusionModel
from mnemo.diffusion.sample import (
    batch_slices,
    ddim_scheduler,
    denoise,
    initial_noise,
    sample_seed,
    seeds_per_prompt,
)


@torch.no_grad()
def wen_magnitudes(model: DiffusionModel, prompt_ids: Sequence[str], prompts: Sequence[str],
                   config: DetectConfig, progress: bool = True) -> torch.Tensor:
    """(prompts, generations, steps) text-conditional noise magnitudes along the sampling path."""
    from tqdm import tqdm

    n = config.generations
    seeds = [s for row in seeds_per_prompt(prompt_ids, n, config.seed) for s in row]
    texts = [p for p in prompts for _ in range(n)]
    empty = model.encode_prompts([""])
    out = torch.zeros(len(seeds), config.steps)
    bar = tqdm(total=len(seeds), desc="wen magnitude", disable=not progress, mininterval=5)
    for part in batch_slices(len(seeds), config.batch_size):
        latents = initial_noise(seeds[part], model.sample_shape, model.device, model.dtype)
        cond = model.encode_prompts(texts[part])
        uncond = empty.expand(len(cond), -1, -1)

        def record(i, _t, _x, eps_uncond, eps_cond, part=part):
            out[part, i] = (eps_cond - eps_uncond).float().flatten(1).norm(dim=1).cpu()

        denoise(model, latents, cond, config.guidance, config.steps, uncond, callback=record)
        bar.update(part.stop - part.start)
    bar.close()
    return out.view(len(prompt_ids), n, config.steps)


def summarize_wen(magnitudes: torch.Tensor, ns: Sequence[int]) -> dict[str, torch.Tensor]:
    """Per prompt: first-step and all-step means over the first n generations, for each n."""
    columns = {}
    for n in ns:
        columns[wen_detector(n, "first")] = magnitudes[:, :n, 0].mean(dim=1)
        columns[wen_detector(n, "all")] = magnitudes[:, :n, :].mean(dim=(1, 2))
    return columns


def token_significance(model: DiffusionModel, prompt_ids: Sequence[str], prompts: Sequence[str],
                       config: DetectConfig) -> list[list[tuple[str, float]]]:
    """Per prompt, (token, ||d magnitude / d token embedding||) at the first step over n generations."""
    embedding = model.text_encoder.get_input_embeddings()
    captured: list[torch.Tensor] = []

    def keep_grad(_module, _inputs, output):
        output = output.detach().requires_grad_(True)
        captured.append(output)
        return output

    t1 = ddim_scheduler(model, config.steps).timesteps[0]
    n = config.generations
    empty = model.encode_prompts([""]).detach()
    results = []
    for pid, text in zip(prompt_ids, prompts, strict=True):
        seeds = [sample_seed(pid, i, config.seed) for i in range(n)]
        latents = initial_noise(seeds, model.sample_shape, model.device, model.dtype)
        handle = embedding.register_forward_hook(keep_grad)
        try:
            captured.clear()
            cond = model.encode_prompts([text])
        finally:
            handle.remove()
        with torch.enable_grad():
            eps_cond = model.unet(latents, t1, encoder_hidden_states=cond.expand(n, -1, -1)).sample
            with torch.no_grad():
                eps_uncond = model.unet(latents, t1, encoder_hidden_states=empty.expand(n, -1, -1)).sample
            magnitude = (eps_cond - eps_uncond).float().flatten(1).norm(dim=1).mean()
            (grad,) = torch.autograd.grad(magnitude, captured[0])
        ids = model.token_ids([text])[0].tolist()
        tokens = model.tokenizer.convert_ids_to_tokens(ids)
        norms = grad[0].float().norm(dim=-1).tolist()
        special = {model.tokenizer.pad_token_id}
        results.append([(tok, float(v)) for tok, v, i in zip(tokens, norms, ids, strict=True) if i not in special])
    return results

