"""Memorization detectors that need no training data: Wen et al.'s noise-difference magnitude and
NeMo's first-step SSIM of noise differences, plus Wen's per-token significance.

All of them batch many (prompt, seed) pairs into each UNet call and use the same per-sample seeds
as generation (`sample.sample_seed`), so a detector score and a measured replication refer to
the very same initial noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from mnemo.model import DiffusionModel
from mnemo.sample import ddim_scheduler, denoise, initial_noise, sample_seed


@dataclass
class DetectConfig:
    guidance: float = 7.5
    steps: int = 25
    generations: int = 4
    nemo_samples: int = 10
    kernel_size: int | str = "auto"
    betas: tuple[float, ...] = (0.33, 0.33, 0.33)
    batch_size: int = 64
    seed: int = 0
    token_significance: bool = True
    wen_n: tuple[int, ...] = field(default=(1, 4))

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        self.wen_n = tuple(self.wen_n)
        if max(self.wen_n) > self.generations:
            raise ValueError("config key 'detect.wen_n': every n must be <= detect.generations")


def _seeds(prompt_ids: Sequence[str], n: int, seed: int) -> list[list[int]]:
    return [[sample_seed(pid, i, seed) for i in range(n)] for pid in prompt_ids]


def _batches(total: int, size: int):
    for begin in range(0, total, size):
        yield slice(begin, min(total, begin + size))


# ---------------------------------------------------------------------------------------------
# Wen et al.: || eps(x_t, prompt) - eps(x_t, empty) ||
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def wen_magnitudes(model: DiffusionModel, prompt_ids: Sequence[str], prompts: Sequence[str],
                   config: DetectConfig, progress: bool = True) -> torch.Tensor:
    """(prompts, generations, steps) text-conditional noise magnitudes along the sampling path."""
    from tqdm import tqdm

    n = config.generations
    seeds = [s for row in _seeds(prompt_ids, n, config.seed) for s in row]
    texts = [p for p in prompts for _ in range(n)]
    empty = model.encode_prompts([""])
    out = torch.zeros(len(seeds), config.steps)
    bar = tqdm(total=len(seeds), desc="wen magnitude", disable=not progress, mininterval=5)
    for part in _batches(len(seeds), config.batch_size):
        latents = initial_noise(seeds[part], model.sample_shape, model.device, model.dtype)
        cond = model.encode_prompts(texts[part])
        uncond = empty.expand(len(cond), -1, -1)

        def record(i, _t, _x, eps_uncond, eps_cond, part=part):
            out[part, i] = (eps_cond - eps_uncond).float().flatten(1).norm(dim=1).cpu()

        denoise(model, latents, cond, config.guidance, config.steps, uncond, callback=record)
        bar.update(part.stop - part.start)
    bar.close()
    return out.view(len(prompt_ids), n, config.steps)


def summarize_wen(magnitudes: torch.Tensor, ns: Sequence[int]) -> dict[str, torch.Tensor]:
    """Per prompt: first-step and all-step means over the first n generations, for each n."""
    columns = {}
    for n in ns:
        columns[f"wen_first_n{n}"] = magnitudes[:, :n, 0].mean(dim=1)
        columns[f"wen_all_n{n}"] = magnitudes[:, :n, :].mean(dim=(1, 2))
    return columns


# ---------------------------------------------------------------------------------------------
# NeMo: pairwise MS-SSIM of first-step noise differences
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def first_step_noise_differences(model: DiffusionModel, prompts: Sequence[str], seeds: Sequence[Sequence[int]],
                                 steps: int, batch_size: int = 64) -> torch.Tensor:
    """delta = eps(x_T, t_1, prompt) - x_T for every (prompt, seed): (prompts, n, C, H, W)."""
    n = len(seeds[0])
    flat_seeds = [s for row in seeds for s in row]
    texts = [p for p in prompts for _ in range(n)]
    t1 = ddim_scheduler(model, steps).timesteps[0]
    out = []
    for part in _batches(len(flat_seeds), batch_size):
        latents = initial_noise(flat_seeds[part], model.sample_shape, model.device, model.dtype)
        eps = model.unet(latents, t1, encoder_hidden_states=model.encode_prompts(texts[part])).sample
        out.append((eps - latents).float().cpu())
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
    scores = [ms_ssim(left[part], right[part], kernel_size, betas) for part in _batches(len(left), batch_size)]
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


@dataclass
class NemoDetection:
    pairwise: torch.Tensor        # (P, pairs)
    sample_max: torch.Tensor      # (P, n)
    kernel_size: int


def nemo_detection(model: DiffusionModel, prompt_ids: Sequence[str], prompts: Sequence[str],
                   config: DetectConfig) -> NemoDetection:
    seeds = _seeds(prompt_ids, config.nemo_samples, config.seed)
    delta = first_step_noise_differences(model, prompts, seeds, config.steps, config.batch_size)
    kernel = ssim_kernel_size(min(delta.shape[-2:]), config.betas, config.kernel_size)
    pairwise, pairs = pairwise_ms_ssim(normalize_maps(delta), kernel, config.betas)
    return NemoDetection(pairwise, per_sample_max(pairwise, pairs, config.nemo_samples), kernel)


# ---------------------------------------------------------------------------------------------
# Wen et al.: which tokens drive the magnitude
# ---------------------------------------------------------------------------------------------

def token_significance(model: DiffusionModel, prompt_ids: Sequence[str], prompts: Sequence[str],
                       config: DetectConfig) -> list[list[tuple[str, float]]]:
    """Per prompt, (token, ||d magnitude / d token embedding||) at the first step over n generations."""
    embedding = model.text_encoder.get_input_embeddings()
    captured: list[torch.Tensor] = []

    def keep_grad(_module, _inputs, output):
        output = output.detach().requires_grad_(True)
        captured.append(output)
        return output

    t1 = ddim_scheduler(model, config.steps).timesteps[0]
    n = config.generations
    empty = model.encode_prompts([""]).detach()
    results = []
    for pid, text in zip(prompt_ids, prompts, strict=True):
        seeds = [sample_seed(pid, i, config.seed) for i in range(n)]
        latents = initial_noise(seeds, model.sample_shape, model.device, model.dtype)
        handle = embedding.register_forward_hook(keep_grad)
        try:
            captured.clear()
            cond = model.encode_prompts([text])
        finally:
            handle.remove()
        with torch.enable_grad():
            eps_cond = model.unet(latents, t1, encoder_hidden_states=cond.expand(n, -1, -1)).sample
            with torch.no_grad():
                eps_uncond = model.unet(latents, t1, encoder_hidden_states=empty.expand(n, -1, -1)).sample
            magnitude = (eps_cond - eps_uncond).float().flatten(1).norm(dim=1).mean()
            (grad,) = torch.autograd.grad(magnitude, captured[0])
        ids = model.token_ids([text])[0].tolist()
        tokens = model.tokenizer.convert_ids_to_tokens(ids)
        norms = grad[0].float().norm(dim=-1).tolist()
        special = {model.tokenizer.pad_token_id}
        results.append([(tok, float(v)) for tok, v, i in zip(tokens, norms, ids, strict=True) if i not in special])
    return results


# ---------------------------------------------------------------------------------------------
# One call for the workflow stage
# ---------------------------------------------------------------------------------------------

def detect_prompts(model: DiffusionModel, prompts, config: DetectConfig, progress: bool = True) -> dict:
    """Run every detector over a prompt table (prompt_id, prompt, group, memorized_truth, reference).

    Returns Arrow tables: per-prompt `scores`, NeMo `pairwise` values (the rows tau is computed
    from) and token `significance`, plus the threshold record.
    """
    import pyarrow as pa

    ids = prompts.column("prompt_id").to_pylist()
    texts = prompts.column("prompt").to_pylist()
    reference = torch.tensor(prompts.column("reference").to_pylist(), dtype=torch.bool)

    magnitudes = wen_magnitudes(model, ids, texts, config, progress)
    wen = summarize_wen(magnitudes, config.wen_n)
    nemo = nemo_detection(model, ids, texts, config)
    if not reference.any():
        raise ValueError("the prompt set has no reference (non-memorized) prompts to calibrate tau on")
    tau = memorization_threshold(nemo.pairwise[reference])
    above = (nemo.sample_max > tau).sum(dim=1)

    scores = {
        "prompt_id": ids,
        "prompt": texts,
        "group": prompts.column("group").to_pylist(),
        "memorized_truth": prompts.column("memorized_truth").to_pylist(),
        "reference": reference.tolist(),
        **{name: values.tolist() for name, values in wen.items()},
        "nemo_max_ssim": nemo.pairwise.max(dim=1).values.tolist(),
        "nemo_mean_ssim": nemo.pairwise.mean(dim=1).tolist(),
        "nemo_samples_above_tau": above.tolist(),
        "nemo_flagged": (above > 0).tolist(),
        "nemo_tau": [tau] * len(ids),
    }
    n_pairs = nemo.pairwise.shape[1]
    pairwise = pa.table({
        "prompt_id": [pid for pid in ids for _ in range(n_pairs)],
        "pair": list(range(n_pairs)) * len(ids),
        "ms_ssim": nemo.pairwise.flatten().tolist(),
        "reference": [r for r in reference.tolist() for _ in range(n_pairs)],
    })
    rows = []
    if config.token_significance:
        for pid, tokens in zip(ids, token_significance(model, ids, texts, config), strict=True):
            rows += [{"prompt_id": pid, "position": i, "token": t, "significance": v}
                     for i, (t, v) in enumerate(tokens)]
    significance = pa.Table.from_pylist(rows, schema=pa.schema([
        pa.field("prompt_id", pa.string()), pa.field("position", pa.int32()),
        pa.field("token", pa.string()), pa.field("significance", pa.float32()),
    ]))
    threshold = {
        "tau": tau,
        "reference_prompts": int(reference.sum()),
        "reference_pairs": int(reference.sum()) * n_pairs,
        "kernel_size": nemo.kernel_size,
        "betas": list(config.betas),
        "samples": config.nemo_samples,
    }
    return {"scores": pa.table(scores), "pairwise": pairwise, "significance": significance,
            "threshold": threshold, "magnitudes": magnitudes}
