"""What a demo-model study candidate costs per training step, beside the demo model.

Why: the study (docs/demo-model-study.md) trades searched neurons against time on 2 CPU cores.
Before a full run, this prints each candidate's searched value neurons, parameters and bare
training throughput (UNet + text encoder forward/backward and AdamW, the floor the training loop
runs on), measured in alternating rounds so that a machine shared with other jobs slows all alike.

    python benchmarks/study_step_cost.py                                   # demo vs SD-shaped UNet
    python benchmarks/study_step_cost.py --candidates "" config/study/unet_sd_shaped.yaml,config/study/schedule_sd.yaml
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import torch

from mnemo.cli import check_config
from mnemo.diffusion.model import DiffusionModel, ModelConfig
from mnemo.nemo.blocking import neuron_count, value_layers
from mnemo.workflow import configure_torch

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("throughput", Path(__file__).with_name("train_sample_throughput.py"))
throughput = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(throughput)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", nargs="+", default=["", "config/study/unet_sd_shaped.yaml"],
                        help="comma-separated overlays per candidate over config.yaml ('' = the demo)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="training steps timed per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    device = torch.device("cpu")
    configure_torch(args.threads, device)
    models, speeds = {}, {}
    for candidate in args.candidates:
        files = [ROOT / f for f in candidate.split(",") if f]
        config, _ = check_config(files, ROOT)
        model_config = ModelConfig.from_dict(config["model"])
        model_config.unet.resolution = config["dataset"]["resolution"]
        model = DiffusionModel.from_config(model_config, throughput.PROMPTS)
        layers = value_layers(model.unet, config["localize"]["blocks"])
        models[candidate] = (model, config, neuron_count(layers), len(layers))
        speeds[candidate] = []
    for _ in range(args.rounds):
        for candidate, (model, config, _, _) in models.items():
            speeds[candidate].append(throughput.bare_train_loop(model, config["train"]["batch_size"], args.steps,
                                                                device))
    base = sorted(speeds[args.candidates[0]])[len(speeds[args.candidates[0]]) // 2]
    print("| candidate | value layers searched | neurons searched | UNet parameters | images/s (median) "
          "| step time / first | est. minutes for train.steps |")
    print("|---|---|---|---|---|---|---|")
    for candidate, (model, config, neurons, layers) in models.items():
        speed = sorted(speeds[candidate])[len(speeds[candidate]) // 2]
        minutes = config["train"]["steps"] * config["train"]["batch_size"] / speed / 60
        parameters = sum(p.numel() for p in model.unet.parameters())
        print(f"| {candidate or 'demo (config.yaml)'} | {layers} | {neurons:,} | {parameters:,} | {speed:.1f} "
              f"| {base / speed:.2f} | {minutes:.0f} ({config['train']['steps']} steps) |")


if __name__ == "__main__":
    main()
