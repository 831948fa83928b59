"""Loading a variant's model inside a workflow job: its own module, so that only the jobs that
load a model depend on the model code (and editing it reruns no plot or table)."""

from __future__ import annotations

from typing import Any

import torch

from mnemo.diffusion.model import DiffusionModel
from mnemo.workflow import resolve_device, torch_settings


def model_dtype(name: str, device: torch.device, pretrained: bool) -> torch.dtype:
    """A variant's dtype: `auto` is float16 for pretrained models on CUDA, float32 otherwise."""
    if name == "auto":
        name = "float16" if device.type == "cuda" and pretrained else "float32"
    return getattr(torch, name)


def load_model(snakemake: Any):
    """The variant's model on the job's device, in the variant's dtype (`torch_settings(model=True)`
    in the rule's params)."""
    settings = torch_settings(snakemake)
    if "dtype" not in settings:
        raise RuntimeError(f"rule {snakemake.rule} loads a model: its params need `torch=torch_settings(model=True)`")
    device = resolve_device(settings["device"])
    dtype = model_dtype(settings["dtype"], device, settings["pretrained"])
    return DiffusionModel.from_pretrained(snakemake.input.model, device=device, dtype=dtype)
