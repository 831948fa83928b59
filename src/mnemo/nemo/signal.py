"""NeMo's memorization signal: the noise difference eps(x_T, t, y) - x_T on the initial
noise, min-max normalised, compared by multi-scale SSIM; tau from reference prompts.

The localization search compares a *search signal* (`SearchSignal`), blocked against unblocked.
`noise_difference` is the paper's, eps(x_T, t) - x_T at the paper's timestep t on the initial
noise (`signal_timestep`). `guidance_direction` compares eps_cond - eps_uncond instead (Wen et
al.'s text-conditional prediction, both halves blocked): the part of the prediction that the
cross-attention values can change at all, which goes to exactly zero when every value neuron is
blocked. `signal_step` reads the signal k DDIM steps in (the blocked model drawing those steps),
for models whose first steps decide little of the image; it costs k more UNet calls per candidate
test. These two are departures for the X-ray demo, reported beside the paper's signal. Which
samples count as memorized is always decided with the paper's signal and the detection threshold;
a blocked set is judged against a threshold of the search signal, mean + 1 std of its pairwise
scores on the reference prompts, as NeMo derives tau.

`score` is how blocked and unblocked signals are compared. `ms_ssim` is the paper's: shape only,
so a direction blocked to half its strength still scores high. `projection` measures how much of
the unblocked direction is left, <blocked, unblocked> / |unblocked|^2, and passes a set when that
is no more than ordinary prompts carry: its tau is mean + 1 std of the reference prompts'
projections (same latents, same step) onto the prompt's unblocked signal.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import Protocol

import torch

from mnemo.diffusion.model import DiffusionModel
from mnemo.diffusion.sample import batch_slices, ddim_scheduler, initial_noise
from mnemo.nemo.blocking import NeuronBlocker, ValueLayer

SIGNALS = ("noise_difference", "guidance_direction")
SCORES = ("ms_ssim", "projection")


def signal_timestep(model: DiffusionModel, steps: int = 50, index: int = 1) -> torch.Tensor:
    """The timestep NeMo reads its noise difference at: `index` of the `steps`-step DDIM schedule.

    The official code runs the 50-step loop, skips i = 0 and returns at i = 1 without ever
    stepping the latents, so it reads timesteps[1] (961 on SD v1.4) on the initial noise.
    """
    timesteps = ddim_scheduler(model, steps).timesteps
    if not 0 <= index < len(timesteps):
        raise ValueError(f"config key 'detect.nemo_timestep': {index} is not a step of the {steps}-step schedule")
    return timesteps[index]


@torch.no_grad()
def noise_differences(model: DiffusionModel, prompts: Sequence[str], seeds: Sequence[Sequence[int]],
                      timestep: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """delta = eps(x_T, t, prompt) - x_T for every (prompt, seed), subtracted in fp32: (prompts, n, C, H, W)."""
    n = len(seeds[0])
    flat_seeds = [s for row in seeds for s in row]
    texts = [p for p in prompts for _ in range(n)]
    out = []
    for part in batch_slices(len(flat_seeds), batch_size):
        latents = initial_noise(flat_seeds[part], model.sample_shape, model.device, model.dtype)
        eps = model.unet(latents, timestep, encoder_hidden_states=model.encode_prompts(texts[part])).sample
        out.append((eps.float() - latents.float()).cpu())
    return torch.cat(out).view(len(prompts), n, *model.sample_shape)


def normalize_maps(delta: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each (sample, channel) map over its pixels, as NeMo does before SSIM."""
    flat = delta.flatten(-2)
    low, high = flat.min(dim=-1, keepdim=True).values, flat.max(dim=-1, keepdim=True).values
    return ((flat - low) / (high - low).clamp_min(1e-12)).view_as(delta)


