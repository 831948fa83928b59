"""Semantic validation of generated X-rays: label fidelity and Fréchet distance.

Memorization metrics say whether a model copies; they do not say whether it (or a mitigation)
still draws what the prompt asked for. Two checks answer that here:

* label fidelity - a small multi-label CNN trained on the real cache predicts the 14 CheXpert
  observations, the view (frontal) and the sex (male); its per-attribute ROC AUC on generated
  samples against the labels parsed back from their prompts says how much of the prompt survived.
  The same evaluation on held-out real patients is the ceiling it can be read against.
* Fréchet distance - between real and generated images in the in-house copy-detection trunk's
  feature space (`CopyDetectNet.features`), computed by torchmetrics' FID with a custom feature
  extractor (no torch-fidelity / Inception needed). It is not Inception FID: values are only
  comparable under one feature space name (`FeatureExtractor.feature_space`) and one sample size,
  since the estimator is biased upwards for small N.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from torch import nn

from mnemo.data import chexpert
from mnemo.detect.metrics import roc_auc
from mnemo.nn import (
    ShuffledBatches,
    adamw_warmup_cosine,
    config_from_any,
    group_norm,
    resize,
    to_channels,
    unit_float,
)

__all__ = [
    "ATTRIBUTES",
    "ClassifierTrainConfig",
    "FeatureExtractor",
    "FrechetResult",
    "LabelClassifier",
    "evaluate_classifier",
    "evaluate_probabilities",
    "fit_from_cache",
    "frechet_distance",
    "frechet_distance_images",
    "label_fidelity_table",
    "light_augment",
    "masked_bce",
    "per_prompt_accuracy",
    "predict_proba",
    "targets_from_cache",
    "targets_from_prompts",
    "train_classifier",
]

ATTRIBUTES: tuple[str, ...] = (*chexpert.LABEL_COLUMNS, "frontal", "male")
N_ATTRIBUTES = len(ATTRIBUTES)
_OBS_PHRASES: tuple[tuple[str, ...], ...] = tuple(
    tuple(o.lower().split()) for o in chexpert.OBSERVATIONS
)
_FRONTAL, _MALE = ATTRIBUTES.index("frontal"), ATTRIBUTES.index("male")
_N_OBS = len(chexpert.OBSERVATIONS)


# --------------------------------------------------------------------------------------------
# targets


def targets_from_cache(
    table: pa.Table, blank_as_negative: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cache columns -> (targets float32 (N, 16), known bool (N, 16)) in `ATTRIBUTES` order.

    Labels are already 1/0/NaN after the cache's uncertainty policy; NaN (and any other value)
    is unknown and masked out of the loss. Unknown view/sex values are unknown too.
    blank_as_negative=True reads NaN labels as known negatives instead - the prompts' own reading
    (a prompt lists only positives), so a classifier trained that way is calibrated against
    prompt-derived targets; CheXpert blanks are mostly negatives, phantom blanks always are.
    """
    n = table.num_rows
    targets = np.zeros((n, N_ATTRIBUTES), dtype=np.float32)
    known = np.zeros((n, N_ATTRIBUTES), dtype=bool)
    for j, column in enumerate(chexpert.LABEL_COLUMNS):
        values = table.column(column).to_numpy(zero_copy_only=False).astype(np.float64)
        ok = (values == 0.0) | (values == 1.0)
        targets[:, j] = np.where(ok, values, 0.0)
        known[:, j] = ok | (blank_as_negative & np.isnan(values))
    for j, column, positive, negative in (
        (_FRONTAL, "view", "frontal", "lateral"),
        (_MALE, "sex", "male", "female"),
    ):
        words = [str(v or "").strip().lower() for v in table.column(column).to_pylist()]
        targets[:, j] = [w == positive for w in words]
        known[:, j] = [w in (positive, negative) for w in words]
    return torch.from_numpy(targets), torch.from_numpy(known)


