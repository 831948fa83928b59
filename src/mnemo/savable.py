"""Saving and loading the small in-house networks (copy detector, label classifier) the way
diffusers does: a folder with `config.json` (constructor arguments) and `model.safetensors`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch


def save_module(module: torch.nn.Module, directory: str | Path, config: dict[str, Any]) -> Path:
    """Write the weights and config; returns the weights file (whose hash can fingerprint it)."""
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    weights = out / "model.safetensors"
    save_file(state, str(weights), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
    return weights


def load_files(directory: str | Path, what: str, how: str) -> tuple[dict[str, Any], dict[str, torch.Tensor], Path]:
    """(config, state dict, weights path) of a saved folder; a missing file names `what` and `how`."""
    from safetensors.torch import load_file

    src = Path(directory)
    config_path, weights = src / "config.json", src / "model.safetensors"
    for path in (config_path, weights):
        if not path.is_file():
            raise FileNotFoundError(f"{what} file missing: {str(path)!r} ({how})")
    return json.loads(config_path.read_text()), load_file(str(weights)), weights
