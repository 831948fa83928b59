"""Can NeMo's signal register removal on this model? Block every value neuron and compare.

Why: NeMo's search accepts a neuron set when, with it blocked, the noise differences of a prompt's
seeds are no longer alike (pairwise MS-SSIM below tau) and no longer like the unblocked ones. If
even blocking *every* searched value neuron leaves the blocked noise difference like the unblocked
one, no subset can pass and the search falls back to its relaxed threshold: the signal cannot see
removal on this model. This prints, per prompt group, at the paper's timestep (index 1 of the
50-step schedule, on the initial noise) and at index 0 for comparison:

- memorization: each prompt's highest pairwise MS-SSIM among its seeds' noise differences (what
  NeMo's detection thresholds with tau);
- blocked vs unblocked: MS-SSIM of each seed's noise difference with every value neuron of the
  searched blocks blocked, against the unblocked one (what the search's score compares);
- blocked memorization: the pairwise score again, with everything blocked.

With `--xray`, the same question for the X-ray search signal instead (the guidance direction at
DDIM step 3, projection score, tau per prompt from the reference prompts, as `config.yaml`
searches): how much of each prompt's guidance direction is left with every searched neuron
blocked, against that prompt's tau.

    python benchmarks/nemo_signal_removal.py --demo results             # the demo's cfg model
    python benchmarks/nemo_signal_removal.py --demo results --blocks down mid up
    python benchmarks/nemo_signal_removal.py --demo results --xray --groups planted --blocks down mid
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mnemo.diffusion.model import DiffusionModel  # noqa: E402
from mnemo.diffusion.sample import initial_noise, sample_seed  # noqa: E402
from mnemo.nemo.blocking import NeuronBlocker, neuron_count, value_layers  # noqa: E402
from mnemo.nemo.localize import LocalizeConfig  # noqa: E402
from mnemo.nemo.signal import (  # noqa: E402
    SearchSignal,
    ms_ssim,
    normalize_maps,
    projection,
    signal_timestep,
    ssim_kernel_size,
)

BETAS = (0.33, 0.33, 0.33)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", required=True, help="results folder of a finished demo run")
    parser.add_argument("--variant", default="cfg")
    parser.add_argument("--blocks", nargs="+", default=["down", "mid"], help="value layers blocked (paper: down mid)")
    parser.add_argument("--samples", type=int, default=10, help="seeds per prompt (paper: 10)")
    parser.add_argument("--seed", type=int, default=1, help="base seed (localize.seed)")
    parser.add_argument("--indices", type=int, nargs="+", default=[1, 0], help="timestep indices of the 50-step schedule")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--xray", action="store_true", help="the X-ray search signal instead (see above)")
    parser.add_argument("--signal-step", type=int, default=3, help="with --xray: DDIM step of the 25-step schedule")
    parser.add_argument("--groups", nargs="+", help="only these prompt groups (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import pyarrow.parquet as pq

    root = Path(args.demo)
    model = DiffusionModel.from_pretrained(root / "models" / args.variant / "pipeline")
    every_prompt = pq.read_table(root / "prompts" / "prompts.parquet").to_pylist()
    prompts = [p for p in every_prompt if not args.groups or p["group"] in args.groups]
    if args.xray:
        xray_removal(model, prompts, [p["prompt"] for p in every_prompt if p["reference"]], args)
        return
    tau = json.loads((root / "detect" / args.variant / "threshold.json").read_text())["tau"]
    layers = value_layers(model.unet, args.blocks)
    everything = torch.ones(neuron_count(layers), dtype=torch.bool)
    kernel = ssim_kernel_size(min(model.sample_shape[1:]), BETAS)
    pairs = torch.combinations(torch.arange(args.samples), r=2)
    print(f"{args.variant}: tau {tau:.3f}; blocking all {len(everything)} value neurons of {args.blocks}; "
          f"{args.samples} seeds per prompt; MS-SSIM kernel {kernel}")
    for index in args.indices:
        t = signal_timestep(model, 50, index)
        rows: dict[str, list[tuple[float, float, float]]] = {}
        for prompt in prompts:
            seeds = [sample_seed(prompt["prompt_id"], i, args.seed) for i in range(args.samples)]
            x = initial_noise(seeds, model.sample_shape)
            cond = model.encode_prompts([prompt["prompt"]]).expand(len(x), -1, -1)
            with torch.no_grad():
                free = normalize_maps(model.unet(x, t, encoder_hidden_states=cond).sample.float() - x.float())
                with NeuronBlocker(layers, everything):
                    blocked = normalize_maps(model.unet(x, t, encoder_hidden_states=cond).sample.float() - x.float())
            memorization = ms_ssim(free[pairs[:, 0]], free[pairs[:, 1]], kernel, BETAS).max()
            blocked_memorization = ms_ssim(blocked[pairs[:, 0]], blocked[pairs[:, 1]], kernel, BETAS).max()
            against = ms_ssim(blocked, free, kernel, BETAS).max()
            rows.setdefault(prompt["group"], []).append((float(memorization), float(against),
                                                         float(blocked_memorization)))
        print(f"\ntimestep index {index} (t = {int(t)}):")
        print("| prompts | n | memorization (median) | above tau | all blocked vs unblocked (median of the "
              "max over seeds) | all blocked passes (<= tau) | blocked memorization (median) | blocked above tau |")
        print("|---|---|---|---|---|---|---|---|")
        for group, values in sorted(rows.items()):
            mem, against, blocked_mem = zip(*values, strict=True)
            print(f"| {group} | {len(values)} | {statistics.median(mem):.3f} | {sum(m > tau for m in mem)} | "
                  f"{statistics.median(against):.3f} | {sum(a <= tau for a in against)} | "
                  f"{statistics.median(blocked_mem):.3f} | {sum(b > tau for b in blocked_mem)} |")


def xray_removal(model: DiffusionModel, prompts: list[dict], reference_prompts: list[str],
                 args: argparse.Namespace) -> None:
    """Share of each prompt's guidance direction left with every searched neuron blocked, beside
    the prompt's projection tau (mean + 1 std of the reference prompts' projections onto it)."""
    config = LocalizeConfig(blocks=tuple(args.blocks), samples=args.samples, seed=args.seed,
                            signal="guidance_direction", signal_step=args.signal_step, score="projection")
    layers = value_layers(model.unet, config.blocks)
    with torch.no_grad():
        reference = model.encode_prompts(reference_prompts)
    signal = SearchSignal(model, layers, config, reference)
    print(f"{args.variant}: guidance direction at DDIM step {args.signal_step} of {config.steps}, projection "
          f"score; blocking all {neuron_count(layers)} value neurons of {args.blocks}; {args.samples} seeds "
          f"per prompt; tau per prompt from {len(reference)} reference prompts")
    rows: dict[str, list[tuple[float, float]]] = {}
    for prompt in prompts:
        seeds = [sample_seed(prompt["prompt_id"], i, args.seed) for i in range(args.samples)]
        x = initial_noise(seeds, model.sample_shape)
        with torch.no_grad():
            cond = model.encode_prompts([prompt["prompt"]])
        unblocked = signal.raw(x, cond, None)
        blocked = signal.raw(x, cond, torch.ones(len(x), neuron_count(layers), dtype=torch.bool))
        left = float(projection(blocked, unblocked).max())
        rows.setdefault(prompt["group"], []).append((left, signal.projection_threshold(x, unblocked)))
    print("| prompts | n | tau (median) | all blocked: signal left (median of the max over seeds) | "
          "all blocked passes (<= its tau) |")
    print("|---|---|---|---|---|")
    for group, values in sorted(rows.items()):
        left, taus = zip(*values, strict=True)
        print(f"| {group} | {len(values)} | {statistics.median(taus):.3f} | {statistics.median(left):.3f} | "
              f"{sum(v <= t for v, t in values)} |")


if __name__ == "__main__":
    main()
