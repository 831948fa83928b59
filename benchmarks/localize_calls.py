"""NeMo search cost: lockstep, one-by-one and speculative search on the same prompts.

Why: the official NeMo code scores each candidate neuron set with its own UNet call (`sequential`).
`lockstep` puts every prompt's next test in one batched call per round: the same tests, far fewer
calls, every batch row used; by default it scores a test on its deciding sample first and draws the
others only if that one passes (`witness_first`; `lockstep-all` draws every sample at once).
`speculative` scores a tree of likely next tests per call for one prompt at a time: fewest calls,
but the sets off the path taken cost compute. All must find the same neurons; this prints their
wall time, UNet calls and batch rows, and says whether they agree.

    python benchmarks/localize_calls.py --demo results              # the demo's flagged prompts, cfg model
    python benchmarks/localize_calls.py --demo results --max-prompts 8 --modes lockstep lockstep-all sequential
    python benchmarks/localize_calls.py --demo results-study/x --config config/study/a.yaml config/study/b.yaml
    python benchmarks/localize_calls.py                             # a tiny random SD model
    python benchmarks/localize_calls.py --pipeline /path/to/stable-diffusion-v1-4 --device cuda

With --demo the trained model's flagged prompts (detection's `nemo_flagged`) are searched as the
workflow searches them: detection's tau, the config's layers, signal, schedule and seeds (the
config file given, default config.yaml), reference statistics from the prompt table. Without it,
nothing is memorized in the random model, so each prompt's threshold is set just under its
unblocked score, which makes the search select and refine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mnemo.diffusion.model import DiffusionModel  # noqa: E402
from mnemo.nemo.blocking import value_layers  # noqa: E402
from mnemo.nemo.localize import LocalizeConfig, Localizer, search_threshold  # noqa: E402
from mnemo.nemo.refinement import MODES  # noqa: E402
from mnemo.nemo.selection import encode_prompts, reference_statistics  # noqa: E402
from mnemo.nemo.signal import SearchSignal  # noqa: E402

PROMPTS = ["a painting of the great wave", "the mona lisa by leonardo", "portrait of a man in a hat",
           "living room with a grey sofa", "a cat on a mat", "mountains at sunset"]
REFERENCE = ["a red bicycle", "two dogs playing in snow", "a bowl of fruit", "city street at night",
             "a boat on a lake", "a green field", "an old clock", "a tall building"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", help="results folder of a finished demo run: search its model's flagged prompts")
    parser.add_argument("--config", nargs="*", default=[], help="--demo: the run's overlays over config.yaml")
    parser.add_argument("--variant", default="cfg")
    parser.add_argument("--max-prompts", type=int, default=None, help="search only the first N prompts")
    parser.add_argument("--modes", nargs="+", default=["lockstep", "lockstep-all", "sequential", "speculative"],
                        choices=[*MODES, "lockstep-all"], help="lockstep-all: lockstep drawing every sample of a test")
    parser.add_argument("--pipeline", help="without --demo: a diffusers SD folder (default: a tiny random one)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256, help="most batch rows per UNet call")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, base, prompts, tau, score_tau, reference = demo(args) if args.demo else tiny(args)
    prompts = prompts[:args.max_prompts]
    layers = value_layers(model.unet, base.blocks)
    embeds = encode_prompts(model, [r["prompt"] for r in reference])
    stats = reference_statistics(model, layers, embeds)
    signal = SearchSignal(model, layers, base, embeds)
    if score_tau == "search":
        score_tau = search_threshold(model, layers, stats, tau, base, reference, signal)
    print(f"model: {len(layers)} value layers, {sum(layer.width for layer in layers)} neurons; search "
          f"{base.score} of {base.signal} at step {base.signal_step}; {len(prompts)} prompts, {base.samples} "
          f"samples each; at most {args.batch_size} rows per call; {args.device}, {args.threads} threads")
    found, cost = {}, {}
    rows = [0]
    counter = model.unet.register_forward_pre_hook(lambda _module, inputs: rows.__setitem__(0, rows[0] + len(inputs[0])))
    for mode in args.modes:
        search_mode, _, variant = mode.partition("-")   # lockstep-all: lockstep without witness_first
        config = LocalizeConfig(**{**base.__dict__, "mode": search_mode, "batch_size": args.batch_size,
                                   "witness_first": variant != "all"})
        localizer = Localizer(model, layers, stats, tau, config, score_tau, signal=signal)
        rows[0] = 0
        began = time.perf_counter()
        results = localizer.localize_many(prompts)
        seconds = time.perf_counter() - began
        found[mode] = [(r.initial_neurons, r.refined_neurons) for r in results]
        cost[mode] = (seconds, sum(r.unet_calls for r in results), rows[0])
        print(f"{mode:>12}: {seconds:8.1f} s, {cost[mode][1]:7.0f} UNet calls, {rows[0]:8d} rows; refined neurons "
              f"per prompt {[len(r.refined_neurons) for r in results]}", flush=True)
    counter.remove()
    reference_mode = "sequential" if "sequential" in cost else args.modes[0]
    seconds, calls, reference_rows = cost[reference_mode]
    print("\n| mode | wall s | UNet calls | UNet rows | wall / one-by-one | calls / one-by-one | rows / one-by-one "
          "| same neurons as one-by-one |")
    print("|---|---|---|---|---|---|---|---|")
    for mode, (s, c, r) in cost.items():
        same = sum(a == b for a, b in zip(found[mode], found[reference_mode], strict=True))
        print(f"| {mode} | {s:.1f} | {c:.0f} | {r} | {s / seconds:.2f} | {c / calls:.3f} | {r / reference_rows:.3f} "
              f"| {same} of {len(prompts)} |")


def demo(args):
    """The workflow's search on a trained demo model: its flagged prompts, its thresholds and seeds."""
    import json

    import pyarrow.parquet as pq

    from mnemo.cli import check_config

    root = Path(args.demo)
    settings, _ = check_config(args.config, REPO)
    options = {k: v for k, v in settings["localize"].items()
               if k in LocalizeConfig.__dataclass_fields__ and k != "mode"}
    base = LocalizeConfig(**options, steps=settings["detect"]["steps"],
                          nemo_steps=settings["detect"]["nemo_steps"], nemo_timestep=settings["detect"]["nemo_timestep"])
    model = DiffusionModel.from_pretrained(root / "models" / args.variant / "pipeline", device=args.device)
    table = pq.read_table(root / "prompts" / "prompts.parquet").to_pylist()
    texts = {r["prompt_id"]: r["prompt"] for r in table}
    flagged = [r["prompt_id"] for r in pq.read_table(root / "detect" / args.variant / "scores.parquet",
                                                     columns=["prompt_id", "nemo_flagged"]).to_pylist()
               if r["nemo_flagged"]]
    tau = json.loads((root / "detect" / args.variant / "threshold.json").read_text())["tau"]
    reference = [r for r in table if r["reference"]]
    return model, base, [(p, texts[p]) for p in flagged], tau, "search", reference


def tiny(args):
    """A random SD-shaped model; per-prompt thresholds just under the unblocked scores."""
    with tempfile.TemporaryDirectory() as tmp:
        path = args.pipeline
        if path is None:
            from tests.tiny_sd import build_pipeline

            path = build_pipeline(Path(tmp) / "sd")
        dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
        model = DiffusionModel.from_pretrained(path, device=args.device, dtype=dtype)
    base = LocalizeConfig(theta=2.0, batch_size=args.batch_size)
    layers = value_layers(model.unet, base.blocks)
    stats = reference_statistics(model, layers, REFERENCE)
    prompts = [(f"p{i}", prompt) for i, prompt in enumerate(PROMPTS)]
    probe = Localizer(model, layers, stats, -1.0, base)
    with torch.no_grad():
        unblocked = [probe.signal.memorization(probe._latents(i), model.encode_prompts([p]))[1].max()
                     for i, p in prompts]
    tau = float(min(unblocked)) - 0.02
    reference = [{"prompt_id": f"r{i}", "prompt": prompt} for i, prompt in enumerate(REFERENCE)]
    return model, base, prompts, tau, tau, reference


if __name__ == "__main__":
    main()
