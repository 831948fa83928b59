"""NeMo (Hintersdorf et al., NeurIPS 2024): localize memorization neurons in the cross-attention
value layers of any diffusers UNet.

The search is NeMo's: an out-of-distribution initial selection against reference activation
statistics (`mnemo.nemo.selection`), widened until blocking removes the memorization signal, then
a greedy causal pruning, layers then single neurons (`mnemo.nemo.refinement`, which also runs the
search in lockstep across prompts, one by one or speculatively). Each candidate test asks "is the blocked model's
signal still like the unblocked, memorized one?"; which signal and score it compares, and their
thresholds, are `mnemo.nemo.signal`'s.

An optional `SampleCheck` (`mnemo.nemo.sample_check`) judges the refined set by the samples instead
of the signal: where the pruned set still lets them copy, it widens the set back along the chain
the pruning took. Its UNet calls and seconds are counted apart from the search's.

This module holds the configuration, the per-prompt orchestration, the workflow stage's entry
point (`localize_prompts`) and its tables.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import torch

from mnemo.diffusion.model import DiffusionModel
from mnemo.diffusion.sample import initial_noise, sample_seed
from mnemo.nemo.blocking import ValueLayer, locate, neuron_count, value_activations
from mnemo.nemo.refinement import MODES, Chain, Refinement, Search, SearchCost, _PromptState
from mnemo.nemo.sample_check import SampleCheck, smallest_passing
from mnemo.nemo.selection import (
    ReferenceStats,
    as_mask,
    encode_prompts,
    initial_candidates,
    load_reference_stats,
    reference_statistics,
    selection_schedule,
)
from mnemo.nemo.signal import SCORES, SIGNALS, SearchSignal

if TYPE_CHECKING:
    import pyarrow as pa


# When no selection of the schedule removes the signal: `relax` refines the last one against its own
# score, as the official code does; `report` reports it unrefined as a failed search.
NO_PASS = ("relax", "report")


@dataclass
class LocalizeConfig:
    blocks: tuple[str, ...] = ("down", "mid")
    samples: int = 10
    theta: float = 5.0
    theta_step: float = 0.25
    theta_min: float = 1.0
    top_k: int = 0
    k_max: int = 1280
    on_no_pass: str = "relax"
    nemo_steps: int = 50
    nemo_timestep: int = 1
    reference_stats: str | None = None
    factor: float = 0.0
    steps: int = 25
    seed: int = 1
    kernel_size: int | str = "auto"
    betas: tuple[float, ...] = (0.33, 0.33, 0.33)
    batch_size: int = 256
    mode: str = "lockstep"
    witness_first: bool = True
    signal: str = "noise_difference"
    signal_step: int = 0
    score: str = "ms_ssim"

    def __post_init__(self) -> None:
        self.blocks = tuple(self.blocks)
        self.betas = tuple(self.betas)
        if self.mode not in MODES:
            raise ValueError(f"config key 'localize.mode': {self.mode!r} is not one of {MODES}")
        if self.signal not in SIGNALS:
            raise ValueError(f"config key 'localize.signal': {self.signal!r} is not one of {SIGNALS}")
        if self.score not in SCORES:
            raise ValueError(f"config key 'localize.score': {self.score!r} is not one of {SCORES}")
        if self.on_no_pass not in NO_PASS:
            raise ValueError(f"config key 'localize.on_no_pass': {self.on_no_pass!r} is not one of {NO_PASS}")

    @property
    def paper_signal(self) -> bool:
        """The search compares what detection computed: its tau and unblocked maps carry over."""
        return self.signal == "noise_difference" and self.signal_step == 0 and self.score == "ms_ssim"


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
    relaxed: bool = False           # no selection reached tau: refined against the last selection's score
    refine_threshold: float = float("nan")
    success: bool = False
    score_tau: float = float("nan")  # the threshold the blocked score had to reach
    checked_neurons: list[int] = field(default_factory=list)  # the sample check's set (a departure: its own mitigation)
    checked_score: float = float("nan")
    checked_success: bool = False
    sample_agreement: float = float("nan")   # unblocked samples' median best match among themselves
    sample_similarity: float = float("nan")  # blocked samples' similarity to the unblocked consensus (check's quantile)
    sample_checks: int = 0          # denoising batches the sample check drew
    sample_seconds: float = 0.0
    unet_calls: float = 0.0         # the search's; in lockstep its share of the calls it rode on
    seconds: float = 0.0            # likewise
    mode: str = "lockstep"


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
    """NeMo search for one model and one search mode; `localize(prompt_id, prompt)` per memorized
    prompt.

    `tau` is the detection threshold (noise difference), deciding which samples are memorized;
    `score_tau` the threshold a blocked set's MS-SSIM score must reach, in the search signal's
    units (the same as `tau` for the paper's signal). The projection score derives its threshold
    per prompt from `reference_prompts` instead. Localizers of the same search in different modes
    share one `signal`: it carries the reference prompts' embeddings, so that they are encoded
    once (`reference_prompts` is then not read).
    """

    def __init__(self, model: DiffusionModel, layers: Sequence[ValueLayer], stats: ReferenceStats, tau: float,
                 config: LocalizeConfig, score_tau: float | None = None, reference_prompts: Sequence[str] = (),
                 sample_check: SampleCheck | None = None, signal: SearchSignal | None = None,
                 log: Callable[[str], object] = lambda message: None):
        self.model = model
        self.log = log   # each search's stages as it reaches them: a long search's only sign of progress
        self.sample_check = sample_check
        self.layers = list(layers)
        self.stats = stats
        self.tau = float(tau)
        self.score_tau = self.tau if score_tau is None else float(score_tau)
        self.config = config
        if signal is None:
            reference = (encode_prompts(model, reference_prompts)
                         if config.score == "projection" and reference_prompts else None)
            signal = SearchSignal(model, self.layers, config, reference)
        self.signal = signal
        self.refinement = Refinement(signal, config.mode, config.witness_first)

    # -- the signal's and the refinement's, for callers that hold a Localizer -------------------
    def signal_maps(self, latents: torch.Tensor, cond: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor:
        return self.signal.maps(latents, cond, masks)

    def raw_signal(self, latents: torch.Tensor, cond: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor:
        return self.signal.raw(latents, cond, masks)

    def scores(self, state: _PromptState, sets: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.refinement.scores(state, sets)

    def projection_threshold(self, latents: torch.Tensor, unblocked: torch.Tensor) -> float:
        return self.signal.projection_threshold(latents, unblocked)

    def signal_threshold(self, prompt_ids: Sequence[str], prompts: Sequence[str] | torch.Tensor) -> float:
        """tau of the search signal over reference prompts, given as text or as their embeddings,
        each drawn from its own prompt's samples (as detection draws them)."""
        embeds = prompts if isinstance(prompts, torch.Tensor) else encode_prompts(self.model, prompts)
        return self.signal.reference_threshold([self._latents(i) for i in prompt_ids], embeds)

    def _latents(self, prompt_id: str) -> torch.Tensor:
        seeds = [sample_seed(prompt_id, i, self.config.seed) for i in range(self.config.samples)]
        return initial_noise(seeds, self.model.sample_shape, self.model.device, self.model.dtype)

    # -- NeMo on prompts -------------------------------------------------------------------------
    def localize(self, prompt_id: str, prompt: str) -> LocalizationResult:
        return self.localize_many([(prompt_id, prompt)])[0]

    def localize_many(self, prompts: Sequence[tuple[str, str]]) -> list[LocalizationResult]:
        """NeMo on (prompt id, prompt) pairs: in lockstep mode all searches together, otherwise one
        after another; then each prompt's sample check, if any."""
        counter = UNetCallCounter(self.model.unet)
        costs = [SearchCost() for _ in prompts]
        searches = [self._search(prompt_id, prompt) for prompt_id, prompt in prompts]
        try:
            if self.config.mode == "lockstep":
                outcomes = self.refinement.run_lockstep(searches, costs, lambda: counter.calls)
            else:
                outcomes = [self.refinement.run(search, cost, lambda: counter.calls)
                            for search, cost in zip(searches, costs, strict=True)]
        finally:
            counter.close()
        results = []
        for (result, state, chain), cost in zip(outcomes, costs, strict=True):
            result.unet_calls, result.seconds, result.mode = cost.unet_calls, cost.seconds, self.config.mode
            if self.sample_check is not None and chain:
                began = time.perf_counter()
                self._check_samples(state, chain, result)
                result.sample_seconds = time.perf_counter() - began
            results.append(result)
        return results

    def _search(self, prompt_id: str, prompt: str) -> Search[tuple[LocalizationResult, _PromptState | None, Chain]]:
        """NeMo's search of one prompt, as requests for candidate scores (`mnemo.nemo.refinement`);
        returns the result, the prompt's state and the chain of sets the pruning accepted."""
        c = self.config
        latents = self._latents(prompt_id)
        with torch.no_grad():
            cond = self.model.encode_prompts([prompt])
            activation = value_activations(self.layers, cond)[0].double()
        unblocked, sample_max = self.signal.memorization(latents, cond)
        kept = sample_max > self.tau
        result = LocalizationResult(prompt_id, bool(kept.any()), int(kept.sum()),
                                    unblocked_score=float(sample_max.max()))
        if not kept.any():
            return result, None, []
        kept_latents = latents[kept.to(latents.device)]
        if c.paper_signal:
            state = _PromptState(kept_latents, cond, unblocked[kept.to(unblocked.device)], self.score_tau)
        else:
            signal = self.signal.raw(kept_latents, cond, None)
            score_tau = (self.signal.projection_threshold(kept_latents, signal) if c.score == "projection"
                         else self.score_tau)
            state = _PromptState(kept_latents, cond, self.signal.prepare(signal), score_tau)
        result.score_tau = state.tau

        # Step A: widen the OOD selection until blocking removes the signal
        schedule = selection_schedule(c.theta, c.theta_step, c.theta_min, c.top_k, c.k_max)
        selections = [initial_candidates(self.stats, self.layers, activation, theta, k) for theta, k in schedule]
        sets = [as_mask(lists, neuron_count(self.layers)) for lists in selections]
        found, scores = yield from self.refinement.first_passing(state, sets)
        chosen = min(found, len(sets) - 1)
        result.theta, result.top_k = schedule[chosen]
        initial = sets[chosen]
        result.initial_neurons = torch.nonzero(initial).flatten().tolist()
        result.initial_score = scores[chosen]
        state.threshold = state.tau
        relaxed = found == len(sets)
        if relaxed:
            # a failing score may be a lower bound (witness_first), and a relaxed threshold must not
            # depend on the batch shape: score the widest selection alone
            result.initial_score = self.refinement.settle(state, initial, result.initial_score)
        self.log(f"{prompt_id}: selection at theta {result.theta:g} (top-k {result.top_k}): "
                 f"{len(result.initial_neurons)} neurons, blocked score {result.initial_score:.3f} against tau "
                 f"{state.tau:.3f}" + (f"; no selection passes (on_no_pass: {c.on_no_pass})" if relaxed else ""))
        if relaxed:
            if c.on_no_pass == "report":
                return result, state, []  # even the widest selection leaves the signal: report, don't prune
            result.relaxed = True
            state.threshold = result.initial_score
        result.refine_threshold = state.threshold

        # Step B: refinement, layers then single neurons, last layer to first
        # wider selections first (the sample check may need them; their signal score is not drawn yet)
        chain: Chain = [(wider, None) for wider in reversed(sets[chosen + 1:])]
        chain.append((initial, result.initial_score))
        current, score = yield from self.refinement.refine(
            state, selections[chosen], result.initial_score, self.layers, chain,
            lambda kept, tests: self.log(f"{prompt_id}: layer pass kept {kept} neurons; {tests} single-neuron tests follow"))
        result.refined_neurons = torch.nonzero(current).flatten().tolist()
        result.refined_score = float(score)
        result.success = result.refined_score <= state.tau
        return result, state, chain

    def _check_samples(self, state: _PromptState, chain: Chain, result: LocalizationResult) -> None:
        """The checked set: the refined set widened back along the pruning chain until the samples
        stop copying (the `nemo_checked` mitigation; NeMo's own refined set is left as it is).

        Only where the unblocked samples reproduce one image (see `mnemo.nemo.sample_check`). The
        chain runs from the widest selection of the schedule through the initial one to the
        refined set; the result is its smallest set that passes, or a failed check (the widest
        set) when none does.
        """
        check = self.sample_check
        first = check.config.first_index
        seeds = [sample_seed(result.prompt_id, first + i, self.config.seed) for i in range(check.config.samples)]
        latents = initial_noise(seeds, self.model.sample_shape, self.model.device, self.model.dtype)
        unblocked = check.embed(latents, state.cond)
        result.sample_agreement = check.agreement(unblocked)
        result.sample_checks = 1
        if result.sample_agreement < check.threshold:
            return
        replicas = check.replicas(unblocked)
        similarity: dict[int, float] = {}

        def passes(indices: list[int]) -> list[bool]:
            result.sample_checks += 1
            found = check.replica_similarity(latents, state.cond, replicas, [chain[i][0] for i in indices])
            similarity.update(zip(indices, found, strict=True))
            return [s < check.threshold for s in found]

        chosen = smallest_passing(len(chain), passes, check.sets_per_call())
        index = 0 if chosen is None else chosen
        neurons, score = chain[index]
        if score is None:
            score = float(self.refinement.scores(state, [neurons])[0])
        result.checked_neurons = torch.nonzero(neurons).flatten().tolist()
        result.checked_score = float(score)
        result.sample_similarity = similarity[index]
        result.checked_success = chosen is not None and result.checked_score <= state.tau

    def describe(self, neurons: Sequence[int]) -> list[tuple[str, int]]:
        """Global indices -> (layer name, channel)."""
        out = []
        for neuron in neurons:
            layer, channel = locate(self.layers, neuron)
            out.append((self.layers[layer].name, channel))
        return out


# ---------------------------------------------------------------------------------------------
# One call for the workflow stage
# ---------------------------------------------------------------------------------------------

def reference_table(layers: Sequence[ValueLayer], stats: ReferenceStats) -> pa.Table:
    import pyarrow as pa

    rows = []
    for layer in layers:
        for channel in range(layer.width):
            i = layer.offset + channel
            rows.append({"layer": layer.name, "channel": channel, "neuron": i,
                         "mean": float(stats.mean[i]), "std": float(stats.std[i]), "prompts": stats.prompts})
    return pa.Table.from_pylist(rows)


def results_table(results: Sequence[LocalizationResult], layers: Sequence[ValueLayer], tau: float,
                  config: LocalizeConfig) -> pa.Table:
    import pyarrow as pa

    names = [layer.name for layer in layers]

    def layer_names(neurons):
        return [names[locate(layers, n)[0]] for n in neurons]

    rows = []
    for r in results:
        rows.append({
            "prompt_id": r.prompt_id, "mode": r.mode, "memorized": r.memorized, "kept_samples": r.kept_samples,
            "unblocked_score": r.unblocked_score, "tau": tau, "signal": config.signal,
            "signal_step": config.signal_step, "nemo_steps": config.nemo_steps,
            "nemo_timestep": config.nemo_timestep, "score": config.score, "score_tau": r.score_tau,
            "theta": r.theta, "top_k": r.top_k, "relaxed": r.relaxed, "refine_threshold": r.refine_threshold,
            "initial_neurons": r.initial_neurons, "initial_layers": layer_names(r.initial_neurons),
            "initial_count": len(r.initial_neurons), "initial_score": r.initial_score,
            "refined_neurons": r.refined_neurons, "refined_layers": layer_names(r.refined_neurons),
            "refined_channels": [locate(layers, n)[1] for n in r.refined_neurons],
            "refined_count": len(r.refined_neurons), "refined_score": r.refined_score,
            "checked_neurons": r.checked_neurons,
            "checked_count": len(r.checked_neurons), "checked_score": r.checked_score,
            "checked_success": r.checked_success, "sample_agreement": r.sample_agreement,
            "sample_similarity": r.sample_similarity, "sample_checks": r.sample_checks,
            "sample_seconds": r.sample_seconds,
            "success": r.success, "unet_calls": r.unet_calls, "seconds": r.seconds,
        })
    schema = pa.schema([
        ("prompt_id", pa.string()), ("mode", pa.string()), ("memorized", pa.bool_()), ("kept_samples", pa.int32()),
        ("unblocked_score", pa.float64()), ("tau", pa.float64()), ("signal", pa.string()),
        ("signal_step", pa.int32()), ("nemo_steps", pa.int32()), ("nemo_timestep", pa.int32()),
        ("score", pa.string()), ("score_tau", pa.float64()), ("theta", pa.float64()), ("top_k", pa.int32()),
        ("relaxed", pa.bool_()), ("refine_threshold", pa.float64()),
        ("initial_neurons", pa.list_(pa.int32())), ("initial_layers", pa.list_(pa.string())),
        ("initial_count", pa.int32()), ("initial_score", pa.float64()),
        ("refined_neurons", pa.list_(pa.int32())), ("refined_layers", pa.list_(pa.string())),
        ("refined_channels", pa.list_(pa.int32())), ("refined_count", pa.int32()), ("refined_score", pa.float64()),
        ("checked_neurons", pa.list_(pa.int32())), ("checked_count", pa.int32()),
        ("checked_score", pa.float64()), ("checked_success", pa.bool_()), ("sample_agreement", pa.float64()), ("sample_similarity", pa.float64()),
        ("sample_checks", pa.int32()), ("sample_seconds", pa.float64()),
        ("success", pa.bool_()), ("unet_calls", pa.float64()), ("seconds", pa.float64()),
    ])
    return pa.Table.from_pylist(rows, schema=schema)


def read_localized(path: str, mode: str) -> list[dict]:
    """The search's rows of a neurons table: `compare_modes` adds the other mode's for some prompts."""
    import pyarrow.parquet as pq

    return [row for row in pq.read_table(path).to_pylist() if row["mode"] == mode]


def search_threshold(model: DiffusionModel, layers: Sequence[ValueLayer], stats: ReferenceStats, tau: float,
                     config: LocalizeConfig, reference: Sequence[dict], signal: SearchSignal | None = None) -> float | None:
    """The MS-SSIM tau a blocked set must reach: detection's for the paper's signal, else the
    search signal's own over the reference prompts (rows with prompt_id and prompt). None for
    the projection score, whose threshold is per prompt. A `signal` built with these rows'
    embeddings (`localize_prompts`) spares encoding them again."""
    if config.paper_signal:
        return tau
    if config.score == "projection":
        return None
    localizer = Localizer(model, layers, stats, tau, config, signal=signal)
    embeds = signal.reference if signal is not None and signal.reference is not None else [r["prompt"] for r in reference]
    return localizer.signal_threshold([r["prompt_id"] for r in reference], embeds)


def localize_prompts(model: DiffusionModel, prompts: pa.Table, flagged: Sequence[str], tau: float,
                     config: LocalizeConfig, compare_modes: bool | int = False, log: Callable[[str], object] = print,
                     sample_check: SampleCheck | None = None,
                     ) -> tuple[list[ValueLayer], ReferenceStats, list[LocalizationResult]]:
    """Reference statistics over the reference prompts, then NeMo on every flagged prompt.

    With `compare_modes` prompts are also searched one by one (or, if that is the mode, in
    lockstep), so the two can be checked to agree and their costs compared: true for every
    flagged prompt, a number for the first that many. The reference prompts are encoded once,
    the search signal built once and a localizer once per mode. Returns the layers, reference
    statistics and results.
    """
    from mnemo.nemo.blocking import value_layers

    layers = value_layers(model.unet, config.blocks)
    records = prompts.select(["prompt_id", "prompt", "reference"]).to_pylist()
    texts = {r["prompt_id"]: r["prompt"] for r in records}
    reference = [r for r in records if r["reference"]]
    embeds = encode_prompts(model, [r["prompt"] for r in reference])
    stats = (load_reference_stats(config.reference_stats, layers) if config.reference_stats
             else reference_statistics(model, layers, embeds))
    signal = SearchSignal(model, layers, config, embeds)
    score_tau = search_threshold(model, layers, stats, tau, config, reference, signal)
    if not config.paper_signal:
        where = "per prompt" if score_tau is None else f"{score_tau:.4f}"
        log(f"search: {config.score} of {config.signal} at step {config.signal_step}, tau {where} "
            f"from {len(reference)} reference prompts")
    other_mode = "lockstep" if config.mode == "sequential" else "sequential"
    compared = len(flagged) if compare_modes is True else int(compare_modes)
    modes = [config.mode, other_mode] if compared > 0 else [config.mode]
    localizers = {mode: Localizer(model, layers, stats, tau, replace(config, mode=mode), score_tau,
                                  sample_check=sample_check, signal=signal, log=log)
                  for mode in modes}
    pairs = [(prompt_id, texts[prompt_id]) for prompt_id in flagged]
    results = []
    for mode in modes:
        todo = pairs if mode == config.mode else pairs[:compared]
        # lockstep searches every prompt at once; the others report prompt by prompt as they go
        batches = [todo] if mode == "lockstep" else [[pair] for pair in todo]
        for batch in batches:
            for result in localizers[mode].localize_many(batch):
                log(f"{result.prompt_id} [{mode}]: {len(result.refined_neurons)} neurons "
                    f"(initial {len(result.initial_neurons)}), memorization {result.unblocked_score:.3f} "
                    f"(tau {tau:.3f}), blocked {config.score} {result.refined_score:.3f} "
                    f"(tau {result.score_tau:.3f}), {result.unet_calls:.1f} UNet calls, {result.seconds:.1f} s"
                    + ("" if sample_check is None else
                       f"; samples agree {result.sample_agreement:.2f}, checked set {len(result.checked_neurons)}, "
                       f"blocked {result.sample_similarity:.2f} after {result.sample_checks} sample batches"))
                results.append(result)
    return layers, stats, results
