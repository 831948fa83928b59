"""NeMo written naively from the paper and the official procedure (../shared/reference/nemo.md), as
the yardstick for mnemo's fast search: batch 1, plain forward hooks on `attn2.to_v`, one UNet call
per candidate test, Python lists of neuron indices (duplicates and all). Nothing here imports
mnemo's localization code; it is slow on purpose and only meant for tiny models.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torchmetrics.functional.image import multiscale_structural_similarity_index_measure


def value_projections(unet: torch.nn.Module) -> list[tuple[str, torch.nn.Linear]]:
    """`attn2.to_v` of the down blocks, then the mid block: the paper's search space, forward order."""
    down = [(f"{n}.to_v", m.to_v) for n, m in unet.named_modules() if n.endswith("attn2") and n.startswith("down_blocks")]
    mid = [(f"{n}.to_v", m.to_v) for n, m in unet.named_modules() if n.endswith("attn2") and n.startswith("mid_block")]
    return down + mid


def _zeroing(neurons: list[int]):
    def hook(_module, _inputs, output):
        output = output.clone()
        output[..., neurons] = 0.0
        return output
    return hook


@dataclass
class NaiveResult:
    memorized: bool
    kept: list[int]
    initial: list[list[int]] = field(default_factory=list)     # per layer, in selection order
    initial_score: float = float("nan")
    refined: list[list[int]] = field(default_factory=list)
    refined_score: float = float("nan")
    relaxed: bool = False
    threshold: float = float("nan")
    theta: float = float("nan")
    top_k: int = 0
    unet_calls: int = 0


class NaiveNemo:
    """One prompt at a time, one sample per UNet call, as the official scripts run it."""

    def __init__(self, unet, scheduler, kernel_size: int, sigma: float, betas=(0.33, 0.33, 0.33),
                 steps: int = 50, timestep_index: int = 1, theta: float = 5.0, theta_step: float = 0.25,
                 theta_stop: float = 1.0, k_stop: int = 1280):
        self.unet = unet
        self.layers = value_projections(unet)
        scheduler.set_timesteps(steps)
        self.t = scheduler.timesteps[timestep_index]
        self.kernel_size, self.sigma, self.betas = kernel_size, sigma, tuple(betas)
        self.theta, self.theta_step, self.theta_stop, self.k_stop = theta, theta_step, theta_stop, k_stop
        self.calls = 0

    # -- the signal ----------------------------------------------------------------------------
    def delta(self, x: torch.Tensor, text: torch.Tensor, blocked: list[list[int]] | None = None) -> torch.Tensor:
        """Min-max normalised eps(x_T, t, y) - x_T of one sample (1, C, H, W), neurons zeroed by hooks."""
        handles = []
        for (_, layer), neurons in zip(self.layers, blocked or [[] for _ in self.layers], strict=True):
            if neurons:
                handles.append(layer.register_forward_hook(_zeroing(list(neurons))))
        try:
            with torch.no_grad():
                self.calls += 1
                eps = self.unet(x, self.t, encoder_hidden_states=text).sample
        finally:
            for handle in handles:
                handle.remove()
        d = eps.float() - x.float()
        out = torch.empty_like(d)
        for c in range(d.shape[1]):
            plane = d[0, c]
            out[0, c] = (plane - plane.min()) / (plane.max() - plane.min())
        return out

    def ssim(self, a: torch.Tensor, b: torch.Tensor) -> float:
        return float(multiscale_structural_similarity_index_measure(
            a, b, kernel_size=self.kernel_size, sigma=self.sigma, betas=self.betas, data_range=1.0))

    # -- activations ---------------------------------------------------------------------------
    def activations(self, text: torch.Tensor) -> list[torch.Tensor]:
        """Per layer, mean over token positions of |to_v(text)|: the statistic NeMo's OOD test reads."""
        with torch.no_grad():
            return [layer(text[0]).abs().mean(dim=0).double() for _, layer in self.layers]

    def reference_stats(self, texts: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        per_prompt = [self.activations(t) for t in texts]
        means = [torch.stack([p[i] for p in per_prompt]).mean(0) for i in range(len(self.layers))]
        stds = [torch.stack([p[i] for p in per_prompt]).std(0) for i in range(len(self.layers))]
        return means, stds

    def select(self, activation, means, stds, theta: float, k: int) -> list[list[int]]:
        out = []
        for a, mu, sigma in zip(activation, means, stds, strict=True):
            z = (a - mu).abs() / sigma
            hits = [i for i in range(len(a)) if z[i] > theta]
            top = torch.topk(a, min(k, len(a))).indices.tolist() if k > 0 else []
            out.append(hits + top)
        return out

    # -- the search ----------------------------------------------------------------------------
    def localize(self, text: torch.Tensor, latents: torch.Tensor, tau: float, means, stds,
                 selection_tau: float | None = None) -> NaiveResult:
        """`tau` decides which samples are memorized; `selection_tau` (default tau) is what a blocked
        selection must reach, the official scripts' separate pairwise and selection thresholds."""
        self.calls = 0
        n = len(latents)
        unblocked = [self.delta(latents[i:i + 1], text) for i in range(n)]
        best = [-float("inf")] * n
        for i in range(n):
            for j in range(i + 1, n):
                s = self.ssim(unblocked[i], unblocked[j])
                best[i], best[j] = max(best[i], s), max(best[j], s)
        kept = [i for i in range(n) if best[i] > tau]
        result = NaiveResult(memorized=bool(kept), kept=kept)
        if not kept:
            result.unet_calls = self.calls
            return result

        def score(selection: list[list[int]]) -> float:
            return max(self.ssim(unblocked[i], self.delta(latents[i:i + 1], text, selection)) for i in kept)

        activation = self.activations(text)
        tau = tau if selection_tau is None else selection_tau
        theta, k = self.theta, 0
        blocked_score, threshold = 1.0, tau
        while blocked_score > tau:
            selection = self.select(activation, means, stds, theta, k)
            tested = (theta, k)
            blocked_score = score(selection)
            if blocked_score > tau:
                if theta > self.theta_stop:
                    theta -= self.theta_step
                k += 1
            if theta == self.theta_stop or k >= self.k_stop:
                threshold = blocked_score   # relaxed: refine the last selection against its own score
                result.relaxed = True
                break
        result.theta, result.top_k = tested
        result.initial = [list(layer) for layer in selection]
        result.initial_score = blocked_score
        result.threshold = threshold

        current = [list(layer) for layer in selection]
        for layer in reversed(range(len(self.layers))):            # layer pass, mid block first
            if not current[layer]:
                continue
            trial = [list(neurons) for neurons in current]
            trial[layer] = []
            if score(trial) < threshold:
                current = trial
        for layer in reversed(range(len(self.layers))):            # neuron pass, mid block first
            for neuron in list(current[layer]):                    # selection order; list.remove drops
                trial = [list(neurons) for neurons in current]     # a duplicate's first occurrence
                trial[layer].remove(neuron)
                if score(trial) < threshold:
                    current[layer].remove(neuron)
        result.refined = current
        result.refined_score = score(current)
        result.unet_calls = self.calls
        return result