def _parse_prompt(prompt: str, strict: bool) -> tuple[list[float], list[bool]]:
    words = prompt.split()
    target = [0.0] * N_ATTRIBUTES
    known = [False] * N_ATTRIBUTES
    recognised = 0
    i = 0
    while i < len(words):
        word = words[i]
        for j, phrase in enumerate(_OBS_PHRASES):
            if tuple(w.lower() for w in words[i : i + len(phrase)]) == phrase:
                target[j] = 1.0
                i += len(phrase)
                recognised += 1
                break
        else:
            low = word.lower()
            if low in ("frontal", "lateral"):
                target[_FRONTAL], known[_FRONTAL] = float(low == "frontal"), True
            elif low in ("female", "male"):
                target[_MALE], known[_MALE] = float(low == "male"), True
            elif not (
                low in ("ap", "pa", "unknown-sex", "unknown-age")
                or (low.endswith("s") and low[:-1].isdigit())
            ):
                if strict:
                    raise ValueError(f"prompt {prompt!r}: unrecognised word {word!r}")
                i += 1
                continue
            recognised += 1
            i += 1
    # The prompt lists every positive observation, so absent ones are known negatives - but only
    # for a label prompt: an empty (unconditional) or foreign prompt says nothing about findings.
    if recognised:
        known[:_N_OBS] = [True] * _N_OBS
    return target, known


