"""What one UNet batch row costs at each batch size: the floor under any batched NeMo search on CPU.

Why: lockstep and one-by-one search score the same candidate sets on the same samples, so they run
the same batch rows; lockstep can only be faster per row, by running them in bigger batches. This
times inference forward calls of the config's UNet (random weights: the cost does not depend on
them) at several batch sizes, in alternating rounds, and prints the per-row cost and the best
wall-time ratio that batching alone can give the config's search: one-by-one runs a test on `k`
samples (`localize.samples`), lockstep on `prompts x k`, each with `localize.signal_step` DDIM
steps and the signal's call (both guidance halves for `guidance_direction`).

    python benchmarks/unet_row_cost.py                               # the demo (config.yaml)
    python benchmarks/unet_row_cost.py --config config/study/unet_sd_shaped.yaml --threads 2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from mnemo.cli import check_config
from mnemo.diffusion.model import DiffusionModel, ModelConfig
from mnemo.workflow import configure_torch

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["a", "b", "c"]


def row_cost(model: DiffusionModel, rows: int, calls: int) -> float:
    """Seconds per batch row of `calls` forward calls with `rows` rows (after one warm-up call)."""
    x = torch.randn(rows, *model.sample_shape)
    cond = model.encode_prompts(PROMPTS[:1]).expand(rows, -1, -1)
    with torch.inference_mode():
        model.unet(x, 500, encoder_hidden_states=cond)
        began = time.perf_counter()
        for _ in range(calls):
            model.unet(x, 500, encoder_hidden_states=cond)
    return (time.perf_counter() - began) / calls / rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", nargs="*", default=[], help="overlays over config.yaml")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, nargs="+", default=[10, 20, 40, 60, 80, 120, 160, 240])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompts", type=int, nargs="+", default=[2, 4, 6, 8], help="prompts searched in lockstep")
    args = parser.parse_args()
    configure_torch(args.threads, torch.device("cpu"))
    config, _ = check_config([ROOT / f for f in args.config], ROOT)
    model_config = ModelConfig.from_dict(config["model"])
    model_config.unet.resolution = config["dataset"]["resolution"]
    model = DiffusionModel.from_config(model_config, PROMPTS).eval()
    costs: dict[int, list[float]] = {rows: [] for rows in args.rows}
    for _ in range(args.rounds):
        for rows in args.rows:
            costs[rows].append(row_cost(model, rows, max(1, 240 // rows)))
    median = {rows: sorted(c)[len(c) // 2] for rows, c in costs.items()}
    print(f"UNet of {', '.join(args.config) or 'config.yaml'}: {sum(p.numel() for p in model.unet.parameters()):,} "
          f"parameters, {model.sample_shape} samples, {args.threads} threads")
    print("\n| rows per call | ms per row (median) | per row / at the fewest rows |")
    print("|---|---|---|")
    for rows in args.rows:
        print(f"| {rows} | {median[rows] * 1e3:.2f} | {median[rows] / median[args.rows[0]]:.2f} |")

    search = config["localize"]
    k, steps = search["samples"], search["signal_step"]
    halves = 2 if search["signal"] == "guidance_direction" else 1

    def per_row(rows: int) -> float:   # the measured size nearest below, else the smallest
        return median[max([r for r in args.rows if r <= rows], default=args.rows[0])]

    def test_seconds(prompts: int) -> float:
        rows = prompts * k
        return steps * rows * per_row(rows) + halves * rows * per_row(halves * rows)

    print(f"\nsearch: {k} samples per test, {steps} DDIM steps before the signal, {halves} row(s) per sample "
          "in the signal's call")
    print("| prompts in lockstep | best lockstep / one-by-one wall (batching alone) |")
    print("|---|---|")
    for prompts in args.prompts:
        print(f"| {prompts} | {test_seconds(prompts) / (prompts * test_seconds(1)):.2f} |")


if __name__ == "__main__":
    main()
