"""Generation-time mitigations as objects the sampler applies per batch: none, blocked neurons
(NeMo per prompt, global, frequent, random control) and Wen's optimised embeddings.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import pyarrow as pa
import torch

from mnemo.diffusion.model import DiffusionModel
from mnemo.mitigate.kinds import MITIGATION_KINDS, NEURON_MITIGATIONS
from mnemo.mitigate.wen_embedding import WenEmbeddingConfig, optimize_prompt_embeddings
from mnemo.nemo.blocking import (
    DEFAULT_BLOCKS,
    NeuronBlocker,
    ValueLayer,
    locate,
    neuron_count,
    value_layers,
)


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


NEURON_SETS = ("refined", "initial", "checked")


def neurons_to_block(localized: Sequence[dict[str, Any]], which: str = "refined") -> dict[str, list[int]]:
    """Per memorized prompt, the neurons a mitigation blocks: NeMo's refined set ("refined", as the
    official code blocks it, relaxed searches included; the initial selection where refinement
    did not run), the initial selection ("initial") or the sample check's widened set ("checked",
    a departure from the paper, judged as its own mitigation)."""
    if which not in NEURON_SETS:
        raise ValueError(f"neurons: {which!r} is not one of {NEURON_SETS}")

    def chosen(row: dict[str, Any]) -> list[int]:
        if which == "checked" and row.get("checked_neurons"):
            return list(row["checked_neurons"])
        if which != "initial" and row["refined_neurons"]:
            return list(row["refined_neurons"])
        return list(row["initial_neurons"])

    return {r["prompt_id"]: chosen(r) for r in localized if r["memorized"]}


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
    if kind in NEURON_MITIGATIONS:
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
    raise ValueError(f"config key 'mitigations.{name}.kind': unknown mitigation kind {kind!r} "
                     f"(one of {', '.join(MITIGATION_KINDS)})")


# The per-prompt records build_mitigation returns, as written to samples/{variant}/{mitigation}_info:
# neuron mitigations fill blocked_neurons, Wen's embedding optimisation the other columns.
MITIGATION_INFO_SCHEMA = pa.schema([
    ("variant", pa.string()), ("mitigation", pa.string()), ("prompt_id", pa.string()),
    ("blocked_neurons", pa.int64()), ("iterations", pa.int64()), ("initial_loss", pa.float64()),
    ("final_loss", pa.float64()), ("target_loss", pa.float64()), ("seconds", pa.float64()),
])


def mitigation_info_table(variant: str, mitigation: str, info: Sequence[dict[str, Any]]) -> pa.Table:
    """build_mitigation's info records as a MITIGATION_INFO_SCHEMA table (empty for `none`)."""
    known = set(MITIGATION_INFO_SCHEMA.names)
    unknown = sorted({key for record in info for key in record} - known)
    if unknown:
        raise ValueError(f"mitigation info fields {unknown} are not in MITIGATION_INFO_SCHEMA")
    rows = [{"variant": variant, "mitigation": mitigation, **record} for record in info]
    return pa.Table.from_pylist(rows, schema=MITIGATION_INFO_SCHEMA)