def targets_from_prompts(
    prompts: Sequence[str], strict: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Parse `prompts.prompt_text` strings back into (targets (N, 16), known (N, 16)).

    Observations named in the prompt are 1, the others 0, all known (the prompt lists the
    positives); view and sex are known when their words are present. A prompt without any schema
    word (e.g. '' for unconditional samples) has nothing known. strict=True raises on any word
    outside the prompt schema instead of ignoring it.
    """
    parsed = [_parse_prompt(str(p), strict) for p in prompts]
    targets = torch.tensor([t for t, _ in parsed], dtype=torch.float32).reshape(-1, N_ATTRIBUTES)
    known = torch.tensor([k for _, k in parsed], dtype=torch.bool).reshape(-1, N_ATTRIBUTES)
    return targets, known


# --------------------------------------------------------------------------------------------
# classifier


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), group_norm(cout), nn.ReLU()
    )


class LabelClassifier(nn.Module):
    """Small multi-label CNN: logits for the 16 `ATTRIBUTES` from one grey image.

    GroupNorm keeps predictions independent of batch composition (real and generated images
    are scored alike); average plus max pooling lets small findings (devices, fractures) count.
    Inputs of any size and channel count are made grey and resized to `input_size`; the stride-2
    stem keeps the cost of a 64 px input near that of a 32 px one (ResNet-style).
    """

    def __init__(
        self,
        channels: Sequence[int] = (16, 32, 64),
        input_size: int = 64,
        n_outputs: int = N_ATTRIBUTES,
        in_channels: int = 1,
        dropout: float = 0.1,
        stem_stride: int = 2,
    ) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if not channels:
            raise ValueError("channels must name at least one stage")
        self.config = {
            "channels": list(channels),
            "input_size": int(input_size),
            "n_outputs": int(n_outputs),
            "in_channels": int(in_channels),
            "dropout": float(dropout),
            "stem_stride": int(stem_stride),
        }
        self.input_size = int(input_size)
        self.in_channels = int(in_channels)
        self.n_outputs = int(n_outputs)
        self.attributes: list[str] = list(ATTRIBUTES) if n_outputs == N_ATTRIBUTES else [
            f"output_{i}" for i in range(n_outputs)
        ]
        self.training_metadata: dict[str, Any] | None = None
        layers: list[nn.Module] = [_conv(in_channels, channels[0], int(stem_stride))]
        prev = channels[0]
        for c in channels[1:]:
            layers += [_conv(prev, c, 2), _conv(c, c, 1)]
            prev = c
        self.trunk = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(2 * prev, n_outputs)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 / [0, 1] float images -> normalised float (N, in_channels, size, size)."""
        return resize(to_channels(unit_float(images), self.in_channels), (self.input_size, self.input_size))

    def forward_prepared(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from already `prepare`d (and possibly augmented) [0, 1] images."""
        h = self.trunk((x - 0.5) / 0.25)
        pooled = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
        return self.head(self.dropout(pooled))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images (uint8, or float in [0, 1]) -> multi-label logits (N, n_outputs)."""
        return self.forward_prepared(self.prepare(images))

    def save_pretrained(
        self, directory: str | Path, metadata: Mapping[str, Any] | None = None
    ) -> Path:
        """Write config.json + model.safetensors (plus training metadata, if any)."""
        from mnemo.savable import save_module

        config: dict[str, Any] = {
            "format": "mnemo.label-classifier/1",
            **self.config,
            "attributes": self.attributes,
        }
        meta = metadata if metadata is not None else self.training_metadata
        if meta is not None:
            config["training"] = dict(meta)
        save_module(self, directory, config)
        return Path(directory)

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, device: str | torch.device = "cpu"
    ) -> LabelClassifier:
        from mnemo.savable import load_files

        cfg, state, _ = load_files(directory, "label classifier",
                                   "train one with train_classifier and save_pretrained")
        keys = ("channels", "input_size", "n_outputs", "in_channels", "dropout", "stem_stride")
        model = cls(**{k: cfg[k] for k in keys if k in cfg})
        if "attributes" in cfg:
            model.attributes = list(cfg["attributes"])
        model.training_metadata = cfg.get("training")
        model.load_state_dict(state)
        return model.to(device).eval()


def masked_bce(logits: torch.Tensor, targets: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Mean BCE-with-logits over known entries only; unknown targets get no loss and no gradient."""
    mask = known.to(logits.dtype)
    safe_targets = torch.where(known, targets.to(logits.dtype), torch.zeros_like(logits))
    loss = F.binary_cross_entropy_with_logits(logits, safe_targets, reduction="none")
    return (loss * mask).sum() / mask.sum().clamp_min(1.0)


@dataclass
class ClassifierTrainConfig:
    """Defaults sized for ~900 32-64 px grey images on a small CPU (about a minute).

    Determinism holds per seed *and* thread count (CPU reductions differ between thread counts).
    These convolutions are small: one torch thread is often faster than two on a busy machine.
    """

    channels: tuple[int, ...] = (16, 32, 64)
    input_size: int = 64
    dropout: float = 0.1
    stem_stride: int = 2
    steps: int = 400
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 20
    seed: int = 0
    shift: float = 0.04  # max translation, as a fraction of the image side
    noise: float = 0.02  # std of added Gaussian noise on the [0, 1] scale
    log_every: int = 20
    progress: bool = True

    @classmethod
    def from_any(
        cls, config: ClassifierTrainConfig | Mapping[str, Any] | None
    ) -> ClassifierTrainConfig:
        """Accept a dataclass, a (workflow config) dict with unknown keys ignored, or None."""
        return config_from_any(cls, config)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channels"] = list(d["channels"])
        return d


def light_augment(x: torch.Tensor, gen: torch.Generator, shift: float, noise: float) -> torch.Tensor:
    """Random sub-pixel translation (border padding) plus Gaussian noise; no flips - laterality
    (heart on the left, device side) is part of what the labels describe."""
    n = x.shape[0]
    if shift > 0:
        offsets = (torch.rand(n, 2, generator=gen) * 2 - 1) * (2 * shift)  # grid units span 2
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0
        theta[:, :, 2] = offsets
        grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if noise > 0:
        x = x + noise * torch.randn(x.shape, generator=gen).to(x.device)
    return x.clamp(0.0, 1.0)


def _check_targets(n: int, targets: torch.Tensor, known: torch.Tensor, n_outputs: int) -> None:
    for name, t in (("targets", targets), ("known", known)):
        if tuple(t.shape) != (n, n_outputs):
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected ({n}, {n_outputs})")


def train_classifier(
    images: torch.Tensor,
    targets: torch.Tensor,
    known: torch.Tensor,
    config: ClassifierTrainConfig | Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
    log: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[LabelClassifier, list[dict[str, Any]]]:
    """Fit a `LabelClassifier` with masked BCE and AdamW (warm-up + cosine); deterministic per seed
    on the CPU. Images stay uint8 in memory and are resized per batch, so any cache size fits.
    Returns the model in eval mode and a per-step history (loss, lr, seconds)."""
    cfg = ClassifierTrainConfig.from_any(config)
    dev = torch.device(device)
    n = images.shape[0]
    n_outputs = targets.shape[1] if targets.ndim == 2 else N_ATTRIBUTES
    _check_targets(n, targets, known, n_outputs)
    if n < 1:
        raise ValueError("train_classifier needs at least one image")
    if not bool(known.any()):
        raise ValueError("train_classifier: no known target at all")
    targets = targets.float()
    known = known.bool()

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = LabelClassifier(
            cfg.channels, cfg.input_size, n_outputs, dropout=cfg.dropout, stem_stride=cfg.stem_stride
        )
    model.to(dev)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt, sched = adamw_warmup_cosine(model, cfg.lr, cfg.weight_decay, cfg.steps, cfg.warmup_steps)
    from tqdm.auto import tqdm

    bar = tqdm(range(cfg.steps), desc="label-classifier", disable=not cfg.progress)
    history: list[dict[str, Any]] = []
    batches = ShuffledBatches(n, cfg.batch_size, gen)
    model.train()
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed + 1)  # dropout draws from the global generator
        for step in bar:
            idx = next(batches)
            x = model.prepare(images[idx].to(dev))
            x = light_augment(x, gen, cfg.shift, cfg.noise)
            loss = masked_bce(model.forward_prepared(x), targets[idx].to(dev), known[idx].to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            rec = {
                "step": step + 1,
                "loss": float(loss.detach()),
                "lr": float(opt.param_groups[0]["lr"]),
                "seconds": time.perf_counter() - t0,
            }
            history.append(rec)
            bar.set_postfix(loss=f"{rec['loss']:.3f}")
            if log is not None and (step % cfg.log_every == 0 or step + 1 == cfg.steps):
                log(rec)
    model.eval()
    model.training_metadata = {
        "config": cfg.to_dict(),
        "n_images": int(n),
        "n_known": int(known.sum()),
        "final": {k: history[-1][k] for k in ("loss", "seconds")} if history else {},
    }
    return model, history


# --------------------------------------------------------------------------------------------
# evaluation


@torch.no_grad()
def predict_proba(
    model: LabelClassifier, images: torch.Tensor, batch_size: int = 256
) -> torch.Tensor:
    """Sigmoid probabilities (N, n_outputs) as float32 on the CPU, in eval mode."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        outs = [
            torch.sigmoid(model(images[i : i + batch_size].to(device))).float().cpu()
            for i in range(0, images.shape[0], batch_size)
        ]
    finally:
        model.train(was_training)
    if not outs:
        return torch.empty(0, model.n_outputs)
    return torch.cat(outs)


def evaluate_probabilities(
    probs: torch.Tensor,
    targets: torch.Tensor,
    known: torch.Tensor,
    attributes: Sequence[str] = ATTRIBUTES,
) -> dict[str, Any]:
    """Per-attribute ROC AUC over known rows (NaN with only one class), accuracy at 0.5, counts,
    mean_auc over the attributes whose AUC is defined (n_auc of them) and the same over the 14
    findings only (mean_auc_findings, n_auc_findings)."""
    n, k = probs.shape
    _check_targets(n, targets, known, k)
    if len(attributes) != k:
        raise ValueError(f"{len(attributes)} attribute names for {k} outputs")
    auc, acc, n_known, n_pos = {}, {}, {}, {}
    for j, name in enumerate(attributes):
        rows = known[:, j].bool()
        y = targets[rows, j] > 0.5
        p = probs[rows, j].double()
        n_known[name] = int(rows.sum())
        n_pos[name] = int(y.sum())
        auc[name] = roc_auc(p, y) if n_known[name] else math.nan
        acc[name] = float(((p > 0.5) == y).double().mean()) if n_known[name] else math.nan
    defined = [v for v in auc.values() if not math.isnan(v)]
    findings = [auc[a] for a in attributes if a in chexpert.LABEL_COLUMNS and not math.isnan(auc[a])]
    return {
        "auc": auc,
        "accuracy": acc,
        "n_known": n_known,
        "n_positive": n_pos,
        "mean_auc": float(np.mean(defined)) if defined else math.nan,
        "n_auc": len(defined),
        # view and sex are easy; the findings alone say whether the pathology was drawn
        "mean_auc_findings": float(np.mean(findings)) if findings else math.nan,
        "n_auc_findings": len(findings),
        "n_images": int(n),
    }


def evaluate_classifier(
    model: LabelClassifier,
    images: torch.Tensor,
    targets: torch.Tensor,
    known: torch.Tensor,
    batch_size: int = 256,
) -> dict[str, Any]:
    """ROC AUC per attribute of `model` on images against (targets, known).

    On held-out real patients this is the classifier's own accuracy (the ceiling); on generated
    samples against the labels of their prompts it is label fidelity.
    """
    probs = predict_proba(model, images, batch_size)
    return evaluate_probabilities(probs, targets, known, model.attributes)


def fit_from_cache(
    table: pa.Table,
    config: ClassifierTrainConfig | Mapping[str, Any] | None = None,
    holdout_fraction: float = 0.2,
    holdout_seed: int = 0,
    device: str | torch.device = "cpu",
    log: Callable[[dict[str, Any]], None] | None = None,
    blank_as_negative: bool = True,
) -> tuple[LabelClassifier, list[dict[str, Any]], dict[str, Any]]:
    """Train on a cache with whole patients held out; returns (model, history, held-out metrics).

    The held-out evaluation (against the same cache targets the model was trained on) is
    recorded in the model's training metadata, so a saved classifier carries the accuracy its
    fidelity numbers should be read against. Blanks count as negatives by default, as in the
    prompts the fidelity targets come from: trained on positives-or-negatives only, the
    classifier's probabilities are biased upwards (phantom 'No Finding' is never negative, only
    blank) and per-prompt accuracy at 0.5 on real held-out images fell from 0.92 to 0.62.
    """
    from mnemo.data.dataset import cache_images, patient_holdout

    images = cache_images(table)
    targets, known = targets_from_cache(table, blank_as_negative)
    held = torch.from_numpy(
        patient_holdout(table.column("patient_id").to_pylist(), holdout_fraction, holdout_seed)
    )
    if bool(held.all()):
        raise ValueError("holdout_fraction leaves no training patient")
    train = ~held
    model, history = train_classifier(images[train], targets[train], known[train], config, device, log)
    if bool(held.any()):
        metrics = evaluate_classifier(model, images[held], targets[held], known[held])
    else:
        metrics = {"mean_auc": math.nan, "n_auc": 0, "n_images": 0}
    metrics["holdout_fraction"] = float(holdout_fraction)
    metrics["holdout_seed"] = int(holdout_seed)
    metrics["n_train_images"] = int(train.sum())
    metrics["blank_as_negative"] = bool(blank_as_negative)
    if model.training_metadata is not None:
        model.training_metadata["holdout"] = metrics
    return model, history, metrics


def _prompts_per_sample(
    prompt_ids: Sequence[str], prompts: Sequence[str] | Mapping[str, str]
) -> list[str]:
    if isinstance(prompts, Mapping):
        return [prompts[str(pid)] for pid in prompt_ids]
    if len(prompts) != len(prompt_ids):
        raise ValueError(
            f"{len(prompts)} prompts for {len(prompt_ids)} samples; pass one prompt per sample "
            "or a mapping prompt_id -> prompt"
        )
    return [str(p) for p in prompts]


def label_fidelity_table(
    model: LabelClassifier,
    images: torch.Tensor,
    prompt_ids: Sequence[str],
    prompts: Sequence[str] | Mapping[str, str],
    batch_size: int = 256,
) -> pa.Table:
    """One row per attribute: AUC of the classifier on generated samples against their prompts.

    `prompts` is either one prompt per sample or a mapping prompt_id -> prompt. The mean AUC
    (over attributes with a defined AUC) and its count are in the schema metadata.
    """
    texts = _prompts_per_sample(prompt_ids, prompts)
    if len(texts) != images.shape[0]:
        raise ValueError(f"{len(texts)} prompts for {images.shape[0]} images")
    targets, known = targets_from_prompts(texts)
    result = evaluate_classifier(model, images, targets, known, batch_size)
    names = list(model.attributes)
    table = pa.table(
        {
            "attribute": pa.array(names, pa.string()),
            "auc": pa.array([result["auc"][a] for a in names], pa.float64()),
            "accuracy": pa.array([result["accuracy"][a] for a in names], pa.float64()),
            "n_known": pa.array([result["n_known"][a] for a in names], pa.int64()),
            "n_positive": pa.array([result["n_positive"][a] for a in names], pa.int64()),
        }
    )
    return table.replace_schema_metadata(
        {
            "mnemo.mean_auc": repr(result["mean_auc"]),
            "mnemo.n_auc": str(result["n_auc"]),
            "mnemo.mean_auc_findings": repr(result["mean_auc_findings"]),
            "mnemo.n_auc_findings": str(result["n_auc_findings"]),
            "mnemo.n_images": str(result["n_images"]),
        }
    )


def per_prompt_accuracy(
    model: LabelClassifier,
    images: torch.Tensor,
    prompt_ids: Sequence[str],
    prompts: Sequence[str] | Mapping[str, str],
    batch_size: int = 256,
) -> pa.Table:
    """Per prompt_id: mean over its samples and known attributes of (prob > 0.5) == target.

    AUC needs both classes, which one prompt never has; accuracy at 0.5 is the per-prompt view
    (e.g. which held-out label combinations a model fails to draw).
    """
    texts = _prompts_per_sample(prompt_ids, prompts)
    if len(texts) != images.shape[0]:
        raise ValueError(f"{len(texts)} prompts for {images.shape[0]} images")
    targets, known = targets_from_prompts(texts)
    correct = (predict_proba(model, images, batch_size) > 0.5) == (targets > 0.5)
    rows: dict[str, dict[str, Any]] = {}
    for i, pid in enumerate(prompt_ids):
        row = rows.setdefault(
            str(pid), {"prompt": texts[i], "n_samples": 0, "n_correct": 0, "n_known": 0}
        )
        row["n_samples"] += 1
        row["n_correct"] += int((correct[i] & known[i]).sum())
        row["n_known"] += int(known[i].sum())
    ids = list(rows)
    return pa.table(
        {
            "prompt_id": pa.array(ids, pa.string()),
            "prompt": pa.array([rows[p]["prompt"] for p in ids], pa.string()),
            "n_samples": pa.array([rows[p]["n_samples"] for p in ids], pa.int64()),
            "n_known": pa.array([rows[p]["n_known"] for p in ids], pa.int64()),
            "accuracy": pa.array(
                [rows[p]["n_correct"] / rows[p]["n_known"] if rows[p]["n_known"] else math.nan
                 for p in ids],
                pa.float64(),
            ),
        }
    )


# --------------------------------------------------------------------------------------------
# Fréchet distance


def frechet_distance(
    real_features: torch.Tensor | np.ndarray, fake_features: torch.Tensor | np.ndarray
) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, D), in float64.

    Same formula as torchmetrics' FID: |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 sum sqrt(eig(S1 S2)),
    with unbiased covariances; biased upwards for small N, so compare only at equal N.
    """
    a = torch.as_tensor(real_features).double()
    b = torch.as_tensor(fake_features).double()
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected (N, D) feature sets of one D, got {tuple(a.shape)}, {tuple(b.shape)}")
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError("Fréchet distance needs at least 2 samples per set")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    mean_term = (mu_a - mu_b).square().sum()
    cross = torch.linalg.eigvals(cov_a @ cov_b).sqrt().real.sum()
    return float(mean_term + cov_a.trace() + cov_b.trace() - 2 * cross)


class FeatureExtractor(nn.Module):
    """`CopyDetectNet.features` as a torchmetrics FID feature extractor.

    torchmetrics calls a custom `feature` module on whatever update() receives and reads its
    width from `num_features`; this module takes uint8 or [0, 1] float images with 1 or 3 channels
    (colour is averaged to grey), never trains and never tracks gradients.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        if not hasattr(net, "features"):
            raise TypeError("FeatureExtractor needs a CopyDetectNet (a module with .features)")
        self.net = net.eval()
        self.num_features = int(net.feature_dim)

    @property
    def feature_space(self) -> str:
        """Name to print next to every distance: values compare only within one feature space."""
        fingerprint = getattr(self.net, "fingerprint", None) or "unsaved"
        size = getattr(self.net, "input_size", "?")
        return f"copydetect-trunk-{self.num_features}@{size}px:{fingerprint}"

    def train(self, mode: bool = True) -> FeatureExtractor:
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        device = next(self.net.parameters()).device
        return self.net.features(unit_float(images.to(device))).float()


