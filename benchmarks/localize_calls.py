"""NeMo search cost per prompt: batched candidate masks vs one candidate set per UNet call.

Why: the official NeMo code scores each candidate neuron set with its own UNet call; evaluating
many sets in one batched call with per-sample masks makes the same decisions with far fewer
calls. On a tiny random Stable-Diffusion-shaped model nothing is memorized, so the threshold is
set just under each prompt's unblocked score (the search then has to find neurons that remove
the signal), which exercises the full initial selection and refinement.

    python benchmarks/localize_calls.py                    # tiny SD model on CPU
    python benchmarks/localize_calls.py --pipeline /path/to/stable-diffusion-v1-4 --device cuda
    python benchmarks/localize_calls.py --demo results --batch-size 256   # the demo's cfg model

With --demo the trained demo model's planted prompts are searched as the workflow does: the
detection stage's tau, the demo config's layers and search signal, reference prompts from the
prompt table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mnemo.diffusion.model import DiffusionModel
from mnemo.nemo.blocking import value_layers
from mnemo.nemo.localize import LocalizeConfig, Localizer, search_threshold
from mnemo.nemo.selection import reference_statistics

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
    parser.add_argument("--batch-size", type=int, default=256, help="samples per UNet call, batched mode")
    parser.add_argument("--demo", help="results folder of a finished demo run: search its cfg model")
    parser.add_argument("--variant", default="cfg")
    parser.add_argument("--max-prompts", type=int, default=None, help="--demo: search only the first N planted")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.demo:
        demo(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = args.pipeline
        if path is None:
            from tests.tiny_sd import build_pipeline

            path = build_pipeline(Path(tmp) / "sd")
        dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
        model = DiffusionModel.from_pretrained(path, device=args.device, dtype=dtype)
    layers = value_layers(model.unet)
    stats = reference_statistics(model, layers, REFERENCE)
    base = LocalizeConfig(samples=args.samples, steps=args.steps, theta=2.0, batch_size=args.batch_size)
    searches = []
    for i, prompt in enumerate(PROMPTS):
        probe = Localizer(model, layers, stats, -1.0, base).localize(f"p{i}", prompt)
        searches.append((f"p{i}", prompt, probe.unblocked_score - 0.02, None))
    compare(model, layers, stats, base, searches, args, REFERENCE)


def demo(args) -> None:
    """The workflow's search on a trained demo model: its planted prompts, its thresholds."""
    import json

    import pyarrow.parquet as pq
    import yaml

    root = Path(args.demo)
    settings = yaml.safe_load((Path(__file__).resolve().parents[1] / "config.yaml").read_text())
    config = settings["localize"]
    model = DiffusionModel.from_pretrained(root / "models" / args.variant / "pipeline", device=args.device)
    prompts = pq.read_table(root / "prompts" / "prompts.parquet").to_pylist()
    tau = json.loads((root / "detect" / args.variant / "threshold.json").read_text())["tau"]
    layers = value_layers(model.unet, config["blocks"])
    reference = [r for r in prompts if r["reference"]]
    stats = reference_statistics(model, layers, [r["prompt"] for r in reference])
    base = LocalizeConfig(blocks=config["blocks"], signal=config["signal"], signal_step=config["signal_step"],
                          score=config["score"], samples=args.samples, steps=settings["detect"]["steps"],
                          batch_size=args.batch_size)
    score_tau = search_threshold(model, layers, stats, tau, base, reference)
    print(f"{args.variant}: {base.score} of {base.signal} at step {base.signal_step}, blocks {list(base.blocks)}, "
          f"tau {tau:.3f}, search tau {'per prompt' if score_tau is None else f'{score_tau:.3f}'}")
    searches = [(r["prompt_id"], r["prompt"], tau, score_tau) for r in prompts if r["group"] == "planted"]
    searches = searches[:args.max_prompts]
    compare(model, layers, stats, base, searches, args, [r["prompt"] for r in reference])


def compare(model, layers, stats, base, searches, args, reference) -> None:
    rows = {"batched": [], "sequential": []}
    for prompt_id, prompt, tau, score_tau in searches:
        found = {}
        for mode in rows:
            config = LocalizeConfig(**{**base.__dict__, "mode": mode})
            result = Localizer(model, layers, stats, tau, config, score_tau, reference).localize(prompt_id, prompt)
            rows[mode].append(result)
            found[mode] = result.refined_neurons
        agree = "same neurons" if found["batched"] == found["sequential"] else "DIFFERENT neurons"
        print(f"{prompt_id}: batched {rows['batched'][-1].unet_calls:4d} calls {rows['batched'][-1].seconds:6.2f} s | "
              f"one-by-one {rows['sequential'][-1].unet_calls:4d} calls {rows['sequential'][-1].seconds:6.2f} s | "
              f"{len(found['batched'])} neurons, {agree}", flush=True)
    neurons = sum(layer.width for layer in layers)
    print(f"model: {len(layers)} value layers, {neurons} neurons, {args.samples} samples per prompt, "
          f"{args.batch_size} samples per batched call, {args.device}")
    for mode, results in rows.items():
        print(f"{mode:>10}: median {statistics.median(r.unet_calls for r in results):.0f} UNet calls, "
              f"median {statistics.median(r.seconds for r in results):.2f} s per prompt")
    ratio = sum(r.unet_calls for r in rows["batched"]) / sum(r.unet_calls for r in rows["sequential"])
    print(f"batched / one-by-one UNet calls: {ratio:.2f}")


if __name__ == "__main__":
    main()
