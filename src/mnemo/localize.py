"""NeMo (Hintersdorf et al., NeurIPS 2024): localize memorization neurons in the cross-attention
value layers of any diffusers UNet.

The search is NeMo's: an out-of-distribution initial selection against reference activation
statistics, widened until blocking removes the memorization signal, then a greedy causal pruning
(layers, then single neurons). Each candidate test asks "is the first-step noise difference of
the blocked model still like the memorized one?" via MS-SSIM.

Two ways to run the same search: `sequential` evaluates one candidate set per UNet call, as the
official code does; `batched` evaluates many candidate sets in one UNet call with a per-sample
neuron mask, speculating that greedy pruning steps succeed and rolling back at the first that
fails. Both make the same decisions; the batched one makes far fewer UNet calls.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from mnemo.detect import ms_ssim, normalize_maps, per_sample_max, ssim_kernel_size
from mnemo.mitigate import NeuronBlocker, ValueLayer, locate, neuron_count, value_activations
from mnemo.model import DiffusionModel
from mnemo.sample import ddim_scheduler, initial_noise, sample_seed

MODES = ("batched", "sequential")


@dataclass
class LocalizeConfig:
    blocks: tuple[str, ...] = ("down", "mid")
    samples: int = 10
    theta: float = 5.0
    theta_step: float = 0.25
    theta_min: float = 1.0
    top_k: int = 0
    factor: float = 0.0
    steps: int = 25
    seed: int = 0
    kernel_size: int | str = "auto"
    betas: tuple[float, ...] = (0.33, 0.33, 0.33)
    batch_size: int = 256
    mode: str = "batched"

    def __post_init__(self) -> None:
        self.blocks = tuple(self.blocks)
        self.betas = tuple(self.betas)
        if self.mode not in MODES:
            raise ValueError(f"config key 'localize.mode': {self.mode!r} is not one of {MODES}")


@dataclass
class ReferenceStats:
    """Per-neuron mean and std of mean |value activation| over non-memorized prompts."""

    mean: torch.Tensor
    std: torch.Tensor
    prompts: int


def reference_statistics(model: DiffusionModel, layers: Sequence[ValueLayer], prompts: Sequence[str],
                         batch_size: int = 256) -> ReferenceStats:
    rows = []
    with torch.no_grad():
        for begin in range(0, len(prompts), batch_size):
            rows.append(value_activations(layers, model.encode_prompts(list(prompts[begin:begin + batch_size]))))
    activations = torch.cat(rows).double()
    return ReferenceStats(activations.mean(0), activations.std(0), len(prompts))


@dataclass
class LocalizationResult:
    prompt_id: str
    memorized: bool                 # any sample above tau before blocking
    kept_samples: int
    initial_neurons: list[int] = field(default_factory=list)
    initial_score: float = float("nan")
    refined_neurons: list[int] = field(default_factory=list)
    refined_score: float = float("nan")
    unblocked_score: float = float("nan")
    theta: float = float("nan")
    top_k: int = 0
    success: bool = False
    unet_calls: int = 0
    seconds: float = 0.0
    mode: str = "batched"


class UNetCallCounter:
    """Counts UNet forward calls (whatever their batch size) with a forward pre-hook."""

    def __init__(self, unet: torch.nn.Module):
        self.calls = 0
        self._handle = unet.register_forward_pre_hook(self._count)

    def _count(self, *_args) -> None:
        self.calls += 1

    def close(self) -> None:
        self._handle.remove()


class Localizer:
    """NeMo search for one model; `localize(prompt_id, prompt)` per memorized prompt."""

    def __init__(self, model: DiffusionModel, layers: Sequence[ValueLayer], stats: ReferenceStats, tau: float,
                 config: LocalizeConfig):
        self.model = model
        self.layers = list(layers)
        self.stats = stats
        self.tau = float(tau)
        self.config = config
        self.total = neuron_count(self.layers)
        self.t1 = ddim_scheduler(model, config.steps).timesteps[0]
        size = min(model.sample_shape[1:])
        self.kernel = ssim_kernel_size(size, config.betas, config.kernel_size)

    # -- scoring -----------------------------------------------------------------------------
    def _deltas(self, latents: torch.Tensor, cond: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor:
        """Normalised first-step noise differences for latents (B, ...), optional per-sample masks."""
        out = []
        size = self.config.batch_size
        for begin in range(0, len(latents), size):
            x = latents[begin:begin + size]
            embeds = cond.expand(len(x), -1, -1)
            with torch.no_grad():
                if masks is None:
                    eps = self.model.unet(x, self.t1, encoder_hidden_states=embeds).sample
                else:
                    with NeuronBlocker(self.layers, masks[begin:begin + size], self.config.factor):
                        eps = self.model.unet(x, self.t1, encoder_hidden_states=embeds).sample
            out.append(normalize_maps((eps - x).float()))
        return torch.cat(out)

    def _ssim(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return ms_ssim(a, b, self.kernel, self.config.betas)

    def scores(self, state: _PromptState, sets: Sequence[torch.Tensor]) -> torch.Tensor:
        """Blocked score of each neuron set: max over kept samples of SSIM(unblocked, blocked)."""
        if not sets:
            return torch.empty(0)
        k = len(state.latents)
        masks = torch.stack(list(sets)).repeat_interleave(k, dim=0)
        latents = state.latents.repeat(len(sets), *([1] * (state.latents.ndim - 1)))
        blocked = self._deltas(latents, state.cond, masks)
        reference = state.unblocked.repeat(len(sets), *([1] * (state.unblocked.ndim - 1)))
        return self._ssim(reference, blocked).view(len(sets), k).max(dim=1).values

    def _first_passing(self, state: _PromptState, sets: Sequence[torch.Tensor],
                       passes: Callable[[float], bool]) -> tuple[int, list[float]]:
        """Index of the first set whose score `passes` (len(sets) if none), evaluating lazily.

        Sequential mode scores one set per UNet call; batched mode scores as many sets as fit
        in one call and stops at the first chunk that contains a passing set.
        """
        per_call = 1 if self.config.mode == "sequential" else max(1, self.config.batch_size // len(state.latents))
        seen: list[float] = []
        for begin in range(0, len(sets), per_call):
            chunk = self.scores(state, sets[begin:begin + per_call]).tolist()
            for offset, score in enumerate(chunk):
                seen.append(score)
                if passes(score):
                    return begin + offset, seen
        return len(sets), seen

    # -- NeMo steps ----------------------------------------------------------------------------
    def initial_candidates(self, activation: torch.Tensor, theta: float, top_k: int) -> torch.Tensor:
        """OOD neurons (|a - mu| / sigma > theta) plus the top-k by raw activation, per layer."""
        z = (activation - self.stats.mean).abs() / self.stats.std.clamp_min(1e-12)
        mask = z > theta
        if top_k > 0:
            for layer in self.layers:
                block = activation[layer.offset:layer.offset + layer.width]
                top = torch.topk(block, min(top_k, layer.width)).indices + layer.offset
                mask[top] = True
        return mask

    def selection_schedule(self) -> list[tuple[float, int]]:
        """(theta, k) pairs tried in order: theta down by a step to its floor, k up by one."""
        c = self.config
        schedule = []
        theta, k = c.theta, c.top_k
        smallest = min(layer.width for layer in self.layers)
        while True:
            schedule.append((theta, k))
            if theta <= c.theta_min + 1e-9 or k >= smallest:
                return schedule
            theta, k = max(theta - c.theta_step, c.theta_min), k + 1

    def _prune(self, state: _PromptState, current: torch.Tensor, score: float,
               groups: list[torch.Tensor]) -> tuple[torch.Tensor, float]:
        """Greedy pruning: drop each group (in order) if the set without it stays <= tau.

        Returns the pruned set and its score (every set it returns has been scored).
        """
        position = 0
        while position < len(groups):
            # speculate that every remaining group can be dropped: cumulative removals
            chain, trial = [], current.clone()
            for group in groups[position:]:
                trial = trial & ~group
                chain.append(trial.clone())
            failed, scores = self._first_passing(state, chain, lambda s: s > self.tau)
            if failed == len(chain):
                return chain[-1], scores[-1]
            # groups before `failed` were dropped; the failing group stays
            if failed > 0:
                current, score = chain[failed - 1], scores[failed - 1]
            position += failed + 1
        return current, score

    def localize(self, prompt_id: str, prompt: str) -> LocalizationResult:
        counter = UNetCallCounter(self.model.unet)
        began = time.perf_counter()
        try:
            result = self._localize(prompt_id, prompt)
        finally:
            counter.close()
        result.unet_calls = counter.calls
        result.seconds = time.perf_counter() - began
        result.mode = self.config.mode
        return result

    def _localize(self, prompt_id: str, prompt: str) -> LocalizationResult:
        c = self.config
        model = self.model
        seeds = [sample_seed(prompt_id, i, c.seed) for i in range(c.samples)]
        latents = initial_noise(seeds, model.sample_shape, model.device, model.dtype)
        with torch.no_grad():
            cond = model.encode_prompts([prompt])
            activation = value_activations(self.layers, cond)[0].double()
        unblocked = self._deltas(latents, cond, None)
        pairs = torch.combinations(torch.arange(c.samples), r=2)
        pairwise = self._ssim(unblocked[pairs[:, 0]], unblocked[pairs[:, 1]])
        sample_max = per_sample_max(pairwise[None], pairs, c.samples)[0]
        kept = sample_max > self.tau
        result = LocalizationResult(prompt_id, bool(kept.any()), int(kept.sum()),
                                    unblocked_score=float(sample_max.max()))
        if not kept.any():
            return result
        state = _PromptState(latents[kept.to(latents.device)], cond, unblocked[kept.to(unblocked.device)])

        # Step A: widen the OOD selection until blocking removes the signal
        schedule = self.selection_schedule()
        sets = [self.initial_candidates(activation, theta, k) for theta, k in schedule]
        found, scores = self._first_passing(state, sets, lambda s: s <= self.tau)
        chosen = min(found, len(sets) - 1)
        result.theta, result.top_k = schedule[chosen]
        initial = sets[chosen]
        result.initial_neurons = torch.nonzero(initial).flatten().tolist()
        result.initial_score = scores[chosen] if chosen < len(scores) else float(self.scores(state, [initial])[0])
        if found == len(sets):
            return result  # even the widest selection leaves the memorization signal: report, don't prune

        # Step B: refinement, layers last-to-first, then single neurons
        layer_groups = []
        for layer in reversed(self.layers):
            group = torch.zeros(self.total, dtype=torch.bool)
            group[layer.offset:layer.offset + layer.width] = True
            group &= initial
            if group.any():
                layer_groups.append(group)
        current, score = self._prune(state, initial, result.initial_score, layer_groups)
        neuron_groups = []
        for index in torch.nonzero(current).flatten().tolist():
            group = torch.zeros(self.total, dtype=torch.bool)
            group[index] = True
            neuron_groups.append(group)
        current, score = self._prune(state, current, score, neuron_groups)
        result.refined_neurons = torch.nonzero(current).flatten().tolist()
        result.refined_score = float(score)
        result.success = result.refined_score <= self.tau
        return result

    def describe(self, neurons: Sequence[int]) -> list[tuple[str, int]]:
        """Global indices -> (layer name, channel)."""
        out = []
        for neuron in neurons:
            layer, channel = locate(self.layers, neuron)
            out.append((self.layers[layer].name, channel))
        return out


@dataclass
class _PromptState:
    latents: torch.Tensor     # kept samples' x_T
    cond: torch.Tensor        # (1, tokens, dim)
    unblocked: torch.Tensor   # normalised unblocked noise differences of the kept samples


# ---------------------------------------------------------------------------------------------
# One call for the workflow stage
# ---------------------------------------------------------------------------------------------

def reference_table(layers: Sequence[ValueLayer], stats: ReferenceStats):
    import pyarrow as pa

    rows = []
    for layer in layers:
        for channel in range(layer.width):
            i = layer.offset + channel
            rows.append({"layer": layer.name, "channel": channel, "neuron": i,
                         "mean": float(stats.mean[i]), "std": float(stats.std[i]), "prompts": stats.prompts})
    return pa.Table.from_pylist(rows)


def results_table(results: Sequence[LocalizationResult], layers: Sequence[ValueLayer], tau: float):
    import pyarrow as pa

    names = [layer.name for layer in layers]

    def layer_names(neurons):
        return [names[locate(layers, n)[0]] for n in neurons]

    rows = []
    for r in results:
        rows.append({
            "prompt_id": r.prompt_id, "mode": r.mode, "memorized": r.memorized, "kept_samples": r.kept_samples,
            "unblocked_score": r.unblocked_score, "tau": tau,
            "theta": r.theta, "top_k": r.top_k,
            "initial_neurons": r.initial_neurons, "initial_layers": layer_names(r.initial_neurons),
            "initial_count": len(r.initial_neurons), "initial_score": r.initial_score,
            "refined_neurons": r.refined_neurons, "refined_layers": layer_names(r.refined_neurons),
            "refined_channels": [locate(layers, n)[1] for n in r.refined_neurons],
            "refined_count": len(r.refined_neurons), "refined_score": r.refined_score,
            "success": r.success, "unet_calls": r.unet_calls, "seconds": r.seconds,
        })
    schema = pa.schema([
        ("prompt_id", pa.string()), ("mode", pa.string()), ("memorized", pa.bool_()), ("kept_samples", pa.int32()),
        ("unblocked_score", pa.float64()), ("tau", pa.float64()), ("theta", pa.float64()), ("top_k", pa.int32()),
        ("initial_neurons", pa.list_(pa.int32())), ("initial_layers", pa.list_(pa.string())),
        ("initial_count", pa.int32()), ("initial_score", pa.float64()),
        ("refined_neurons", pa.list_(pa.int32())), ("refined_layers", pa.list_(pa.string())),
        ("refined_channels", pa.list_(pa.int32())), ("refined_count", pa.int32()), ("refined_score", pa.float64()),
        ("success", pa.bool_()), ("unet_calls", pa.int32()), ("seconds", pa.float64()),
    ])
    return pa.Table.from_pylist(rows, schema=schema)


def localize_prompts(model: DiffusionModel, prompts, flagged: Sequence[str], tau: float, config: LocalizeConfig,
                     compare_modes: bool = False, log=print):
    """Reference statistics over the reference prompts, then NeMo on every flagged prompt.

    With `compare_modes` every prompt is searched both batched and one candidate per call, so
    the two can be checked to agree and their costs compared.
    """
    from mnemo.mitigate import value_layers

    layers = value_layers(model.unet, config.blocks)
    records = prompts.select(["prompt_id", "prompt", "reference"]).to_pylist()
    stats = reference_statistics(model, layers, [r["prompt"] for r in records if r["reference"]])
    modes = list(MODES) if compare_modes else [config.mode]
    results = []
    texts = {r["prompt_id"]: r["prompt"] for r in records}
    for prompt_id in flagged:
        for mode in modes:
            localizer = Localizer(model, layers, stats, tau, LocalizeConfig(**{**config.__dict__, "mode": mode}))
            result = localizer.localize(prompt_id, texts[prompt_id])
            log(f"{prompt_id} [{mode}]: {len(result.refined_neurons)} neurons "
                f"(initial {len(result.initial_neurons)}), score {result.unblocked_score:.3f} -> "
                f"{result.refined_score:.3f} (tau {tau:.3f}), {result.unet_calls} UNet calls, {result.seconds:.1f} s")
            results.append(result)
    return layers, stats, results