def ssim_kernel_size(size: int, betas: Sequence[float], requested: int | str = "auto") -> int:
    """Largest odd Gaussian kernel <= 11 that MS-SSIM with len(betas) scales allows at `size`."""
    scale = 2 ** (len(betas) - 1)
    if requested != "auto":
        kernel = int(requested)
        if (kernel - 1) * scale >= size:
            raise ValueError(
                f"config key 'detect.kernel_size': {kernel} is too large for {size}px maps with "
                f"{len(betas)} MS-SSIM scales; use 'auto' or at most {(size - 1) // scale}"
            )
        return kernel
    kernel = 11
    while kernel > 1 and (kernel - 1) * scale >= size:
        kernel -= 2
    if kernel < 3:
        raise ValueError(f"maps of {size}px are too small for MS-SSIM with {len(betas)} scales")
    return kernel


def ms_ssim(a: torch.Tensor, b: torch.Tensor, kernel_size: int, betas: Sequence[float]) -> torch.Tensor:
    """Per-pair MS-SSIM of maps in [0, 1] (torchmetrics), with a Gaussian window of `kernel_size`.

    torchmetrics derives the Gaussian window from sigma, not from kernel_size, so sigma is set to
    give that window: 1.5 for 11 (NeMo's default), proportionally smaller below.
    """
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

    sigma = 1.5 if kernel_size == 11 else (kernel_size - 1) / 2 / 3.5
    return multiscale_structural_similarity_index_measure(
        a.float().cpu(), b.float().cpu(), kernel_size=kernel_size, sigma=sigma, betas=tuple(betas),
        data_range=1.0, reduction="none",
    )


