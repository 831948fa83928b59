"""Can the copy descriptor see a copy through a latent model's VAE? Encode and decode training images.

Why: a latent model's samples are VAE decodes. If decoding alone took an exact training image below
the copy threshold, a latent model's 0% copies would say nothing about memorization. This sends
training images through the variant's own `encode_images` and `decode` (the path its samples take
out of the latent space), embeds both with the run's copy descriptor and prints their similarity
against the calibrated threshold.

    python benchmarks/vae_round_trip.py results-study/latent+xray
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from mnemo.copydetect.descriptors import build_descriptor
from mnemo.data.dataset import cache_images, read_cache
from mnemo.diffusion.model import DiffusionModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="results folder of a finished latent run")
    parser.add_argument("--variant", default="cfg")
    parser.add_argument("--images", type=int, default=256, help="training images round-tripped")
    args = parser.parse_args()
    torch.set_num_threads(2)
    images = cache_images(read_cache(args.results / "cache" / "train"))[: args.images]
    model = DiffusionModel.from_pretrained(args.results / "models" / args.variant / "pipeline")
    if model.vae is None:
        raise SystemExit(f"{args.variant} in {args.results} is a pixel-space model: nothing to round-trip")
    descriptors = args.results / "descriptors" / "copydetect"
    descriptor = build_descriptor("copydetect", model_dir=descriptors / "model")
    with torch.no_grad():
        round_trip = model.decode(model.encode_images(images))
        a = torch.nn.functional.normalize(descriptor.embed(images), dim=1)
        b = torch.nn.functional.normalize(descriptor.embed(round_trip), dim=1)
    similarity = (a * b).sum(dim=1)
    threshold = json.loads((descriptors / "calibration.json").read_text())["threshold"]
    mse = ((round_trip.float() - images.float()) / 127.5).pow(2).mean().item()
    print(f"{len(images)} training images, round-trip MSE {mse:.4f} (pixels in [-1, 1])")
    print(f"copy similarity to the original: median {similarity.median().item():.4f}, "
          f"min {similarity.min().item():.4f}; above the threshold {threshold:.4f}: "
          f"{(similarity > threshold).float().mean().item():.1%}")


if __name__ == "__main__":
    main()
