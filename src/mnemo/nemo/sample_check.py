"""Checking a neuron set against what it has to change: the samples.

A departure from NeMo, and an oracle risk: it widens sets by the same descriptor and threshold the
mitigation table scores with. So its set is reported apart from NeMo's refined set and blocked by
its own mitigation (`neurons: checked`), drawn on localization seeds and judged on evaluation seeds.

NeMo's refinement prunes a neuron set until the search signal, read at one step, reaches its
threshold. Where memorization is spread over many neurons, a pruned set can satisfy the signal
and still let the samples reproduce the image, while the wider sets the pruning started from do
not: the signal at one step stands in for the samples, and the check asks the samples themselves.

The check draws a few samples with the set blocked, at the guidance scale the mitigated samples
are drawn at, from the same x_T as unblocked ones, and compares them with the copy-detection
descriptor. It only applies when the unblocked samples reproduce one image (the median of each
sample's best match among the others is at or above the copy threshold): otherwise there is no
replica to remove, and the check would only measure how little a small set changes an ordinary
sample. A set passes when its blocked samples no longer show that image: the `quantile` of their
similarities to it is below the threshold. The quantile sits above the median because the search
keeps the smallest set that passes, so it ends on sets that pass by a hair; a lenient rule would
accept sets that leave many samples copying on other seeds.

The image is what replication is measured against: the training images that any unblocked
sample matches above the threshold, when the training descriptors are given (a blocked sample
that drifts to another copy of the same image still copies it), else the unblocked samples'
consensus, their normalised mean descriptor. The consensus alone is lenient: it averages the
copies' distortions away from the image itself, so a blocked sample can sit well below the
threshold from the consensus and still above it from the training image it copies.

The pruning visits a chain of ever smaller sets that all pass the signal; `smallest_passing`
finds the smallest one the samples accept with a k-ary search, each round drawing all its
candidate sets in one batch with per-sample masks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from mnemo.copydetect.descriptors import Descriptor
from mnemo.diffusion.model import DiffusionModel
from mnemo.diffusion.sample import denoise
from mnemo.nemo.blocking import NeuronBlocker, ValueLayer


@dataclass
class SampleCheckConfig:
    samples: int = 16         # memorized samples drawn per candidate set (8: a marginal set passes by luck)
    guidance: float = 3.0     # the scale mitigated samples are drawn at
    steps: int = 25           # DDIM steps, as generation
    batch_size: int = 128     # samples per denoising batch (each runs both CFG halves)
    quantile: float = 0.8     # of the blocked samples' similarities, that must be below the threshold
    first_index: int = 1000   # sample indices it draws from: past generation's, so the samples a
                              # mitigation is judged on are not the ones its set was chosen with


class SampleCheck:
    """Blocked samples vs unblocked ones from the same latents, for one prompt."""

    def __init__(self, model: DiffusionModel, layers: Sequence[ValueLayer], descriptor: Descriptor,
                 threshold: float, config: SampleCheckConfig, factor: float = 0.0,
                 training: torch.Tensor | None = None):
        self.model = model
        self.training = (None if training is None
                         else torch.nn.functional.normalize(training.float(), dim=1).to(model.device))
        self.layers = list(layers)
        self.descriptor = descriptor
        self.threshold = float(threshold)
        self.config = config
        self.factor = factor
        with torch.no_grad():
            self._empty = model.encode_prompts([""])

    def embed(self, latents: torch.Tensor, cond: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        """Descriptors of the samples drawn from `latents` (one prompt), optional per-sample masks."""
        out = []
        size = self.config.batch_size
        for begin in range(0, len(latents), size):
            x = latents[begin:begin + size]
            n = len(x)
            blocker = nullcontext() if masks is None else NeuronBlocker(self.layers, masks[begin:begin + size], self.factor)
            with torch.no_grad(), blocker:
                final = denoise(self.model, x, cond.expand(n, -1, -1), self.config.guidance, self.config.steps,
                                self._empty.expand(n, -1, -1))
            out.append(self.descriptor.embed(self.model.decode(final)).float())
        return torch.nn.functional.normalize(torch.cat(out), dim=1)

    def agreement(self, unblocked: torch.Tensor) -> float:
        """Median over samples of the best similarity to another sample: do they show one image?"""
        similarity = unblocked @ unblocked.T
        similarity.fill_diagonal_(-1.0)
        return float(similarity.max(dim=1).values.median())

    def replicas(self, unblocked: torch.Tensor) -> torch.Tensor:
        """Descriptors of what the unblocked samples copy: the training images any of them matches
        above the threshold, else (no training descriptors, or no match) their consensus."""
        if self.training is not None and len(self.training):
            matched = (unblocked @ self.training.T > self.threshold).any(dim=0)
            if bool(matched.any()):
                return self.training[matched]
        return torch.nn.functional.normalize(unblocked.mean(0), dim=0)[None]

    def replica_similarity(self, latents: torch.Tensor, cond: torch.Tensor, replicas: torch.Tensor,
                           sets: Sequence[torch.Tensor]) -> list[float]:
        """Per neuron set, the `quantile` of its blocked samples' best similarities to the `replicas`."""
        k = len(latents)
        masks = torch.stack(list(sets)).repeat_interleave(k, dim=0)
        blocked = self.embed(latents.repeat(len(sets), *([1] * (latents.ndim - 1))), cond, masks)
        similarity = (blocked @ replicas.T).max(dim=1).values.view(len(sets), k)
        return torch.quantile(similarity, self.config.quantile, dim=1, interpolation="lower").tolist()

    def sets_per_call(self) -> int:
        """Candidate sets drawn per round: as many as fill a batch, whatever the search's mode, so
        that both modes end on the same set even where verdicts along the chain are not monotone."""
        return max(1, self.config.batch_size // self.config.samples)


def _spread(first: int, last: int, count: int) -> list[int]:
    """Up to `count` distinct indices spread evenly over [first, last]."""
    if count <= 0 or first > last:
        return []
    return sorted({round(first + (last - first) * (j + 1) / (count + 1)) for j in range(count)})


def smallest_passing(chain_length: int, passes: Callable[[list[int]], list[bool]], per_call: int) -> int | None:
    """Index of a set in a chain (widest first) that passes while the next smaller one does not.

    The last set is tried first, then the first; then the search narrows the gap between the
    smallest passing and the widest failing set with `per_call` evenly spaced tests per round.
    Every index it returns has passed; None when even the first (widest) set fails.
    """
    verdicts: dict[int, bool] = {}

    def run(indices: list[int]) -> None:
        indices = [i for i in dict.fromkeys(indices) if i not in verdicts]
        if indices:
            verdicts.update(zip(indices, passes(indices), strict=True))

    last = chain_length - 1
    run([last] if per_call == 1 else [last, 0, *_spread(1, last - 1, per_call - 2)])
    if verdicts[last]:
        return last
    run([0])
    if not verdicts[0]:
        return None
    while True:
        passed = max(i for i, ok in verdicts.items() if ok)
        failed = min(i for i, ok in verdicts.items() if not ok and i > passed)
        if failed - passed <= 1:
            return passed
        run(_spread(passed + 1, failed - 1, per_call))
