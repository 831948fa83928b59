"""Training and sampling throughput against a bare UNet loop of the same shapes.

Why: the training loop adds data sampling, text encoding, condition dropout, the noise schedule,
AdamW, clipping and EMA around each UNet call, and generation adds seeding, the DDIM scheduler and
PNG encoding. The ratio (goal >= 0.9) says how much of the machine the library leaves on the table.

    python benchmarks/train_sample_throughput.py                 # demo model, CPU
    python benchmarks/train_sample_throughput.py --device cuda   # on a GPU
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import yaml

from mnemo.diffusion.model import DiffusionModel, ModelConfig
from mnemo.diffusion.sample import generate, plan_requests
from mnemo.diffusion.train import TrainConfig, train
from mnemo.workflow import configure_torch

PROMPTS = ["frontal PA female 60s cardiomegaly pleural effusion", "lateral male 40s no finding",
           "frontal AP male 70s edema support devices", "frontal PA female 30s pneumothorax"]


def bare_train_loop(model: DiffusionModel, batch: int, steps: int, device: torch.device) -> float:
    """UNet + text encoder forward/backward and AdamW only: the floor the training loop runs on."""
    c, h, w = model.sample_shape
    params = list(model.unet.parameters()) + list(model.text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    ids = model.token_ids(PROMPTS * (batch // len(PROMPTS) + 1))[:batch].to(device)
    x = torch.randn(batch, c, h, w, device=device)
    t = torch.randint(0, 1000, (batch,), device=device)
    model.unet.train()
    for p in params:
        p.requires_grad_(True)
    tick = 0.0
    for step in range(steps + 2):
        if step == 2:
            _sync(device)
            tick = time.perf_counter()
        out = model.unet(x, t, encoder_hidden_states=model.text_encoder(ids)[0]).sample
        loss = (out - x).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    _sync(device)
    return batch * steps / (time.perf_counter() - tick)


@torch.no_grad()
def bare_sample_loop(model: DiffusionModel, batch: int, unet_steps: int, device: torch.device) -> float:
    """Only the UNet calls of DDIM sampling (conditional and unconditional in one batch)."""
    c, h, w = model.sample_shape
    x = torch.randn(2 * batch, c, h, w, device=device)
    cond = model.encode_prompts(PROMPTS * (2 * batch // len(PROMPTS) + 1))[: 2 * batch]
    model.unet(x, 500, encoder_hidden_states=cond)
    _sync(device)
    tick = time.perf_counter()
    for i in range(unet_steps):
        model.unet(x, 999 - i, encoder_hidden_states=cond)
    _sync(device)
    return batch / ((time.perf_counter() - tick) / unet_steps) / unet_steps


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config.yaml")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20, help="training steps timed")
    parser.add_argument("--sampling-steps", type=int, default=25)
    parser.add_argument("--images", type=int, default=64, help="images generated")
    args = parser.parse_args()
    device = torch.device(args.device)
    configure_torch(args.threads, device)
    config = yaml.safe_load(Path(args.config).read_text())
    batch = config["train"]["batch_size"]
    model_config = ModelConfig.from_dict(config["model"])
    c, h, w = model_config.unet.channels, model_config.unet.resolution, model_config.unet.resolution
    images = torch.randint(0, 256, (256, c, h, w), dtype=torch.uint8)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(256)]

    model = DiffusionModel.from_config(model_config, prompts).to(device)
    bare = bare_train_loop(model, batch, args.steps, device)
    model = DiffusionModel.from_config(model_config, prompts)
    settings = dict(config["train"], steps=args.steps + 2, checkpoint_every=10**9, log_every=10**9, warmup_steps=1)
    with tempfile.TemporaryDirectory() as tmp:
        result = train(model, images, prompts, TrainConfig.from_dict(settings), tmp, device=device, progress=False,
                       log=lambda *_: None)
    seconds = sum(r["seconds"] for r in result.history[2:])
    ours = batch * args.steps / seconds
    print(f"training  : {ours:8.1f} images/s (mnemo.diffusion.train)   {bare:8.1f} images/s (bare UNet+AdamW)   "
          f"ratio {ours / bare:.2f}   [{device}, batch {batch}, {h}x{w}]")

    model.eval()
    requests = plan_requests([f"p{i}" for i in range(len(PROMPTS))], PROMPTS, args.images // len(PROMPTS), [3.0])
    batch_size = config["generate"]["batch_size"]
    generate(model, requests[:batch_size], 2, batch_size, progress=False)
    tick = time.perf_counter()
    generate(model, requests, args.sampling_steps, batch_size, progress=False)
    ours = len(requests) / (time.perf_counter() - tick)
    bare = bare_sample_loop(model, min(batch_size, len(requests)), args.sampling_steps, device)
    print(f"sampling  : {ours:8.1f} images/s (mnemo.diffusion.sample)  {bare:8.1f} images/s (bare UNet calls)     "
          f"ratio {ours / bare:.2f}   [{args.sampling_steps} DDIM steps, guidance 3]")


if __name__ == "__main__":
    main()
