"""Training speed and peak memory at real resolutions, against a bare diffusers loop of the same shapes.

Why: training at 128-512 px is bounded by memory. The table says what the library's loop (data
sampling, condition dropout, noise schedule, AdamW, clipping, EMA, checkpoints) costs over a bare
UNet + text encoder forward/backward + AdamW, and what gradient checkpointing and bf16 autocast
(CUDA only) buy. Each row runs in its own process, so that peak memory is that row's alone: peak
RSS on the CPU, torch.cuda.max_memory_allocated on a GPU, and how much of it training added
over the memory held before the first step.

    python benchmarks/train_memory.py                              # tiny models, CPU, 64/128/256 px
    python benchmarks/train_memory.py --device cuda --sd14 --batch 8   # SD v1.4-shaped UNet, 256 px latents
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import torch

from mnemo.diffusion.model import DiffusionModel, ModelConfig
from mnemo.diffusion.train import TrainConfig, train

PROMPTS = ["frontal PA female 60s cardiomegaly pleural effusion", "lateral male 40s no finding",
           "frontal AP male 70s edema support devices", "frontal PA female 30s pneumothorax"]
LOOPS = ("bare", "mnemo", "mnemo_checkpointing", "mnemo_bf16_checkpointing")


def tiny_config(resolution: int) -> dict:
    """A tiny 1-channel UNet, attention only at its lowest level (16x16), whatever the resolution."""
    levels = {64: 2, 128: 3, 256: 4}[resolution]
    widths = [16, 32, 32, 32, 32][: levels + 1]
    return {"unet": {"resolution": resolution, "channels": 1, "block_out_channels": widths,
                     "cross_attention": [False] * levels + [True], "attention_heads": 2, "norm_num_groups": 8},
            "text_encoder": {"hidden_size": 32, "layers": 1, "heads": 2, "intermediate_size": 64, "max_length": 16}}


def sd14_config() -> dict:
    """Stable Diffusion v1.4's UNet shape on 32x32x4 latents (256 px), with a small text encoder."""
    return {"unet": {"resolution": 32, "channels": 4, "block_out_channels": [320, 640, 1280, 1280],
                     "cross_attention": [True, True, True, False], "layers_per_block": 2, "attention_heads": 8,
                     "norm_num_groups": 32},
            "text_encoder": {"hidden_size": 768, "layers": 2, "heads": 12, "intermediate_size": 3072, "max_length": 77}}


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_now_mb(device: torch.device) -> float:
    """Allocated (CUDA) or resident (CPU) memory before training: the model, data and interpreter."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


def bare_loop(model: DiffusionModel, batch: int, steps: int, device: torch.device) -> list[float]:
    """Text encoder + UNet forward/backward and AdamW, random data already on the device."""
    c, h, w = model.sample_shape
    params = list(model.unet.parameters()) + list(model.text_encoder.parameters())
    for p in params:
        p.requires_grad_(True)
    model.unet.train()
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    ids = model.token_ids((PROMPTS * batch)[:batch]).to(device)
    x, noise = torch.randn(batch, c, h, w, device=device), torch.randn(batch, c, h, w, device=device)
    t = torch.randint(0, 1000, (batch,), device=device)
    seconds = []
    for _ in range(steps):
        tick = time.perf_counter()
        embeds = model.text_encoder(ids)[0]
        loss = torch.nn.functional.mse_loss(model.unet(x, t, encoder_hidden_states=embeds).sample, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - tick)
    return seconds


def measure(loop: str, config: dict, batch: int, steps: int, device: torch.device) -> dict:
    """One row, in this process: images/s (median step after the first) and peak memory."""
    torch.manual_seed(0)
    model = DiffusionModel.from_config(ModelConfig.from_dict(config), PROMPTS).to(device)
    c, h, w = model.sample_shape
    before = memory_now_mb(device)
    if loop == "bare":
        seconds = bare_loop(model, batch, steps, device)
    else:
        images = torch.randint(0, 256, (4 * batch, c, h, w), dtype=torch.uint8)
        recipe = TrainConfig(steps=steps, batch_size=batch, warmup_steps=0, checkpoint_every=10**6,
                             log_every=steps, gradient_checkpointing="checkpointing" in loop,
                             mixed_precision="bf16" if "bf16" in loop else "no")
        with tempfile.TemporaryDirectory() as scratch:
            result = train(model, images, (PROMPTS * len(images))[: len(images)], recipe, scratch,
                           device=device, progress=False, log=lambda _: None)
        seconds = [r["seconds"] for r in result.history]
    timed = sorted(seconds[1:] or seconds)
    return {"loop": loop, "shape": f"{c}x{h}x{w}", "batch": batch,
            "images_per_s": batch / timed[len(timed) // 2], "peak_mb": peak_memory_mb(device),
            "training_mb": peak_memory_mb(device) - before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sd14", action="store_true", help="SD v1.4-shaped UNet, 256 px latents (batch 8 on GPU)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one row as JSON
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.one:
        loop, size = args.one.split(":")
        config = sd14_config() if size == "sd14" else tiny_config(int(size))
        print(json.dumps(measure(loop, config, args.batch, args.steps, device)))
        return
    loops = LOOPS if device.type == "cuda" else LOOPS[:3]  # autocast is CUDA-only in the library
    sizes = ["sd14"] if args.sd14 else [str(r) for r in args.resolutions]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"device {device}, batch {args.batch}, {args.steps} steps (median after the first), threads {args.threads}, "
          f"load average {load} on {os.cpu_count()} CPUs")
    print("| model | shape | loop | images/s | vs bare | peak memory MB | of which training MB |")
    print("|---|---|---|---|---|---|---|")
    for size in sizes:
        bare = None
        for loop in loops:
            command = [sys.executable, __file__, "--one", f"{loop}:{size}", "--device", args.device,
                       "--batch", str(args.batch), "--steps", str(args.steps), "--threads", str(args.threads)]
            row = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            bare = bare or row
            name = "SD v1.4 UNet" if size == "sd14" else f"tiny, {size} px"
            print(f"| {name} | {row['shape']} | {loop} | {row['images_per_s']:.2f} | "
                  f"{row['images_per_s'] / bare['images_per_s']:.2f} | {row['peak_mb']:.0f} | {row['training_mb']:.0f} |",
                  flush=True)


if __name__ == "__main__":
    main()
