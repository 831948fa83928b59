"""Can the copy descriptor see a copy through a latent model's VAE? Encode and decode training images.

Why: a latent model's samples are VAE decodes. If decoding alone took an exact training image below
the copy threshold, a latent model's 0% copies would say nothing about memorization. This embeds
training images and their VAE round trips (posterior mean) with the run's copy descriptor and prints
their similarity against the calibrated threshold.

    python benchmarks/vae_round_trip.py results-study/latent+xray --vae study_vae
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from mnemo.copydetect.descriptors import build_descriptor
from mnemo.data.dataset import cache_images, read_cache
from mnemo.diffusion.vae import _to_vae, load_vae


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="results folder of a finished latent run")
    parser.add_argument("--vae", required=True, help="name of the VAE under <results>/vaes")
    parser.add_argument("--images", type=int, default=256, help="training images round-tripped")
    args = parser.parse_args()
    torch.set_num_threads(2)
    images = cache_images(read_cache(args.results / "cache" / "train"))[: args.images]
    vae = load_vae(args.results / "vaes" / args.vae / "model")
    with torch.no_grad():
        x = _to_vae(images, vae)
        decoded = vae.decode(vae.encode(x).latent_dist.mean).sample
        if decoded.shape[1] != images.shape[1]:
            decoded = decoded.mean(dim=1, keepdim=True)
        round_trip = ((decoded.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        descriptor = build_descriptor("copydetect", model_dir=args.results / "descriptors" / "copydetect" / "model")
        a = torch.nn.functional.normalize(descriptor.embed(images), dim=1)
        b = torch.nn.functional.normalize(descriptor.embed(round_trip), dim=1)
    similarity = (a * b).sum(dim=1)
    threshold = json.loads((args.results / "descriptors" / "copydetect" / "calibration.json").read_text())["threshold"]
    mse = ((decoded - x[:, : decoded.shape[1]]) ** 2).mean().item()
    print(f"{len(images)} training images, VAE round-trip MSE {mse:.4f} (pixels in [-1, 1])")
    print(f"copy similarity to the original: median {similarity.median().item():.4f}, "
          f"min {similarity.min().item():.4f}; above the threshold {threshold:.4f}: "
          f"{(similarity > threshold).float().mean().item():.1%}")


if __name__ == "__main__":
    main()
