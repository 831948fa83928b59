"""How far apart does a trained model's text encoder put the prompts the UNet must tell apart?

Why: a planted prompt can only be memorized if its conditioning differs from the other prompts'
and from the empty prompt that classifier-free guidance subtracts. A text encoder frozen at random
initialisation may map every label-combination prompt to nearly the same states; this measures
that, per results folder, on the encoder the run saved:

- pairwise: cosine similarity between two prompts' encoder states (all tokens, flattened),
  median over all pairs of the prompt set;
- planted nearest: each planted prompt's highest similarity to any other prompt, median;
- to empty: each prompt's similarity to the empty prompt's states, median.

    python benchmarks/prompt_separation.py results-study/demo+xray results-study/demo+xray+te_frozen
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from mnemo.diffusion.model import DiffusionModel


def separation(root: Path, variant: str) -> dict[str, float]:
    import pyarrow.parquet as pq

    model = DiffusionModel.from_pretrained(root / "models" / variant / "pipeline")
    rows = pq.read_table(root / "prompts" / "prompts.parquet").to_pylist()
    with torch.no_grad():
        states = model.encode_prompts([r["prompt"] for r in rows] + [""]).flatten(1)
    unit = torch.nn.functional.normalize(states, dim=1)
    similarity = unit @ unit.T
    prompts, empty = similarity[:-1, :-1], similarity[:-1, -1]
    n = len(rows)
    pairs = prompts[torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)]
    planted = [i for i, r in enumerate(rows) if r["group"] == "planted"]
    nearest = prompts.fill_diagonal_(-1.0).max(dim=1).values
    return {
        "pairwise": pairs.median().item(),
        "planted_nearest": statistics.median(nearest[planted].tolist()),
        "to_empty": empty.median().item(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="results folders of finished runs")
    parser.add_argument("--variant", default="cfg")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| results | median pairwise similarity | planted: nearest other prompt (median) | similarity to the empty prompt (median) |")
    print("|---|---|---|---|")
    for root in args.results:
        s = separation(root, args.variant)
        print(f"| {root.name} | {s['pairwise']:.3f} | {s['planted_nearest']:.3f} | {s['to_empty']:.3f} |")


if __name__ == "__main__":
    main()
