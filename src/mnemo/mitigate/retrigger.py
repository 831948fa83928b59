"""Re-trigger test ("Finding Dori", arXiv 2507.16880): is memorization removed or only hidden?

With the memorization neurons blocked, optimise a free prompt embedding toward the memorized
image with the plain diffusion loss (fresh noise and timestep each step). If a few dozen steps
bring replication back, blocking hid the memory rather than erasing it. The same optimisation
toward a non-memorized training image is the control: it should need far more steps.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
import torch
import torch.nn.functional as F

from mnemo.diffusion.model import DiffusionModel
from mnemo.diffusion.sample import denoise, initial_noise, sample_seed
from mnemo.nemo.blocking import ValueLayer, block_neurons

# One row per (memorized prompt, arm): what run_retrigger returns, as written to results/retrigger/.
RETRIGGER_SCHEMA = pa.schema([
    ("prompt_id", pa.string()), ("arm", pa.string()), ("target_prompt_id", pa.string()),
    ("blocked_neurons", pa.int32()), ("similarity_before", pa.float64()), ("similarity_after", pa.float64()),
    ("rate_above_before", pa.float64()), ("rate_above_after", pa.float64()), ("replicated_after", pa.bool_()),
    ("threshold", pa.float64()), ("optimisation_steps", pa.int32()), ("final_loss", pa.float64()),
    ("seconds", pa.float64()),
])


def retrigger_table(rows: Sequence[dict]) -> pa.Table:
    """run_retrigger's rows as a table of RETRIGGER_SCHEMA (typed also when there are none)."""
    return pa.Table.from_pylist(list(rows), schema=RETRIGGER_SCHEMA)


@dataclass
class RetriggerConfig:
    steps: int = 50
    learning_rate: float = 0.1
    batch_size: int = 8
    samples: int = 8
    sampling_steps: int = 25
    guidance: float = 1.0
    seed: int = 0


def optimize_embedding(model: DiffusionModel, layers: Sequence[ValueLayer], neurons: Sequence[int], prompt: str,
                       target: torch.Tensor, config: RetriggerConfig) -> tuple[torch.Tensor, list[float]]:
    """Adam on the conditional embedding, diffusion loss on `target` (model space, (C, H, W))."""
    generator = torch.Generator().manual_seed(config.seed)
    with torch.no_grad():
        embedding = model.encode_prompts([prompt]).float()
    embedding.requires_grad_(True)
    optimizer = torch.optim.Adam([embedding], lr=config.learning_rate)
    x0 = target[None].to(model.device, model.dtype).expand(config.batch_size, -1, -1, -1)
    steps_total = model.scheduler.config.num_train_timesteps
    losses = []
    with block_neurons(layers, neurons):
        for _ in range(config.steps):
            noise = torch.randn(x0.shape, generator=generator).to(model.device, model.dtype)
            t = torch.randint(0, steps_total, (config.batch_size,), generator=generator).to(model.device)
            noisy = model.scheduler.add_noise(x0, noise, t)
            cond = embedding.to(model.dtype).expand(config.batch_size, -1, -1)
            prediction = model.unet(noisy, t, encoder_hidden_states=cond).sample
            loss = F.mse_loss(prediction.float(), noise.float())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    return embedding.detach().to(model.dtype), losses


@torch.no_grad()
def sample_with(model: DiffusionModel, layers: Sequence[ValueLayer], neurons: Sequence[int],
                embedding: torch.Tensor, key: str, config: RetriggerConfig) -> torch.Tensor:
    """Decoded samples (uint8) from an embedding with the neurons blocked."""
    seeds = [sample_seed(key, i, config.seed) for i in range(config.samples)]
    latents = initial_noise(seeds, model.sample_shape, model.device, model.dtype)
    cond = embedding.expand(config.samples, -1, -1)
    uncond = model.encode_prompts([""]).expand(config.samples, -1, -1) if config.guidance != 1.0 else None
    with block_neurons(layers, neurons):
        x = denoise(model, latents, cond, config.guidance, config.sampling_steps, uncond)
    return model.decode(x).cpu()


def retrigger(model: DiffusionModel, layers: Sequence[ValueLayer], neurons: Sequence[int], prompt: str,
              target_image: torch.Tensor, key: str, config: RetriggerConfig) -> dict:
    """Samples before (prompt embedding) and after optimisation toward `target_image` (uint8)."""
    tick = time.perf_counter()
    target = model.encode_images(target_image[None])[0]
    with torch.no_grad():
        start = model.encode_prompts([prompt])
    before = sample_with(model, layers, neurons, start, key, config)
    embedding, losses = optimize_embedding(model, layers, neurons, prompt, target, config)
    after = sample_with(model, layers, neurons, embedding, key, config)
    return {"before": before, "after": after, "losses": losses, "seconds": time.perf_counter() - tick}


def run_retrigger(model: DiffusionModel, layers: Sequence[ValueLayer], localized: Sequence[dict], prompts,
                  images_by_id: dict[str, torch.Tensor], descriptor, threshold: float, config: RetriggerConfig,
                  max_prompts: int = 8, log=print) -> list[dict]:
    """Memorized arm (target = the prompt's own source image) and a control arm (target = the
    first training image of an ordinary prompt), both with the memorized prompt's neurons blocked."""
    from mnemo.mitigate.neurons import neurons_to_block

    rows = {r["prompt_id"]: r for r in prompts.to_pylist()}
    blocked = neurons_to_block([r for r in localized if r["success"]])
    memorized = [pid for pid in blocked if rows[pid]["source_image_ids"]][:max_prompts]
    controls = [pid for pid, r in rows.items() if r["group"] == "other" and r["train_image_ids"]]
    out = []
    for i, pid in enumerate(memorized):
        neurons = blocked[pid]
        arms = [("memorized", pid, rows[pid]["source_image_ids"][0])]
        if controls:
            control = controls[i % len(controls)]
            arms.append(("control", control, rows[control]["train_image_ids"][0]))
        for arm, target_prompt, image_id in arms:
            target = images_by_id[image_id]
            result = retrigger(model, layers, neurons, rows[target_prompt]["prompt"], target,
                               f"retrigger:{pid}:{arm}", config)
            reference = descriptor.embed(target[None])
            before = (descriptor.embed(result["before"]) @ reference.T).flatten()
            after = (descriptor.embed(result["after"]) @ reference.T).flatten()
            out.append({
                "prompt_id": pid, "arm": arm, "target_prompt_id": target_prompt, "blocked_neurons": len(neurons),
                "similarity_before": float(before.median()), "similarity_after": float(after.median()),
                "rate_above_before": float((before > threshold).float().mean()),
                "rate_above_after": float((after > threshold).float().mean()),
                "replicated_after": bool(after.median() > threshold), "threshold": threshold,
                "optimisation_steps": config.steps, "final_loss": result["losses"][-1],
                "seconds": result["seconds"],
            })
            log(f"{pid} {arm}: similarity {before.median():.3f} -> {after.median():.3f} (threshold {threshold:.3f})")
    return out
