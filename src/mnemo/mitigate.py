"""Generation-time mitigations: neuron blocking (NeMo) and prompt-embedding optimisation (Wen).

A mitigation changes two things for a batch of requests: the conditional prompt embeddings it
feeds the UNet, and hooks active while that batch is denoised. Neuron blocking is a forward hook
on cross-attention value projections (`attn2.to_v`) that scales chosen output channels; a
per-sample mask lets one batched UNet call evaluate many different ablations at once.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mnemo.model import DiffusionModel

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
    for name, module in unet.named_modules():
        if not name.endswith("attn2"):
            continue
        group = name.split("_", 1)[0]  # down_blocks / mid_block / up_blocks
        if group not in blocks:
            continue
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


# ---------------------------------------------------------------------------------------------
# Mitigations applied during generation
# ---------------------------------------------------------------------------------------------

class NoMitigation:
    """Plain sampling."""

    name = "none"

    def prompt_embeddings(self, model: DiffusionModel, batch: Sequence[Any]) -> torch.Tensor:
        return model.encode_prompts([r.prompt for r in batch])

    def active(self, batch: Sequence[Any]) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()


class NeuronMitigation(NoMitigation):
    """Block a per-prompt set of value neurons (NeMo, NeMo-global or a random control)."""

    def __init__(self, name: str, layers: Sequence[ValueLayer], neurons_by_prompt: dict[str, list[int]],
                 factor: float = 0.0):
        self.name = name
        self.layers = list(layers)
        self.factor = factor
        total = neuron_count(self.layers)
        self.masks: dict[str, torch.Tensor] = {}
        for prompt_id, neurons in neurons_by_prompt.items():
            mask = torch.zeros(total, dtype=torch.bool)
            if neurons:
                mask[torch.as_tensor(neurons, dtype=torch.long)] = True
            self.masks[prompt_id] = mask
        self._empty = torch.zeros(total, dtype=torch.bool)

    @contextlib.contextmanager
    def active(self, batch: Sequence[Any]) -> Iterator[None]:
        mask = torch.stack([self.masks.get(r.prompt_id, self._empty) for r in batch])
        if not mask.any():
            yield
            return
        with NeuronBlocker(self.layers, mask, self.factor):
            yield


class EmbeddingMitigation(NoMitigation):
    """Sample with per-prompt replacement prompt embeddings (Wen et al.'s inference-time mitigation)."""

    def __init__(self, name: str, embeddings: dict[str, torch.Tensor]):
        self.name = name
        self.embeddings = embeddings

    def prompt_embeddings(self, model: DiffusionModel, batch: Sequence[Any]) -> torch.Tensor:
        default = model.encode_prompts([r.prompt for r in batch])
        for i, request in enumerate(batch):
            if request.prompt_id in self.embeddings:
                default[i] = self.embeddings[request.prompt_id].to(default.device, default.dtype)
        return default


@dataclass
class WenEmbeddingConfig:
    learning_rate: float = 0.05
    iterations: int = 10
    target_loss: float | str = "auto"
    prompts_per_batch: int = 8
    only_flagged: bool = False


def optimize_prompt_embeddings(model: DiffusionModel, prompts: Sequence[str], seeds: Sequence[Sequence[int]],
                               steps: int, config: WenEmbeddingConfig, target: float) -> list[dict[str, Any]]:
    """Wen et al.: minimise ||eps(x_T, e) - eps(x_T, empty)|| over each prompt's latents w.r.t. e.

    Prompts are optimised together (one UNet call per iteration for many prompts); each stops on
    its own once its loss (one norm over its n latents) reaches `target`, and stays frozen after.
    The start token's embedding is never changed.
    """
    from mnemo.sample import ddim_scheduler, initial_noise

    t1 = ddim_scheduler(model, steps).timesteps[0]
    n = len(seeds[0])
    results: list[dict[str, Any]] = []
    for begin in range(0, len(prompts), config.prompts_per_batch):
        tick = time.perf_counter()
        group = list(prompts[begin:begin + config.prompts_per_batch])
        latents = initial_noise([s for row in seeds[begin:begin + len(group)] for s in row], model.sample_shape,
                                model.device, model.dtype)
        with torch.no_grad():
            start = model.encode_prompts(group)
            empty = model.encode_prompts([""]).expand(len(latents), -1, -1)
            eps_empty = model.unet(latents, t1, encoder_hidden_states=empty).sample.float()
        embeds = start.clone().float().requires_grad_(True)
        optimizer = torch.optim.AdamW([embeds], lr=config.learning_rate)
        active = torch.ones(len(group), dtype=torch.bool)
        iterations = [0] * len(group)
        first_loss: list[float] = []
        last_loss = torch.zeros(len(group))
        for _ in range(config.iterations + 1):
            eps = model.unet(latents, t1, encoder_hidden_states=embeds.to(model.dtype).repeat_interleave(n, 0)).sample
            losses = (eps.float() - eps_empty).view(len(group), -1).norm(dim=1)
            last_loss = losses.detach().cpu()
            if not first_loss:
                first_loss = last_loss.tolist()
            active &= last_loss > target
            if not active.any() or all(i >= config.iterations for i in iterations):
                break
            frozen = embeds.detach().clone()
            optimizer.zero_grad()
            losses[active.to(losses.device)].sum().backward()
            embeds.grad[:, 0] = 0  # the start token stays put
            optimizer.step()
            with torch.no_grad():  # prompts that are done keep their embedding exactly
                embeds[~active.to(embeds.device)] = frozen[~active.to(embeds.device)]
                embeds[:, 0] = frozen[:, 0]  # AdamW's weight decay would move it despite the zero grad
            for i in range(len(group)):
                iterations[i] += int(active[i])
        seconds = (time.perf_counter() - tick) / len(group)
        for i in range(len(group)):
            results.append({"embedding": embeds[i].detach().to(model.dtype), "iterations": iterations[i],
                            "initial_loss": first_loss[i], "final_loss": float(last_loss[i]),
                            "target_loss": float(target), "seconds": seconds})
    return results


def random_like(layers: Sequence[ValueLayer], neurons: Sequence[int], seed: str) -> list[int]:
    """As many random neurons per layer as `neurons` has there (a control for NeMo's choice)."""
    import hashlib

    generator = torch.Generator().manual_seed(int(hashlib.blake2b(seed.encode(), digest_size=8).hexdigest(), 16)
                                              & ((1 << 63) - 1))
    counts = [0] * len(layers)
    for n in neurons:
        counts[locate(layers, n)[0]] += 1
    out: list[int] = []
    for layer, count in zip(layers, counts, strict=True):
        if count:
            out += (torch.randperm(layer.width, generator=generator)[:count] + layer.offset).tolist()
    return sorted(out)


def neurons_to_block(localized: Sequence[dict[str, Any]], which: str = "refined") -> dict[str, list[int]]:
    """Per prompt, the refined neurons (or the initial selection where refinement did not
    succeed), or with which="initial" the initial selection: what refinement pruned from."""
    if which not in ("refined", "initial"):
        raise ValueError(f"neurons: {which!r} is not 'refined' or 'initial'")
    return {r["prompt_id"]: list(r["refined_neurons"] if r["success"] and which == "refined" else r["initial_neurons"])
            for r in localized if r["memorized"]}


def frequent_neurons(found: Iterable[Sequence[int]], min_share: float = 0.0) -> list[int]:
    """Neurons in at least `min_share` of the found sets (0: their union). NeMo's "frequent
    memorization neurons": where every memorized prompt needs its own many neurons, the union
    blocks most of the layer for every prompt, and those shared by many prompts cost less."""
    sets = [set(neurons) for neurons in found]
    counts = Counter(n for neurons in sets for n in neurons)
    return sorted(n for n, count in counts.items() if count >= min_share * len(sets))


def build_mitigation(name: str, settings: dict[str, Any], model: DiffusionModel, *,
                     localized: Sequence[dict[str, Any]] | None = None, blocks: Sequence[str] = DEFAULT_BLOCKS,
                     prompt_ids: Sequence[str] = (), prompts: Sequence[str] = (), seeds: Sequence[Sequence[int]] = (),
                     flagged: set[str] | None = None, reference_magnitude: float | None = None,
                     steps: int = 25) -> tuple[NoMitigation, list[dict[str, Any]]]:
    """The mitigation named in `mitigations.<name>` plus one info record per prompt."""
    kind = settings.get("kind", name)
    if kind == "none":
        return NoMitigation(), []
    if kind in ("nemo", "nemo_global", "random"):
        if localized is None:
            raise ValueError(f"mitigation {name!r} needs the localize stage's neurons")
        layers = value_layers(model.unet, blocks)
        which = settings.get("neurons", "refined")
        own = neurons_to_block(localized, which)
        if kind == "nemo":
            chosen = own
        elif kind == "nemo_global":
            # the neurons NeMo *found*: a failed search's widest selection is no finding
            found = neurons_to_block([r for r in localized if r["success"]], which)
            shared = frequent_neurons(found.values(), float(settings.get("min_share", 0.0)))
            chosen = {pid: shared for pid in prompt_ids}
        else:
            chosen = {pid: random_like(layers, neurons, f"{settings.get('seed', 0)}:{pid}")
                      for pid, neurons in own.items()}
        factor = float(settings.get("factor", 0.0))
        info = [{"prompt_id": pid, "blocked_neurons": len(chosen.get(pid, []))} for pid in prompt_ids]
        return NeuronMitigation(name, layers, chosen, factor), info
    if kind == "wen_embedding":
        config = WenEmbeddingConfig(**{k: v for k, v in settings.items() if k != "kind"})
        target = config.target_loss
        if target == "auto":
            if reference_magnitude is None:
                raise ValueError("target_loss: auto needs the reference prompts' first-step magnitude")
            target = reference_magnitude * len(seeds[0]) ** 0.5
        chosen = [i for i, pid in enumerate(prompt_ids) if not config.only_flagged or pid in (flagged or set())]
        optimized = optimize_prompt_embeddings(model, [prompts[i] for i in chosen], [seeds[i] for i in chosen],
                                               steps, config, float(target))
        embeddings = {prompt_ids[i]: r.pop("embedding") for i, r in zip(chosen, optimized, strict=True)}
        info = [{"prompt_id": prompt_ids[i], **r} for i, r in zip(chosen, optimized, strict=True)]
        return EmbeddingMitigation(name, embeddings), info
    raise ValueError(f"config key 'mitigations.{name}.kind': unknown mitigation kind {kind!r}")
