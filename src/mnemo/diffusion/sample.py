"""Seeded, batched DDIM sampling with classifier-free guidance.

Every sample's initial noise comes from its own seed, derived from (prompt id, sample index), so
any single image can be regenerated alone and a mitigated sample has an unmitigated twin drawn
from the same noise. Batches mix prompts; guidance 1 skips the unconditional pass.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from mnemo.diffusion.model import DiffusionModel

if TYPE_CHECKING:
    from mnemo.mitigate.neurons import NoMitigation as Mitigation

# Called once per denoising step: (step index, timestep, x_t, eps_unconditional or None, eps_conditional)
StepCallback = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor], None]


def sample_seed(prompt_id: str, index: int, base_seed: int = 0) -> int:
    """Seed of one sample, a pure function of (base seed, prompt id, sample index)."""
    digest = hashlib.blake2b(f"{base_seed}:{prompt_id}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def seeds_per_prompt(prompt_ids: Sequence[str], n: int, base_seed: int) -> list[list[int]]:
    """The n sample seeds of each prompt: the same ones generation uses."""
    return [[sample_seed(pid, i, base_seed) for i in range(n)] for pid in prompt_ids]


def batch_slices(total: int, size: int) -> Iterator[slice]:
    for begin in range(0, total, size):
        yield slice(begin, min(total, begin + size))


def initial_noise(seeds: Sequence[int], shape: tuple[int, ...], device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """x_T for each seed, drawn on the CPU so it is the same on every device."""
    noise = [torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(noise).to(device=device, dtype=dtype)


def ddim_scheduler(model: DiffusionModel, steps: int):
    """DDIM on the model's noise schedule. Latent models never clip the predicted x_0 to [-1, 1]
    (`StableDiffusionPipeline` turns `clip_sample` off the same way); pixel models keep their setting."""
    from diffusers import DDIMScheduler

    overrides = {"clip_sample": False} if model.vae is not None else {}
    scheduler = DDIMScheduler.from_config(model.scheduler.config, **overrides)
    scheduler.set_timesteps(steps, device=model.device)
    return scheduler


def predict_noise(model: DiffusionModel, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                  uncond: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(eps_uncond, eps_cond) in one UNet call when both are needed."""
    if uncond is None:
        return None, model.unet(x, t, encoder_hidden_states=cond).sample
    both = model.unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample
    eps_uncond, eps_cond = both.chunk(2)
    return eps_uncond, eps_cond


@torch.no_grad()
def denoise(
    model: DiffusionModel,
    latents: torch.Tensor,
    cond: torch.Tensor,
    guidance: float,
    steps: int,
    uncond: torch.Tensor | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """DDIM (eta 0) from x_T = `latents`; guidance 1 runs the conditional branch only."""
    scheduler = ddim_scheduler(model, steps)
    use_cfg = guidance != 1.0 or (callback is not None and uncond is not None)
    if use_cfg and uncond is None:
        raise ValueError("guidance != 1 needs unconditional embeddings")
    x = latents * scheduler.init_noise_sigma
    for i, t in enumerate(scheduler.timesteps):
        x_in = scheduler.scale_model_input(x, t)
        eps_uncond, eps_cond = predict_noise(model, x_in, t, cond, uncond if use_cfg else None)
        if callback is not None:
            callback(i, t, x, eps_uncond, eps_cond)
        eps = eps_cond if eps_uncond is None else eps_uncond + guidance * (eps_cond - eps_uncond)
        x = scheduler.step(eps, t, x, eta=0.0).prev_sample
    return x


@dataclass
class SampleRequest:
    """One image to draw."""

    prompt_id: str
    prompt: str
    index: int
    seed: int
    guidance: float


def plan_requests(prompt_ids: Sequence[str], prompts: Sequence[str], n_per_prompt: int,
                  guidance_scales: Sequence[float], base_seed: int = 0) -> list[SampleRequest]:
    """All (prompt, index, guidance) to draw; the seed does not depend on guidance (twins)."""
    return [
        SampleRequest(pid, text, i, sample_seed(pid, i, base_seed), float(g))
        for g in guidance_scales
        for pid, text in zip(prompt_ids, prompts, strict=True)
        for i in range(n_per_prompt)
    ]


def generate(
    model: DiffusionModel,
    requests: Sequence[SampleRequest],
    steps: int,
    batch_size: int = 64,
    mitigation: Mitigation | None = None,
    progress: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, list[float]]:
    """Draw every request, batched across prompts; returns uint8 images and seconds per batch."""
    from tqdm import tqdm

    from mnemo.mitigate.neurons import NoMitigation

    mitigation = mitigation or NoMitigation()
    images = []
    seconds = []
    empty = model.encode_prompts([""])
    bar = tqdm(total=len(requests), desc="generate", unit="img", disable=not progress, mininterval=5)
    # group by guidance so each batch shares one code path (conditional-only or CFG)
    order = sorted(range(len(requests)), key=lambda i: requests[i].guidance)
    by_position = [None] * len(requests)
    for begin in range(0, len(order), batch_size):
        chunk = [requests[i] for i in order[begin : begin + batch_size]]
        groups = {}
        for position, request in zip(order[begin : begin + batch_size], chunk, strict=True):
            groups.setdefault(request.guidance, []).append((position, request))
        for guidance, members in groups.items():
            tick = time.perf_counter()
            batch = [r for _, r in members]
            latents = initial_noise([r.seed for r in batch], model.sample_shape, model.device, model.dtype)
            with torch.no_grad():
                cond = mitigation.prompt_embeddings(model, batch)
            uncond = empty.expand(len(batch), -1, -1) if guidance != 1.0 else None
            with mitigation.active(batch):
                x = denoise(model, latents, cond, guidance, steps, uncond)
                decoded = model.decode(x).cpu()
            for (position, _), image in zip(members, decoded, strict=True):
                by_position[position] = image
            seconds.append(time.perf_counter() - tick)
            bar.update(len(batch))
            if on_batch is not None:
                on_batch(len(seconds))
    bar.close()
    images = torch.stack(by_position) if by_position else torch.empty(0)
    return images, seconds


def samples_schema():
    import pyarrow as pa

    return pa.schema([
        pa.field("sample_id", pa.string()),
        pa.field("variant", pa.string()),
        pa.field("mitigation", pa.string()),
        pa.field("prompt_id", pa.string()),
        pa.field("prompt", pa.string()),
        pa.field("sample_index", pa.int32()),
        pa.field("seed", pa.int64()),
        pa.field("guidance", pa.float32()),
        pa.field("steps", pa.int32()),
        pa.field("image", pa.binary()),
    ])


def samples_table(requests: Sequence[SampleRequest], images: torch.Tensor, variant: str, mitigation: str,
                  steps: int):
    """One row per drawn image; `sample_id` names the twin across mitigations (same seed)."""
    import pyarrow as pa

    from mnemo.data.images import encode_pngs

    pngs = encode_pngs(images)
    rows = [
        {
            "sample_id": f"{r.prompt_id}/g{r.guidance:g}/{r.index}",
            "variant": variant,
            "mitigation": mitigation,
            "prompt_id": r.prompt_id,
            "prompt": r.prompt,
            "sample_index": r.index,
            "seed": r.seed,
            "guidance": r.guidance,
            "steps": steps,
            "image": png,
        }
        for r, png in zip(requests, pngs, strict=True)
    ]
    return pa.Table.from_pylist(rows, schema=samples_schema())
