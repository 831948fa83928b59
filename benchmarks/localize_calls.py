"""NeMo search cost per prompt: batched candidate masks vs one candidate set per UNet call.

Why: the official NeMo code scores each candidate neuron set with its own UNet call; evaluating
many sets in one batched call with per-sample masks makes the same decisions with far fewer
calls. On a tiny random Stable-Diffusion-shaped model nothing is memorized, so the threshold is
set just under each prompt's unblocked score (the search then has to find neurons that remove
the signal), which exercises the full initial selection and refinement.

    python benchmarks/localize_calls.py                    # tiny SD model on CPU
    python benchmarks/localize_calls.py --pipeline /path/to/stable-diffusion-v1-4 --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mnemo.localize import LocalizeConfig, Localizer, reference_statistics
from mnemo.mitigate import value_layers
from mnemo.model import DiffusionModel

PROMPTS = ["a painting of the great wave", "the mona lisa by leonardo", "portrait of a man in a hat",
           "living room with a grey sofa", "a cat on a mat", "mountains at sunset"]
REFERENCE = ["a red bicycle", "two dogs playing in snow", "a bowl of fruit", "city street at night",
             "a boat on a lake", "a green field", "an old clock", "a tall building"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", help="diffusers SD folder (default: a tiny random one)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.pipeline
        if path is None:
            from tests.tiny_sd import build_pipeline

            path = build_pipeline(Path(tmp) / "sd")
        dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
        model = DiffusionModel.from_pretrained(path, device=args.device, dtype=dtype)
    layers = value_layers(model.unet)
    stats = reference_statistics(model, layers, REFERENCE)
    base = LocalizeConfig(samples=args.samples, steps=args.steps, theta=2.0)
    rows = {"batched": [], "sequential": []}
    for i, prompt in enumerate(PROMPTS):
        probe = Localizer(model, layers, stats, -1.0, base).localize(f"p{i}", prompt)
        tau = probe.unblocked_score - 0.02
        found = {}
        for mode in rows:
            config = LocalizeConfig(**{**base.__dict__, "mode": mode})
            result = Localizer(model, layers, stats, tau, config).localize(f"p{i}", prompt)
            rows[mode].append(result)
            found[mode] = result.refined_neurons
        agree = "same neurons" if found["batched"] == found["sequential"] else "DIFFERENT neurons"
        print(f"p{i}: batched {rows['batched'][-1].unet_calls:4d} calls {rows['batched'][-1].seconds:6.2f} s | "
              f"one-by-one {rows['sequential'][-1].unet_calls:4d} calls {rows['sequential'][-1].seconds:6.2f} s | "
              f"{len(found['batched'])} neurons, {agree}")
    neurons = sum(layer.width for layer in layers)
    print(f"model: {len(layers)} value layers, {neurons} neurons, {args.samples} samples per prompt, {args.device}")
    for mode, results in rows.items():
        print(f"{mode:>10}: median {statistics.median(r.unet_calls for r in results):.0f} UNet calls, "
              f"median {statistics.median(r.seconds for r in results):.2f} s per prompt")
    ratio = sum(r.unet_calls for r in rows["batched"]) / sum(r.unet_calls for r in rows["sequential"])
    print(f"batched / one-by-one UNet calls: {ratio:.2f}")


if __name__ == "__main__":
    main()
