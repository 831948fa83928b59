"""NeMo (Hintersdorf et al., NeurIPS 2024): localize memorization neurons in the cross-attention
value layers of any diffusers UNet.

The search is NeMo's: an out-of-distribution initial selection against reference activation
statistics, widened until blocking removes the memorization signal, then a greedy causal pruning
(layers, then single neurons). Each candidate test asks "is the blocked model's signal still
like the unblocked, memorized one?" via MS-SSIM.

What is compared is the search's *signal*. `noise_difference` is the paper's, eps(x_T) - x_T at
the first step. `guidance_direction` compares eps_cond - eps_uncond instead (Wen et al.'s
text-conditional prediction, both halves blocked): the part of the prediction that the
cross-attention values can change at all. Where every prompt's first-step noise difference shares
one structure (a pixel-space model of one anatomy), blocking cannot move the paper's signal, so
the search could never succeed; the guidance direction goes to exactly zero when every value
neuron is blocked. `signal_step` reads the signal k DDIM steps in (the blocked model drawing
those steps), for models whose first step decides little of the image; it costs k more UNet
calls per candidate test. Which samples count as memorized is always decided with the paper's signal
and the detection threshold; a blocked set is judged against a threshold of the search signal,
mean + 1 std of its pairwise scores on the reference prompts, as NeMo derives tau.

`score` is how blocked and unblocked signals are compared. `ms_ssim` is the paper's: shape only,
so a direction blocked to half its strength still scores high. `projection` measures how much of
the unblocked direction is left, <blocked, unblocked> / |unblocked|^2, and passes a set when that
is no more than ordinary prompts carry: its tau is mean + 1 std of the reference prompts'
projections (same latents, same step) onto the prompt's unblocked signal.

Two ways to run the same search: `sequential` evaluates one candidate set per UNet call, as the
official code does; `batched` evaluates many candidate sets in one UNet call with a per-sample
neuron mask. Greedy pruning's decisions depend on each other, so it scores a speculative tree of
the likeliest next decisions (`speculation_tree`) and follows the branch the scores take. Both
make the same decisions; the batched one makes far fewer UNet calls, at the cost of scoring sets
off the path taken (free on a GPU with room in the batch, not on a CPU).

An optional `SampleCheck` (`mnemo.nemo.sample_check`) judges the refined set by the samples instead
of the signal: where the pruned set still lets them copy, it widens the set back along the chain
the pruning took. Its UNet calls and seconds are counted apart from the search's.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from mnemo.diffusion.model import DiffusionModel
from mnemo.diffusion.sample import ddim_scheduler, initial_noise, sample_seed
from mnemo.nemo.blocking import NeuronBlocker, ValueLayer, locate, neuron_count, value_activations
from mnemo.nemo.sample_check import SampleCheck, smallest_passing
from mnemo.nemo.signal import (
    memorization_threshold,
    ms_ssim,
    normalize_maps,
    per_sample_max,
    ssim_kernel_size,
)

MODES = ("batched", "sequential")
SIGNALS = ("noise_difference", "guidance_direction")
SCORES = ("ms_ssim", "projection")


def projection(blocked: torch.Tensor, unblocked: torch.Tensor) -> torch.Tensor:
    """Per sample, <blocked, unblocked> / |unblocked|^2: how much of the unblocked signal is left.

    Unlike MS-SSIM of min-max normalised maps it sees magnitude: a direction that keeps its
    shape at half the strength scores 0.5, and blocking every neuron that writes it scores 0.
    """
    b, u = blocked.flatten(1).double(), unblocked.flatten(1).double()
    return ((b * u).sum(1) / (u * u).sum(1).clamp_min(1e-30)).float()


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

    @property
    def paper_signal(self) -> bool:
        """The search compares what detection computed: its tau and unblocked maps carry over."""
        return self.signal == "noise_difference" and self.signal_step == 0 and self.score == "ms_ssim"


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
    score_tau: float = float("nan")  # the threshold the blocked score had to reach
    pruned_count: int = 0           # neurons NeMo's refinement kept, before the sample check widened them
    sample_agreement: float = float("nan")   # unblocked samples' median best match among themselves
    sample_similarity: float = float("nan")  # blocked samples' similarity to the unblocked consensus (check's quantile)
    sample_checks: int = 0          # denoising batches the sample check drew
    sample_seconds: float = 0.0
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
    """NeMo search for one model; `localize(prompt_id, prompt)` per memorized prompt.

    `tau` is the detection threshold (noise difference), deciding which samples are memorized;
    `score_tau` the threshold a blocked set's MS-SSIM score must reach, in the search signal's
    units (the same as `tau` for the paper's signal). The projection score derives its threshold
    per prompt from `reference_prompts` instead.
    """

    def __init__(self, model: DiffusionModel, layers: Sequence[ValueLayer], stats: ReferenceStats, tau: float,
                 config: LocalizeConfig, score_tau: float | None = None, reference_prompts: Sequence[str] = (),
                 sample_check: SampleCheck | None = None):
        self.model = model
        self.sample_check = sample_check
        self.layers = list(layers)
        self.stats = stats
        self.tau = float(tau)
        self.score_tau = self.tau if score_tau is None else float(score_tau)
        self.config = config
        self._reference = None
        if config.score == "projection":
            if not reference_prompts:
                raise ValueError("config key 'localize.score': projection needs reference (non-memorized) prompts")
            with torch.no_grad():
                self._reference = model.encode_prompts(list(reference_prompts))
        self._empty = None
        if config.signal == "guidance_direction":
            with torch.no_grad():
                self._empty = model.encode_prompts([""])
        self.total = neuron_count(self.layers)
        self.scheduler = ddim_scheduler(model, config.steps)
        if not 0 <= config.signal_step < len(self.scheduler.timesteps):
            raise ValueError(f"config key 'localize.signal_step': {config.signal_step} is not a step of the "
                             f"{len(self.scheduler.timesteps)}-step DDIM schedule")
        size = min(model.sample_shape[1:])
        self.kernel = ssim_kernel_size(size, config.betas, config.kernel_size)

    # -- scoring -----------------------------------------------------------------------------
    def signal_maps(self, latents: torch.Tensor, cond: torch.Tensor, masks: torch.Tensor | None,
                    signal: str | None = None, step: int | None = None) -> torch.Tensor:
        """Min-max normalised signal maps (what MS-SSIM compares); see `raw_signal`."""
        return normalize_maps(self.raw_signal(latents, cond, masks, signal, step))

    def raw_signal(self, latents: torch.Tensor, cond: torch.Tensor, masks: torch.Tensor | None,
                   signal: str | None = None, step: int | None = None) -> torch.Tensor:
        """Signal maps for latents (B, ...) at a DDIM step, optional per-sample masks.

        `cond` is one prompt's embedding (1, tokens, dim) or one per latent. At step k > 0 the
        samples first follow k conditional DDIM steps with the same neurons blocked (one UNet
        call each); the signal's call then runs both halves for the guidance direction, each
        sample's mask applied to both.
        """
        signal = signal or self.config.signal
        step = self.config.signal_step if step is None else step
        guided = signal == "guidance_direction"
        size = max(1, self.config.batch_size // 2) if guided else self.config.batch_size
        timesteps = self.scheduler.timesteps
        out = []
        for begin in range(0, len(latents), size):
            x = latents[begin:begin + size]
            embeds = cond.expand(len(x), -1, -1) if len(cond) == 1 else cond[begin:begin + size]
            blocker = (nullcontext() if masks is None
                       else NeuronBlocker(self.layers, masks[begin:begin + size], self.config.factor))
            with torch.no_grad(), blocker:
                for t in timesteps[:step]:
                    eps = self.model.unet(x, t, encoder_hidden_states=embeds).sample
                    x = self.scheduler.step(eps, t, x, eta=0.0).prev_sample
                if guided:
                    both = self.model.unet(torch.cat([x, x]), timesteps[step],
                                           encoder_hidden_states=torch.cat([self._empty.expand(len(x), -1, -1), embeds]))
                    eps_uncond, eps_cond = both.sample.chunk(2)
                    maps = eps_cond - eps_uncond
                else:
                    maps = self.model.unet(x, timesteps[step], encoder_hidden_states=embeds).sample - x
            out.append(maps.float())
        return torch.cat(out)

    def _deltas(self, latents: torch.Tensor, cond: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor:
        """Normalised first-step noise differences: the paper's detection signal."""
        return self.signal_maps(latents, cond, masks, "noise_difference", 0)

    def _latents(self, prompt_id: str) -> torch.Tensor:
        seeds = [sample_seed(prompt_id, i, self.config.seed) for i in range(self.config.samples)]
        return initial_noise(seeds, self.model.sample_shape, self.model.device, self.model.dtype)

    def signal_threshold(self, prompt_ids: Sequence[str], prompts: Sequence[str]) -> float:
        """tau of the search signal: mean + 1 std of its pairwise scores on reference prompts."""
        pairs = torch.combinations(torch.arange(self.config.samples), r=2)
        pairwise = []
        for prompt_id, prompt in zip(prompt_ids, prompts, strict=True):
            with torch.no_grad():
                cond = self.model.encode_prompts([prompt])
            maps = self.signal_maps(self._latents(prompt_id), cond, None)
            pairwise.append(self._ssim(maps[pairs[:, 0]], maps[pairs[:, 1]]))
        return memorization_threshold(torch.cat(pairwise))

    def _ssim(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return ms_ssim(a, b, self.kernel, self.config.betas)

    def _prepare(self, maps: torch.Tensor) -> torch.Tensor:
        """Raw signal maps in the form the score compares: normalised for MS-SSIM."""
        return normalize_maps(maps) if self.config.score == "ms_ssim" else maps

    def _compare(self, unblocked: torch.Tensor, blocked: torch.Tensor) -> torch.Tensor:
        """Per-sample score of blocked maps against the unblocked ones (both `_prepare`d)."""
        if self.config.score == "ms_ssim":
            return self._ssim(unblocked, blocked)
        return projection(blocked, unblocked)

    def projection_threshold(self, latents: torch.Tensor, unblocked: torch.Tensor) -> float:
        """tau of the projection score: mean + 1 std of the reference prompts' projections.

        Each reference prompt's signal from the same latents, projected onto this prompt's
        unblocked signal: how much of the memorized direction an ordinary prompt carries.
        """
        n, k = len(self._reference), len(latents)
        latents = latents.repeat(n, *([1] * (latents.ndim - 1)))
        maps = self.raw_signal(latents, self._reference.repeat_interleave(k, dim=0), None)
        return memorization_threshold(projection(maps, unblocked.repeat(n, *([1] * (unblocked.ndim - 1)))))

    def scores(self, state: _PromptState, sets: Sequence[torch.Tensor]) -> torch.Tensor:
        """Blocked score of each neuron set: the max over kept samples of the per-sample score."""
        if not sets:
            return torch.empty(0)
        k = len(state.latents)
        masks = torch.stack(list(sets)).repeat_interleave(k, dim=0)
        latents = state.latents.repeat(len(sets), *([1] * (state.latents.ndim - 1)))
        blocked = self._prepare(self.raw_signal(latents, state.cond, masks))
        reference = state.unblocked.repeat(len(sets), *([1] * (state.unblocked.ndim - 1)))
        return self._compare(reference, blocked).view(len(sets), k).max(dim=1).values

    def _sets_per_call(self, state: _PromptState) -> int:
        """Candidate sets scored per UNet call: one in sequential mode, as many as fit the batch in batched mode."""
        if self.config.mode == "sequential":
            return 1
        per_set = len(state.latents) * (2 if self.config.signal == "guidance_direction" else 1)
        return max(1, self.config.batch_size // per_set)

    def _first_passing(self, state: _PromptState, sets: Sequence[torch.Tensor],
                       passes: Callable[[float], bool]) -> tuple[int, list[float]]:
        """Index of the first set whose score `passes` (len(sets) if none), evaluating lazily.

        Sequential mode scores one set per UNet call; batched mode scores as many sets as fit
        in one call and stops at the first chunk that contains a passing set.
        """
        per_call = self._sets_per_call(state)
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
               groups: list[torch.Tensor], chain: list[tuple[torch.Tensor, float | None]]) -> tuple[torch.Tensor, float]:
        """Greedy pruning: drop each group (in order) if the set without it stays <= tau.

        Each decision depends on the ones before it, so batched mode scores a speculative tree
        of the next decisions in one call and follows the branch the scores take (see
        `speculation_tree`). Returns the pruned set and its score (every set it returns has
        been scored); appends every set it accepts, with its score, to `chain`.
        """
        position, kept = 0, 0
        per_call = self._sets_per_call(state)
        while position < len(groups):
            keep_rate = (kept + 1) / (position + 2)   # Laplace estimate from this pass's decisions
            tree = speculation_tree(current, groups[position:], keep_rate, per_call)
            outcome = dict(zip(tree, self.scores(state, list(tree.values())).tolist(), strict=True))
            decisions: tuple[bool, ...] = ()
            while decisions in tree:
                dropped = outcome[decisions] <= state.tau
                if dropped:
                    current, score = tree[decisions], outcome[decisions]
                    chain.append((current, score))
                else:
                    kept += 1
                position += 1
                decisions += (dropped,)
        return current, score

    def localize(self, prompt_id: str, prompt: str) -> LocalizationResult:
        counter = UNetCallCounter(self.model.unet)
        began = time.perf_counter()
        try:
            result, state, chain = self._localize(prompt_id, prompt)
        finally:
            counter.close()
        result.unet_calls = counter.calls
        result.seconds = time.perf_counter() - began
        result.mode = self.config.mode
        if self.sample_check is not None and chain:
            began = time.perf_counter()
            self._check_samples(state, chain, result)
            result.sample_seconds = time.perf_counter() - began
        return result

    def _localize(self, prompt_id: str, prompt: str) -> tuple[LocalizationResult, _PromptState | None, list]:
        """NeMo's search; also returns the prompt's state and the chain of sets the pruning accepted."""
        c = self.config
        model = self.model
        latents = self._latents(prompt_id)
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
            return result, None, []
        kept_latents = latents[kept.to(latents.device)]
        if c.paper_signal:
            state = _PromptState(kept_latents, cond, unblocked[kept.to(unblocked.device)], self.score_tau)
        else:
            signal = self.raw_signal(kept_latents, cond, None)
            score_tau = self.projection_threshold(kept_latents, signal) if c.score == "projection" else self.score_tau
            state = _PromptState(kept_latents, cond, self._prepare(signal), score_tau)
        result.score_tau = state.tau

        # Step A: widen the OOD selection until blocking removes the signal
        schedule = self.selection_schedule()
        sets = [self.initial_candidates(activation, theta, k) for theta, k in schedule]
        found, scores = self._first_passing(state, sets, lambda s: s <= state.tau)
        chosen = min(found, len(sets) - 1)
        result.theta, result.top_k = schedule[chosen]
        initial = sets[chosen]
        result.initial_neurons = torch.nonzero(initial).flatten().tolist()
        result.initial_score = scores[chosen] if chosen < len(scores) else float(self.scores(state, [initial])[0])
        if found == len(sets):
            return result, state, []  # even the widest selection leaves the signal: report, don't prune

        # Step B: refinement, layers last-to-first, then single neurons
        layer_groups = []
        for layer in reversed(self.layers):
            group = torch.zeros(self.total, dtype=torch.bool)
            group[layer.offset:layer.offset + layer.width] = True
            group &= initial
            if group.any():
                layer_groups.append(group)
        # wider selections first (the sample check may need them; their signal score is not drawn yet)
        chain: list[tuple[torch.Tensor, float | None]] = [(wider, None) for wider in reversed(sets[chosen + 1:])]
        chain.append((initial, result.initial_score))
        current, score = self._prune(state, initial, result.initial_score, layer_groups, chain)
        neuron_groups = []
        for index in torch.nonzero(current).flatten().tolist():
            group = torch.zeros(self.total, dtype=torch.bool)
            group[index] = True
            neuron_groups.append(group)
        current, score = self._prune(state, current, score, neuron_groups, chain)
        result.pruned_count = int(current.sum())
        result.refined_neurons = torch.nonzero(current).flatten().tolist()
        result.refined_score = float(score)
        result.success = result.refined_score <= state.tau
        return result, state, chain

    def _check_samples(self, state: _PromptState, chain: list[tuple[torch.Tensor, float | None]],
                       result: LocalizationResult) -> None:
        """Widen the refined set back along the pruning chain until the samples stop copying.

        Only where the unblocked samples reproduce one image (see `mnemo.nemo.sample_check`). The
        chain runs from the widest selection of the schedule through the initial one to the
        refined set; the result is its smallest set that passes, or a failed search (the widest
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
            score = float(self.scores(state, [neurons])[0])
        result.refined_neurons = torch.nonzero(neurons).flatten().tolist()
        result.refined_score = float(score)
        result.sample_similarity = similarity[index]
        result.success = chosen is not None and result.refined_score <= state.tau

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
    unblocked: torch.Tensor   # unblocked signal maps of the kept samples, prepared for the score
    tau: float = float("nan")  # a blocked set's score must reach it (<=) to remove the memorization


def speculation_tree(current: torch.Tensor, groups: Sequence[torch.Tensor], keep_rate: float,
                     size: int) -> dict[tuple[bool, ...], torch.Tensor]:
    """The `size` most likely next tests of greedy pruning: the neuron set each one scores, keyed
    by the decisions before it.

    Decision i (True = group i dropped) changes the set every later test removes from, so the
    possible futures form a binary tree; with a group kept at rate `keep_rate` (independently),
    expanding it best-first gives the tests whose outcomes resolve the most decisions per
    call. The key () is the next real test; a key is only present with its parent.
    """
    tree: dict[tuple[bool, ...], torch.Tensor] = {}
    frontier = [(-1.0, 0, (), current)]   # (-probability of reaching the test, tie-break, decisions, set held)
    pushed = 1
    while frontier and len(tree) < size:
        negative, _, decisions, base = heapq.heappop(frontier)
        tested = base & ~groups[len(decisions)]
        tree[decisions] = tested
        if len(decisions) + 1 < len(groups):
            for dropped, chance, next_base in ((True, 1 - keep_rate, tested), (False, keep_rate, base)):
                heapq.heappush(frontier, (negative * chance, pushed, decisions + (dropped,), next_base))
                pushed += 1
    return tree


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


def results_table(results: Sequence[LocalizationResult], layers: Sequence[ValueLayer], tau: float,
                  config: LocalizeConfig):
    import pyarrow as pa

    names = [layer.name for layer in layers]

    def layer_names(neurons):
        return [names[locate(layers, n)[0]] for n in neurons]

    rows = []
    for r in results:
        rows.append({
            "prompt_id": r.prompt_id, "mode": r.mode, "memorized": r.memorized, "kept_samples": r.kept_samples,
            "unblocked_score": r.unblocked_score, "tau": tau, "signal": config.signal,
            "signal_step": config.signal_step, "score": config.score, "score_tau": r.score_tau,
            "theta": r.theta, "top_k": r.top_k,
            "initial_neurons": r.initial_neurons, "initial_layers": layer_names(r.initial_neurons),
            "initial_count": len(r.initial_neurons), "initial_score": r.initial_score,
            "refined_neurons": r.refined_neurons, "refined_layers": layer_names(r.refined_neurons),
            "refined_channels": [locate(layers, n)[1] for n in r.refined_neurons],
            "refined_count": len(r.refined_neurons), "refined_score": r.refined_score,
            "pruned_count": r.pruned_count, "sample_agreement": r.sample_agreement,
            "sample_similarity": r.sample_similarity, "sample_checks": r.sample_checks,
            "sample_seconds": r.sample_seconds,
            "success": r.success, "unet_calls": r.unet_calls, "seconds": r.seconds,
        })
    schema = pa.schema([
        ("prompt_id", pa.string()), ("mode", pa.string()), ("memorized", pa.bool_()), ("kept_samples", pa.int32()),
        ("unblocked_score", pa.float64()), ("tau", pa.float64()), ("signal", pa.string()),
        ("signal_step", pa.int32()), ("score", pa.string()), ("score_tau", pa.float64()), ("theta", pa.float64()), ("top_k", pa.int32()),
        ("initial_neurons", pa.list_(pa.int32())), ("initial_layers", pa.list_(pa.string())),
        ("initial_count", pa.int32()), ("initial_score", pa.float64()),
        ("refined_neurons", pa.list_(pa.int32())), ("refined_layers", pa.list_(pa.string())),
        ("refined_channels", pa.list_(pa.int32())), ("refined_count", pa.int32()), ("refined_score", pa.float64()),
        ("pruned_count", pa.int32()), ("sample_agreement", pa.float64()), ("sample_similarity", pa.float64()),
        ("sample_checks", pa.int32()), ("sample_seconds", pa.float64()),
        ("success", pa.bool_()), ("unet_calls", pa.int32()), ("seconds", pa.float64()),
    ])
    return pa.Table.from_pylist(rows, schema=schema)


def read_localized(path: str, mode: str) -> list[dict]:
    """The search's rows of a neurons table: `compare_modes` adds the other mode's for some prompts."""
    import pyarrow.parquet as pq

    return [row for row in pq.read_table(path).to_pylist() if row["mode"] == mode]


def search_threshold(model: DiffusionModel, layers: Sequence[ValueLayer], stats: ReferenceStats, tau: float,
                     config: LocalizeConfig, reference: Sequence[dict]) -> float | None:
    """The MS-SSIM tau a blocked set must reach: detection's for the paper's signal, else the
    search signal's own over the reference prompts (rows with prompt_id and prompt). None for
    the projection score, whose threshold is per prompt."""
    if config.paper_signal:
        return tau
    if config.score == "projection":
        return None
    return Localizer(model, layers, stats, tau, config).signal_threshold(
        [r["prompt_id"] for r in reference], [r["prompt"] for r in reference])


def localize_prompts(model: DiffusionModel, prompts, flagged: Sequence[str], tau: float, config: LocalizeConfig,
                     compare_modes: bool | int = False, log=print, sample_check: SampleCheck | None = None):
    """Reference statistics over the reference prompts, then NeMo on every flagged prompt.

    With `compare_modes` prompts are also searched in the other mode (batched vs one candidate
    per call), so the two can be checked to agree and their costs compared: true for every
    flagged prompt, a number for the first that many. Returns the layers, reference
    statistics and results.
    """
    from mnemo.nemo.blocking import value_layers

    layers = value_layers(model.unet, config.blocks)
    records = prompts.select(["prompt_id", "prompt", "reference"]).to_pylist()
    stats = reference_statistics(model, layers, [r["prompt"] for r in records if r["reference"]])
    other_mode = next(m for m in MODES if m != config.mode)
    compared = len(flagged) if compare_modes is True else int(compare_modes)
    results = []
    texts = {r["prompt_id"]: r["prompt"] for r in records}
    reference = [r for r in records if r["reference"]]
    score_tau = search_threshold(model, layers, stats, tau, config, reference)
    if not config.paper_signal:
        where = "per prompt" if score_tau is None else f"{score_tau:.4f}"
        log(f"search: {config.score} of {config.signal} at step {config.signal_step}, tau {where} "
            f"from {len(reference)} reference prompts")
    for position, prompt_id in enumerate(flagged):
        for mode in [config.mode, other_mode] if position < compared else [config.mode]:
            localizer = Localizer(model, layers, stats, tau, LocalizeConfig(**{**config.__dict__, "mode": mode}),
                                  score_tau, [r["prompt"] for r in reference], sample_check)
            result = localizer.localize(prompt_id, texts[prompt_id])
            log(f"{prompt_id} [{mode}]: {len(result.refined_neurons)} neurons "
                f"(initial {len(result.initial_neurons)}), memorization {result.unblocked_score:.3f} "
                f"(tau {tau:.3f}), blocked {config.score} {result.refined_score:.3f} (tau {result.score_tau:.3f}), "
                f"{result.unet_calls} UNet calls, {result.seconds:.1f} s"
                + ("" if sample_check is None else
                   f"; samples agree {result.sample_agreement:.2f}, pruned {result.pruned_count}, "
                   f"blocked {result.sample_similarity:.2f} after {result.sample_checks} sample batches"))
            results.append(result)
    return layers, stats, results