class FrechetResult(NamedTuple):
    """A Fréchet distance with what it needs to be read: sample sizes and the feature space."""

    distance: float
    n_real: int
    n_fake: int
    feature_space: str

    def __float__(self) -> float:
        return float(self.distance)


def frechet_distance_images(
    extractor: FeatureExtractor | nn.Module,
    real_uint8: torch.Tensor,
    fake_uint8: torch.Tensor,
    batch_size: int = 256,
) -> FrechetResult:
    """Fréchet distance between image sets via torchmetrics' FrechetInceptionDistance with the
    custom extractor (no torch-fidelity needed). Grey (N, 1, H, W) or RGB uint8 images."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if not isinstance(extractor, FeatureExtractor):
        extractor = FeatureExtractor(extractor)
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if real_uint8.shape[0] < 2 or fake_uint8.shape[0] < 2:
        raise ValueError("Fréchet distance needs at least 2 images per set")
    metric = FrechetInceptionDistance(feature=extractor, normalize=False)
    metric = metric.to(next(extractor.net.parameters()).device)  # states next to the features
    for images, real in ((real_uint8, True), (fake_uint8, False)):
        for i in range(0, images.shape[0], batch_size):
            metric.update(images[i : i + batch_size], real=real)
    distance = float(metric.compute())
    return FrechetResult(
        distance, int(real_uint8.shape[0]), int(fake_uint8.shape[0]), extractor.feature_space
    )


def evaluate_sample_set(
    classifier: LabelClassifier,
    extractor: FeatureExtractor | None,
    real_images: torch.Tensor,
    samples: pa.Table,
    prompt_groups: Mapping[str, str],
) -> list[dict[str, Any]]:
    """Label fidelity and Fréchet distance of one sample set, per guidance scale.

    Label AUC is computed over the samples of the prompts that are not planted (what a model
    should still draw), and over all samples; the Fréchet distance is against all real images.
    """
    from mnemo.data.images import decode_pngs

    rows = samples.select(["prompt_id", "prompt", "guidance", "image"]).to_pylist()
    out = []
    for guidance in sorted({r["guidance"] for r in rows}):
        chosen = [r for r in rows if r["guidance"] == guidance]
        images = decode_pngs([r["image"] for r in chosen])
        ids = [r["prompt_id"] for r in chosen]
        texts = [r["prompt"] for r in chosen]
        record: dict[str, Any] = {"guidance": guidance, "samples": len(chosen)}
        for scope, keep in (("all", lambda g: True), ("not_planted", lambda g: g != "planted")):
            index = [i for i, pid in enumerate(ids) if keep(prompt_groups.get(pid, ""))]
            if not index:
                continue
            table = label_fidelity_table(classifier, images[index], [ids[i] for i in index],
                                         [texts[i] for i in index])
            meta = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
            record[f"label_auc_{scope}"] = float(meta["mnemo.mean_auc"])
            record[f"label_auc_findings_{scope}"] = float(meta["mnemo.mean_auc_findings"])
            accuracy = per_prompt_accuracy(classifier, images[index], [ids[i] for i in index],
                                           [texts[i] for i in index]).column("accuracy").to_pylist()
            record[f"prompt_accuracy_{scope}"] = float(np.nanmean(accuracy)) if accuracy else math.nan
        if extractor is not None:
            result = frechet_distance_images(extractor, real_images, images)
            record.update(frechet_distance=result.distance, frechet_feature_space=result.feature_space,
                          frechet_real=result.n_real, frechet_fake=result.n_fake)
        out.append(record)
    return out