def pairwise_ms_ssim(maps: torch.Tensor, kernel_size: int, betas: Sequence[float],
                     batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """MS-SSIM of every pair within each prompt: maps (P, n, C, H, W) -> (P, n(n-1)/2), pair index."""
    prompts, n = maps.shape[:2]
    pairs = torch.combinations(torch.arange(n), r=2)
    left = maps[:, pairs[:, 0]].flatten(0, 1)
    right = maps[:, pairs[:, 1]].flatten(0, 1)
    scores = [ms_ssim(left[part], right[part], kernel_size, betas) for part in batch_slices(len(left), batch_size)]
    return torch.cat(scores).view(prompts, len(pairs)), pairs


def per_sample_max(pairwise: torch.Tensor, pairs: torch.Tensor, n: int) -> torch.Tensor:
    """Each sample's highest similarity to another sample of its prompt: (P, n)."""
    out = torch.full((pairwise.shape[0], n), -torch.inf)
    for column, (a, b) in enumerate(pairs.tolist()):
        out[:, a] = torch.maximum(out[:, a], pairwise[:, column])
        out[:, b] = torch.maximum(out[:, b], pairwise[:, column])
    return out


def memorization_threshold(reference_pairwise: torch.Tensor) -> float:
    """tau_mem = mean + 1 std of the pairwise scores of non-memorized prompts (NeMo)."""
    values = reference_pairwise.flatten().double()
    return float(values.mean() + values.std())


# ---------------------------------------------------------------------------------------------
# The search signal: what a candidate neuron set is tested on
# ---------------------------------------------------------------------------------------------

def set_scores(per_sample: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Each set's score from its samples' (sets, samples) scores: the max, since a set removes the
    memorization only if it does so for every sample."""
    return [s.max(dim=1).values if len(s) else torch.empty(0) for s in per_sample]


def projection(blocked: torch.Tensor, unblocked: torch.Tensor) -> torch.Tensor:
    """Per sample, <blocked, unblocked> / |unblocked|^2: how much of the unblocked signal is left.

    Unlike MS-SSIM of min-max normalised maps it sees magnitude: a direction that keeps its
    shape at half the strength scores 0.5, and blocking every neuron that writes it scores 0.
    """
    b, u = blocked.flatten(1).double(), unblocked.flatten(1).double()
    return ((b * u).sum(1) / (u * u).sum(1).clamp_min(1e-30)).float()


class SignalSettings(Protocol):
    """What the search signal reads of a search configuration (`LocalizeConfig` has it all)."""

    signal: str
    signal_step: int
    nemo_steps: int
    nemo_timestep: int
    score: str
    steps: int
    batch_size: int
    factor: float
    kernel_size: int | str
    betas: tuple[float, ...]


class SearchSignal:
    """The search signal and score of one model, shared by every prompt and search mode.

    `reference` holds the reference (non-memorized) prompts' embeddings, encoded once by the
    caller: the projection score derives its per-prompt threshold from them.
    """

    def __init__(self, model: DiffusionModel, layers: Sequence[ValueLayer], settings: SignalSettings,
                 reference: torch.Tensor | None = None):
        if settings.score == "projection" and (reference is None or not len(reference)):
            raise ValueError("config key 'localize.score': projection needs reference (non-memorized) prompts")
        self.model = model
        self.layers = list(layers)
        self.settings = settings
        self.reference = reference
        self._empty = None
        if settings.signal == "guidance_direction":
            with torch.no_grad():
                self._empty = model.encode_prompts([""])
        self.scheduler = ddim_scheduler(model, settings.steps)
        self.paper_timestep = signal_timestep(model, settings.nemo_steps, settings.nemo_timestep)
        if not 0 <= settings.signal_step < len(self.scheduler.timesteps):
            raise ValueError(f"config key 'localize.signal_step': {settings.signal_step} is not a step of the "
                             f"{len(self.scheduler.timesteps)}-step DDIM schedule")
        self.kernel = ssim_kernel_size(min(model.sample_shape[1:]), settings.betas, settings.kernel_size)

    @property
    def rows_per_sample(self) -> int:
        """UNet batch rows one sample's signal takes: both guidance halves for the guidance direction."""
        return 2 if self.settings.signal == "guidance_direction" else 1

    def maps(self, latents: torch.Tensor, cond: torch.Tensor, masks: torch.Tensor | None,
             signal: str | None = None, step: int | None = None) -> torch.Tensor:
        """Min-max normalised signal maps (what MS-SSIM compares); see `raw`."""
        return normalize_maps(self.raw(latents, cond, masks, signal, step))

    def raw(self, latents: torch.Tensor, cond: torch.Tensor, masks: torch.Tensor | None,
            signal: str | None = None, step: int | None = None) -> torch.Tensor:
        """Signal maps for latents (B, ...) at a DDIM step, optional per-sample masks.

        `cond` is one prompt's embedding (1, tokens, dim) or one per latent. Step 0 reads the
        signal on the initial noise at the paper's timestep (`signal_timestep`). At step k > 0 the
        samples first follow k conditional DDIM steps of the `steps` schedule with the same
        neurons blocked (one UNet call each), so the signal is read where the blocked sampler
        would be; the signal's call then runs both halves for the guidance direction, each
        sample's mask applied to both.
        """
        settings = self.settings
        signal = signal or settings.signal
        step = settings.signal_step if step is None else step
        guided = signal == "guidance_direction"
        size = max(1, settings.batch_size // 2) if guided else settings.batch_size
        timesteps = self.scheduler.timesteps
        out = []
        for begin in range(0, len(latents), size):
            x = latents[begin:begin + size]
            embeds = cond.expand(len(x), -1, -1) if len(cond) == 1 else cond[begin:begin + size]
            blocker = (nullcontext() if masks is None
                       else NeuronBlocker(self.layers, masks[begin:begin + size], settings.factor))
            with torch.no_grad(), blocker:
                for t in timesteps[:step]:
                    eps = self.model.unet(x, t, encoder_hidden_states=embeds).sample
                    x = self.scheduler.step(eps, t, x, eta=0.0).prev_sample
                read_at = self.paper_timestep if step == 0 else timesteps[step]
                if guided:
                    both = self.model.unet(torch.cat([x, x]), read_at,
                                           encoder_hidden_states=torch.cat([self._empty.expand(len(x), -1, -1), embeds]))
                    eps_uncond, eps_cond = both.sample.chunk(2)
                    maps = eps_cond - eps_uncond
                else:
                    maps = self.model.unet(x, read_at, encoder_hidden_states=embeds).sample.float() - x.float()
            out.append(maps.float())
        return torch.cat(out)

    def ssim(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return ms_ssim(a, b, self.kernel, self.settings.betas)

    def memorization(self, latents: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The paper's normalised noise differences and each sample's highest MS-SSIM to
        another: which samples are memorized is decided on the detection signal, whatever the
        search compares."""
        deltas = self.maps(latents, cond, None, "noise_difference", 0)
        n = len(latents)
        pairs = torch.combinations(torch.arange(n), r=2)
        pairwise = self.ssim(deltas[pairs[:, 0]], deltas[pairs[:, 1]])
        return deltas, per_sample_max(pairwise[None], pairs, n)[0]

    def prepare(self, maps: torch.Tensor) -> torch.Tensor:
        """Raw signal maps in the form the score compares: normalised for MS-SSIM."""
        return normalize_maps(maps) if self.settings.score == "ms_ssim" else maps

    def compare(self, unblocked: torch.Tensor, blocked: torch.Tensor) -> torch.Tensor:
        """Per-sample score of blocked maps against the unblocked ones (both `prepare`d)."""
        if self.settings.score == "ms_ssim":
            return self.ssim(unblocked, blocked)
        return projection(blocked, unblocked)

    def scores(self, latents: torch.Tensor, cond: torch.Tensor, unblocked: torch.Tensor,
               sets: Sequence[torch.Tensor]) -> torch.Tensor:
        """Blocked score of each neuron set, all sets in one pass: the max over the samples of the
        per-sample score, since a set removes the memorization only if it does so for every sample."""
        return self.scores_many([(latents, cond, unblocked, sets)])[0]

    def scores_many(self, requests: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor, Sequence[torch.Tensor]]],
                    ) -> list[torch.Tensor]:
        """`scores` of several prompts' requests (latents, cond, unblocked maps, sets) in one pass:
        every (set, sample) pair of every request is one batch row with its own prompt and mask."""
        return set_scores(self.sample_scores_many(requests))

    def sample_scores_many(self, requests: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor, Sequence[torch.Tensor]]],
                           ) -> list[torch.Tensor]:
        """Per-sample scores of `scores_many`'s requests: (sets, samples) per request."""
        if not any(len(sets) for *_, sets in requests):
            return [torch.empty(0, len(latents)) for latents, *_ in requests]
        rows_latents, rows_cond, rows_masks, rows_unblocked, shapes = [], [], [], [], []
        for latents, cond, unblocked, sets in requests:
            k, n = len(latents), len(sets)
            shapes.append((n, k))
            if not n:
                continue
            rows_latents.append(latents.repeat(n, *([1] * (latents.ndim - 1))))
            rows_cond.append(cond.expand(n * k, -1, -1) if len(cond) == 1 else cond.repeat(n, 1, 1))
            rows_masks.append(torch.stack(list(sets)).repeat_interleave(k, dim=0))
            rows_unblocked.append(unblocked.repeat(n, *([1] * (unblocked.ndim - 1))))
        blocked = self.prepare(self.raw(torch.cat(rows_latents), torch.cat(rows_cond), torch.cat(rows_masks)))
        per_row = self.compare(torch.cat(rows_unblocked), blocked)
        out, begin = [], 0
        for n, k in shapes:
            out.append(per_row[begin:begin + n * k].view(n, k))
            begin += n * k
        return out

    def projection_threshold(self, latents: torch.Tensor, unblocked: torch.Tensor) -> float:
        """tau of the projection score: mean + 1 std of the reference prompts' projections.

        Each reference prompt's signal from the same latents, projected onto this prompt's
        unblocked signal: how much of the memorized direction an ordinary prompt carries.
        """
        n, k = len(self.reference), len(latents)
        latents = latents.repeat(n, *([1] * (latents.ndim - 1)))
        maps = self.raw(latents, self.reference.repeat_interleave(k, dim=0), None)
        return memorization_threshold(projection(maps, unblocked.repeat(n, *([1] * (unblocked.ndim - 1)))))

    def reference_threshold(self, latents: Sequence[torch.Tensor], embeds: torch.Tensor) -> float:
        """tau of the search signal for MS-SSIM: mean + 1 std of its pairwise scores on the
        reference prompts (`embeds`, each with its own samples' `latents`), as NeMo derives tau."""
        pairwise = []
        for x, cond in zip(latents, embeds.split(1), strict=True):
            maps = self.maps(x, cond, None)
            pairs = torch.combinations(torch.arange(len(x)), r=2)
            pairwise.append(self.ssim(maps[pairs[:, 0]], maps[pairs[:, 1]]))
        return memorization_threshold(torch.cat(pairwise))
