"""Neuron blocking in cross-attention value projections (`attn2.to_v`): which layers, where
a neuron sits in the global index, and a forward hook that scales chosen output channels
(per-sample masks let one batched UNet call test many ablations).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

DEFAULT_BLOCKS = ("down", "mid")


@dataclass(frozen=True)
class ValueLayer:
    """One cross-attention value projection and where its neurons sit in the global index."""

    name: str
    module: torch.nn.Linear
    offset: int

    @property
    def width(self) -> int:
        return self.module.out_features


def value_layers(unet: torch.nn.Module, blocks: Sequence[str] = DEFAULT_BLOCKS) -> list[ValueLayer]:
    """`attn2.to_v` layers of the chosen UNet parts ('down', 'mid', 'up'), in forward order."""
    unknown = set(blocks) - {"down", "mid", "up"}
    if unknown:
        raise ValueError(f"unknown UNet block group(s) {sorted(unknown)}; use down, mid, up")
    layers: list[ValueLayer] = []
    offset = 0
    forward_order = {"down": 0, "mid": 1, "up": 2}   # diffusers registers up_blocks before mid_block
    found = [(name, module) for name, module in unet.named_modules()
             if name.endswith("attn2") and name.split("_", 1)[0] in blocks]  # down_blocks / mid_block / up_blocks
    found.sort(key=lambda item: forward_order[item[0].split("_", 1)[0]])   # stable within a group
    for name, module in found:
        if getattr(module, "to_kv", None) is not None or getattr(module, "fused_projections", False):
            raise RuntimeError(
                f"{name} has fused key/value projections (fuse_qkv_projections()); hooks on to_v "
                "would be bypassed. Call unet.unfuse_qkv_projections() first."
            )
        to_v = module.to_v
        if to_v.bias is not None:
            raise RuntimeError(f"{name}.to_v has a bias; neuron blocking assumes bias-free values")
        layers.append(ValueLayer(f"{name}.to_v", to_v, offset))
        offset += to_v.out_features
    if not layers:
        raise ValueError(f"the UNet has no cross-attention value layers in blocks {list(blocks)}")
    return layers


def neuron_count(layers: Sequence[ValueLayer]) -> int:
    return layers[-1].offset + layers[-1].width


def locate(layers: Sequence[ValueLayer], neuron: int) -> tuple[int, int]:
    """Global neuron index -> (layer index, channel within the layer)."""
    for i, layer in enumerate(layers):
        if layer.offset <= neuron < layer.offset + layer.width:
            return i, neuron - layer.offset
    raise IndexError(f"neuron {neuron} is outside the {neuron_count(layers)} value neurons")


class NeuronBlocker:
    """Context manager that scales chosen `to_v` output channels by `factor` (0 = deactivate).

    `mask` is bool, shape (neurons,) for one ablation shared by the whole batch, or
    (ablations, neurons) for one ablation per sample; a batch that is k times the number of
    ablations (k = 2 under classifier-free guidance) repeats the masks k times, in order.
    """

    def __init__(self, layers: Sequence[ValueLayer], mask: torch.Tensor, factor: float = 0.0):
        self.layers = list(layers)
        self.mask = mask if mask.ndim == 2 else mask[None]
        if self.mask.shape[1] != neuron_count(self.layers):
            raise ValueError(f"mask has {self.mask.shape[1]} neurons, layers have {neuron_count(self.layers)}")
        self.factor = float(factor)
        self._handles: list[Any] = []

    def _scale(self, layer: ValueLayer, device, dtype) -> torch.Tensor:
        block = self.mask[:, layer.offset : layer.offset + layer.width].to(device)
        ones = torch.ones(block.shape, device=device, dtype=dtype)
        return torch.where(block, torch.full_like(ones, self.factor), ones)  # (ablations, width)

    def __enter__(self) -> NeuronBlocker:
        for layer in self.layers:
            if not bool(self.mask[:, layer.offset : layer.offset + layer.width].any()):
                continue
            scale = self._scale(layer, layer.module.weight.device, layer.module.weight.dtype)

            def hook(_module, _inputs, output, scale=scale):
                repeats, remainder = divmod(output.shape[0], scale.shape[0])
                if remainder:
                    raise RuntimeError(
                        f"batch of {output.shape[0]} is not a multiple of {scale.shape[0]} ablation masks"
                    )
                return output * scale.repeat(repeats, 1)[:, None, :]

            self._handles.append(layer.module.register_forward_hook(hook))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def block_neurons(layers: Sequence[ValueLayer], neurons: Sequence[int] | torch.Tensor,
                  factor: float = 0.0) -> NeuronBlocker:
    """Blocker for one set of global neuron indices, shared by every sample of a batch."""
    mask = torch.zeros(neuron_count(layers), dtype=torch.bool)
    mask[torch.as_tensor(list(neurons), dtype=torch.long)] = True
    return NeuronBlocker(layers, mask, factor)


@torch.no_grad()
def value_activations(layers: Sequence[ValueLayer], prompt_embeds: torch.Tensor) -> torch.Tensor:
    """Mean |to_v(e)| over token positions per neuron: (prompts, neurons). No UNet pass needed."""
    parts = [layer.module(prompt_embeds.to(layer.module.weight.dtype)).abs().mean(dim=1).float()
             for layer in layers]
    return torch.cat(parts, dim=1)

