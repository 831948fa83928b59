"""Image descriptors for copy detection: pixel correlation, an in-house SSCD-style net, SSCD itself.

Every descriptor maps uint8 images (N, C, H, W) to L2-normalised float32 rows so that cosine
similarity is a dot product, and carries a `recipe` string. Absolute similarities are comparable
only under one recipe (SSCD under NeMo's 320 px preprocessing is not SSCD under Wen's 224 px
crop), so the recipe is meant to be written next to every number computed from it.

`calibrate` turns a descriptor into a decision rule: it measures how well mild copies separate
from other patients' images on held-out data and picks the threshold at a fixed false-positive rate.
"""

from __future__ import annotations

import hashlib
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mnemo.copydetect.augment import copy_edit, strong_augment
from mnemo.nn import (
    ShuffledBatches,
    adamw_warmup_cosine,
    as_uint8,
    config_from_any,
    group_norm,
    resize,
    to_channels,
    unit_float,
)

__all__ = [
    "CopyDetectNet",
    "CopyDetectTrainConfig",
    "Descriptor",
    "PixelDescriptor",
    "SSCDDescriptor",
    "build_descriptor",
    "calibrate",
    "embed_images",
    "info_nce",
    "koleo",
    "train_config_dict",
    "train_copydetect",
]

SSCD_SOURCE = (
    "SSCD weights are TorchScript files published by Meta at "
    "https://github.com/facebookresearch/sscd-copy-detection (e.g. sscd_disc_mixup.torchscript.pt, "
    "CC-BY-NC); download one yourself and put its path in the config - mnemo never downloads"
)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@runtime_checkable
class Descriptor(Protocol):
    """What the memorization metrics need from a descriptor, whatever its origin."""

    name: str
    recipe: str
    dim: int

    def embed(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor: ...


# --------------------------------------------------------------------------------------------
# shared helpers


def _batched(
    fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """Run fn over slices of the batch (bounded memory), gather float32 rows on the CPU."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    outs = [fn(images[i : i + batch_size]).float().cpu() for i in range(0, len(images), batch_size)]
    if not outs:
        raise ValueError("no images to embed")
    return torch.cat(outs)


def embed_images(
    descriptor: Descriptor, images: torch.Tensor, batch_size: int = 256
) -> torch.Tensor:
    """Functional spelling of `descriptor.embed` for pipeline code that holds a descriptor."""
    return descriptor.embed(images, batch_size=batch_size)


# --------------------------------------------------------------------------------------------
# pixel correlation


class PixelDescriptor:
    """Pearson correlation of downsampled grey images, the baseline of medical memorization papers.

    Area-averaging to size x size drops pixel noise and small misregistration; per-image z-scoring
    makes the dot product a correlation, blind to brightness and contrast. A flat image has no
    correlation with anything and embeds to the zero vector.
    """

    name = "pixel"

    def __init__(self, size: int = 16, device: str | torch.device = "cpu") -> None:
        self.size = int(size)
        self.dim = self.size * self.size
        self.recipe = f"pixel:{self.size}x{self.size}:zscore"
        self.device = torch.device(device)

    def _embed_batch(self, images: torch.Tensor) -> torch.Tensor:
        x = to_channels(unit_float(images.to(self.device)), 1).double()
        x = F.interpolate(x, size=(self.size, self.size), mode="area").flatten(1)
        x = x - x.mean(dim=1, keepdim=True)
        return (x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)).float()

    def embed(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        return _batched(self._embed_batch, images, batch_size)


# --------------------------------------------------------------------------------------------
# SSCD (TorchScript weights given by the user)

_SSCD_RECIPES = {
    "nemo": "sscd:nemo-320-imagenet",
    "wen": "sscd:wen-256-crop224-half",
}


class SSCDDescriptor:
    """Meta's SSCD copy descriptor from a user-supplied TorchScript file.

    Two preprocessing recipes exist in the literature and give different absolute similarities:
    'nemo' (resize 320x320, ImageNet mean/std) and 'wen' (shorter side 256, centre crop 224,
    mean/std 0.5). The recipe string names the preprocessing and the weights file.
    """

    name = "sscd"

    def __init__(
        self,
        weights_path: str | Path,
        recipe: str = "nemo",
        device: str | torch.device = "cpu",
    ) -> None:
        if recipe not in _SSCD_RECIPES:
            raise ValueError(f"unknown SSCD recipe {recipe!r}; use one of {sorted(_SSCD_RECIPES)}")
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"SSCD weights not found at {str(path)!r}. {SSCD_SOURCE}")
        self.weights_path = path
        self.preprocessing = recipe
        self.device = torch.device(device)
        with warnings.catch_warnings():
            # SSCD ships only as TorchScript; torch 2.9+ flags torch.jit as deprecated
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            self.model = torch.jit.load(str(path), map_location=self.device).eval()
        stem = path.name.removesuffix(".pt").removesuffix(".torchscript")
        self.recipe = f"{_SSCD_RECIPES[recipe]}:{stem}"
        side = 320 if recipe == "nemo" else 224
        with torch.no_grad():
            probe = self._forward(torch.zeros(1, 3, side, side, device=self.device))
        self.dim = int(probe.shape[1])

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) -> the normalised 3-channel tensor the scripted model sees."""
        x = to_channels(unit_float(images.to(self.device)), 3)
        if self.preprocessing == "nemo":
            x = resize(x, (320, 320))
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        else:
            h, w = x.shape[-2:]
            short, long = (h, w) if h <= w else (w, h)
            new_long = int(256 * long / short)  # torchvision Resize(256) rounding
            x = resize(x, (256, new_long) if h <= w else (new_long, 256))
            h, w = x.shape[-2:]
            top, left = round((h - 224) / 2), round((w - 224) / 2)
            x = x[..., top : top + 224, left : left + 224]
            mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
        m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
        s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
        return (x - m) / s

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return F.normalize(out.float().flatten(1), dim=1)

    def embed(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        with torch.no_grad():
            return _batched(lambda b: self._forward(self.preprocess(b)), images, batch_size)


# --------------------------------------------------------------------------------------------
# in-house copy-detection net


class _Block(nn.Module):
    """Residual basic block; GroupNorm keeps embeddings independent of batch composition."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = group_norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = group_norm(cout)
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), group_norm(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return F.relu(y + self.skip(x))


class GeM(nn.Module):
    """Generalised-mean pooling (p=3 in SSCD): between average (p=1) and max pooling."""

    def __init__(self, p: float = 3.0, learnable: bool = False, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        if learnable:
            self.p = nn.Parameter(torch.tensor(float(p)))
        else:
            self.register_buffer("p", torch.tensor(float(p)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.p.clamp(1.0, 8.0)
        return x.clamp_min(self.eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


class CopyDetectNet(nn.Module):
    """SSCD recipe at small scale: CNN trunk, GeM pooling, linear projection, L2 normalisation.

    Inputs of any size are resized to `input_size` first, so one trained net serves 32 px phantoms
    and 512 px exports alike; the first stage keeps full resolution because look-alike X-rays differ
    in fine detail. `features` (pooled trunk output) doubles as a feature space for Fréchet distance.
    """

    name = "copydetect"

    def __init__(
        self,
        channels: Sequence[int] = (16, 32, 64, 128),
        dim: int = 128,
        input_size: int = 64,
        in_channels: int = 1,
        gem_p: float = 3.0,
        learn_p: bool = False,
    ) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if not channels:
            raise ValueError("channels must name at least one stage")
        self.config = {
            "channels": list(channels),
            "dim": int(dim),
            "input_size": int(input_size),
            "in_channels": int(in_channels),
            "gem_p": float(gem_p),
            "learn_p": bool(learn_p),
        }
        self.dim = int(dim)
        self.input_size = int(input_size)
        self.in_channels = int(in_channels)
        self.fingerprint: str | None = None
        self.training_metadata: dict[str, Any] | None = None
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, channels[0], 3, 1, 1, bias=False),
            group_norm(channels[0]),
            nn.ReLU(),
        )
        blocks, prev = [], channels[0]
        for i, c in enumerate(channels):
            blocks.append(_Block(prev, c, stride=1 if i == 0 else 2))
            prev = c
        self.trunk = nn.Sequential(*blocks)
        self.pool = GeM(gem_p, learnable=learn_p)
        self.proj = nn.Linear(prev, dim)
        self.feature_dim = prev

    @property
    def recipe(self) -> str:
        grey = "grey" if self.in_channels == 1 else f"{self.in_channels}ch"
        return f"copydetect:{self.input_size}px:{grey}:d{self.dim}:{self.fingerprint or 'unsaved'}"

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        x = to_channels(x.float(), self.in_channels)
        x = resize(x, (self.input_size, self.input_size))
        return (x - 0.5) / 0.25

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled trunk features (N, feature_dim) before projection; not normalised."""
        return self.pool(self.trunk(self.stem(self._prepare(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (uint8, or float in [0, 1]) -> L2-normalised descriptors (N, dim)."""
        return F.normalize(self.proj(self.features(x)), dim=1)

    def embed(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                return _batched(lambda b: self(unit_float(b.to(device))), images, batch_size)
        finally:
            self.train(was_training)

    def save_pretrained(
        self, directory: str | Path, metadata: Mapping[str, Any] | None = None
    ) -> Path:
        """Write config.json + model.safetensors; the file hash becomes the recipe fingerprint."""
        from mnemo.savable import save_module

        out = Path(directory)
        config = {"format": "mnemo.copydetect/1", **self.config}
        if metadata is None:
            metadata = self.training_metadata
        if metadata is not None:
            config["training"] = dict(metadata)
        weights = save_module(self, out, config)
        self.fingerprint = _file_fingerprint(weights)
        return out

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, device: str | torch.device = "cpu"
    ) -> CopyDetectNet:
        from mnemo.savable import load_files

        cfg, state, weights = load_files(directory, "copydetect model",
                                         "train one with train_copydetect and save_pretrained")
        keys = ("channels", "dim", "input_size", "in_channels", "gem_p", "learn_p")
        net = cls(**{k: cfg[k] for k in keys if k in cfg})
        net.load_state_dict(state)
        net.fingerprint = _file_fingerprint(weights)
        return net.to(device).eval()


def _file_fingerprint(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


# --------------------------------------------------------------------------------------------
# training


@dataclass
class CopyDetectTrainConfig:
    """Defaults sized for 2 CPU cores and 32-64 px grey images (a few minutes)."""

    channels: tuple[int, ...] = (16, 32, 64, 128)
    dim: int = 128
    input_size: int = 64
    in_channels: int = 1
    gem_p: float = 3.0
    learn_p: bool = False
    steps: int = 300
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 20
    temperature: float = 0.07
    koleo_weight: float = 0.1
    strength: float = 1.0
    # No flips by default: a copied X-ray keeps its laterality, and on look-alike chest phantoms
    # flip invariance cost TPR@1%FPR (0.84 vs 0.995 with flip_p=0; benchmarks/descriptor_calibration).
    flip_p: float = 0.0
    progress: bool = True

    @classmethod
    def from_any(
        cls, config: CopyDetectTrainConfig | Mapping[str, Any] | None
    ) -> CopyDetectTrainConfig:
        """Accept a dataclass, a (workflow config) dict with unknown keys ignored, or None."""
        return config_from_any(cls, config)


def _pair_masks(groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(target index of each view's twin, mask of pairs showing the same image, twin excluded)."""
    n2 = groups.shape[0]
    target = torch.arange(n2, device=groups.device).roll(n2 // 2)
    same = groups[:, None] == groups[None, :]
    same[torch.arange(n2, device=groups.device), target] = False
    return target, same


def info_nce(
    z: torch.Tensor, temperature: float, groups: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric InfoNCE over 2B views: each view's positive is its twin, the other 2B-2 are negatives.

    `groups` (2B,) marks views of byte-identical training images (planted duplicates); such pairs
    are left out instead of being pushed apart. Returns (loss, top-1 accuracy of finding the twin).
    """
    n2 = z.shape[0]
    if groups is None:
        groups = torch.arange(n2, device=z.device) % (n2 // 2)
    target, same = _pair_masks(groups)
    sim = (z @ z.T / temperature).masked_fill(same, float("-inf"))
    loss = F.cross_entropy(sim, target)
    acc = (sim.argmax(dim=1) == target).float().mean()
    return loss, acc


def koleo(z: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
    """KoLeo entropy regulariser (SSCD): -mean log distance to the nearest *other image* in batch.

    Distances come from the dot product of unit rows, clamped away from 0 so that identical
    rows give a finite gradient.
    """
    n2 = z.shape[0]
    if groups is None:
        groups = torch.arange(n2, device=z.device) % (n2 // 2)
    same = groups[:, None] == groups[None, :]
    d2 = (2.0 - 2.0 * (z @ z.T)).clamp_min(1e-8).masked_fill(same, float("inf"))
    nn_dist = d2.min(dim=1).values.sqrt()
    if not torch.isfinite(nn_dist).any():
        return z.sum() * 0.0
    return -torch.log(nn_dist[torch.isfinite(nn_dist)] + 1e-4).mean()


def _prepare_training_images(images: torch.Tensor, cfg: CopyDetectTrainConfig) -> torch.Tensor:
    x = to_channels(unit_float(images), cfg.in_channels)
    return resize(x, (cfg.input_size, cfg.input_size)).clamp(0.0, 1.0)


def train_copydetect(
    images: torch.Tensor,
    config: CopyDetectTrainConfig | Mapping[str, Any] | None = None,
    seed: int = 0,
    log: Callable[[dict[str, Any]], None] | None = None,
    device: str | torch.device = "cpu",
    log_every: int = 10,
) -> tuple[CopyDetectNet, list[dict[str, Any]]]:
    """Train the in-house descriptor SSCD-style on (training-set) images; deterministic per seed.

    Each step draws B images, makes two strong augmentations of each, and minimises symmetric
    InfoNCE plus koleo_weight x KoLeo. Augmentation happens at `input_size` (after the same
    resize the net applies), so crops stay smooth on small images. Returns the net in eval mode
    and a per-step history (loss, infonce, koleo, acc, lr, seconds).
    """
    cfg = CopyDetectTrainConfig.from_any(config)
    dev = torch.device(device)
    n = images.shape[0]
    if n < 2:
        raise ValueError("train_copydetect needs at least 2 images")
    base = _prepare_training_images(images, cfg).to(dev)
    # byte-identical images (planted duplicates) share a group: never used as each other's negatives
    _, dup_group = torch.unique(images.reshape(n, -1), dim=0, return_inverse=True)
    dup_group = dup_group.to(dev)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = CopyDetectNet(
            cfg.channels, cfg.dim, cfg.input_size, cfg.in_channels, cfg.gem_p, cfg.learn_p
        ).to(dev)
    gen = torch.Generator().manual_seed(seed)
    opt, sched = adamw_warmup_cosine(net, cfg.lr, cfg.weight_decay, cfg.steps, cfg.warmup_steps)
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a declared dependency
        tqdm = None

    steps = range(cfg.steps)
    bar = tqdm(steps, desc="copydetect", disable=not cfg.progress) if tqdm else steps
    history: list[dict[str, Any]] = []
    batches = ShuffledBatches(n, cfg.batch_size, gen)
    net.train()
    t0 = time.perf_counter()
    for step in bar:
        idx = next(batches).to(dev)
        xb = base[idx]
        views = torch.cat(
            [
                strong_augment(xb, gen, cfg.strength, cfg.flip_p),
                strong_augment(xb, gen, cfg.strength, cfg.flip_p),
            ]
        )
        groups = dup_group[idx].repeat(2)
        z = net(views)
        loss_nce, acc = info_nce(z, cfg.temperature, groups)
        loss_kol = koleo(z, groups)
        loss = loss_nce + cfg.koleo_weight * loss_kol
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        rec = {
            "step": step + 1,
            "loss": float(loss.detach()),
            "infonce": float(loss_nce.detach()),
            "koleo": float(loss_kol.detach()),
            "acc": float(acc),
            "lr": float(opt.param_groups[0]["lr"]),
            "seconds": time.perf_counter() - t0,
        }
        history.append(rec)
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{rec['loss']:.3f}", acc=f"{rec['acc']:.2f}")
        if log is not None and (step % log_every == 0 or step + 1 == cfg.steps):
            log(rec)
    net.eval()
    net.training_metadata = {
        "config": train_config_dict(cfg),
        "seed": int(seed),
        "n_images": int(n),
        "final": {k: history[-1][k] for k in ("loss", "infonce", "koleo", "acc", "seconds")}
        if history
        else {},
    }
    return net, history


# --------------------------------------------------------------------------------------------
# calibration


def _quantile(x: torch.Tensor, q: float) -> float:
    if x.numel() == 0:
        return float("nan")
    return float(torch.quantile(x.double(), q))


def calibrate(
    descriptor: Descriptor,
    images: torch.Tensor,
    patient_ids: Sequence[str] | np.ndarray,
    study_ids: Sequence[str] | np.ndarray | None = None,
    seed: int = 0,
    fpr: float = 0.01,
    batch_size: int = 256,
    max_negatives: int = 2_000_000,
) -> dict[str, Any]:
    """Threshold a descriptor on held-out images: copies vs other patients.

    Queries are `copy_edit` versions of the images (what a generated near-copy looks like) and
    references the originals. Positives: query i vs its own original. Negatives: query i vs
    original j of a different patient (subsampled to about max_negatives). The threshold is the
    smallest similarity with FPR <= fpr under the rule "sim >= threshold is a copy". Pairs of the
    same patient in different studies are reported apart: a descriptor that flags them is
    matching the patient, not the image, which matters when reading memorization of X-rays.
    Same-patient figures are NaN when there are no such pairs.
    """
    from torchmetrics.functional.classification import binary_auroc, binary_roc

    n = images.shape[0]
    pids = np.asarray(patient_ids).astype(str)
    if len(pids) != n:
        raise ValueError(f"{len(pids)} patient ids for {n} images")
    _, pcode = np.unique(pids, return_inverse=True)
    pcode_t = torch.as_tensor(pcode.reshape(-1), dtype=torch.long)
    if study_ids is not None:
        sids = np.asarray(study_ids).astype(str)
        if len(sids) != n:
            raise ValueError(f"{len(sids)} study ids for {n} images")
        _, scode = np.unique(np.char.add(np.char.add(pids, "\x00"), sids), return_inverse=True)
        scode_t = torch.as_tensor(scode.reshape(-1), dtype=torch.long)
    else:
        scode_t = None

    gen = torch.Generator().manual_seed(seed)
    x = unit_float(images)
    edited = as_uint8(copy_edit(x, gen))
    ref = descriptor.embed(images if images.dtype == torch.uint8 else as_uint8(x), batch_size)
    qry = descriptor.embed(edited, batch_size)

    positives = (qry * ref).sum(dim=1)
    n_neg_total = int(n * n - torch.bincount(pcode_t).pow(2).sum())
    keep_p = min(1.0, max_negatives / max(1, n_neg_total))
    neg_parts, same_parts = [], []
    block = max(1, 4_000_000 // max(1, n))
    for i in range(0, n, block):  # row blocks bound memory at ~n*block floats
        sim = qry[i : i + block] @ ref.T
        same_patient = pcode_t[i : i + block, None] == pcode_t[None, :]
        neg_mask = ~same_patient
        if keep_p < 1.0:
            neg_mask &= torch.rand(sim.shape, generator=gen) < keep_p
        neg_parts.append(sim[neg_mask])
        if scode_t is not None:
            other_study = scode_t[i : i + block, None] != scode_t[None, :]
            same_parts.append(sim[same_patient & other_study])
    negatives = torch.cat(neg_parts)
    same = torch.cat(same_parts) if same_parts else torch.empty(0)
    if negatives.numel() == 0:
        raise ValueError("calibration needs images of at least two patients")

    scores = torch.cat([positives, negatives]).double()
    target = torch.cat([torch.ones(len(positives)), torch.zeros(len(negatives))]).long()
    # torchmetrics reads scores outside [0, 1] as logits: map cosine [-1, 1] onto [0, 1] exactly.
    mapped = ((scores + 1.0) / 2.0).clamp(0.0, 1.0)
    auc = float(binary_auroc(mapped, target))
    roc_fpr, roc_tpr, roc_thr = binary_roc(mapped, target)
    ok = torch.nonzero(roc_fpr <= fpr).flatten()
    k = int(ok[-1])  # thresholds decrease along the curve: the last admissible one is the smallest
    threshold = float(2.0 * roc_thr[k] - 1.0)
    same_above = float((same >= threshold).double().mean()) if same.numel() else float("nan")
    return {
        "recipe": descriptor.recipe,
        "n_images": int(n),
        "n_patients": int(pcode_t.max()) + 1,
        "n_positive": int(positives.numel()),
        "n_negative": int(negatives.numel()),
        "auc": auc,
        "fpr_target": float(fpr),
        "threshold": threshold,
        "tpr_at_threshold": float(roc_tpr[k]),
        "fpr_at_threshold": float(roc_fpr[k]),
        "positive_median": _quantile(positives, 0.5),
        "positive_p05": _quantile(positives, 0.05),
        "negative_median": _quantile(negatives, 0.5),
        "negative_p95": _quantile(negatives, 0.95),
        "negative_p99": _quantile(negatives, 0.99),
        "negative_max": float(negatives.max()),
        "n_same_patient": int(same.numel()),
        "same_patient_median": _quantile(same, 0.5),
        "same_patient_p95": _quantile(same, 0.95),
        "same_patient_frac_above": same_above,
    }


# --------------------------------------------------------------------------------------------
# factory


def build_descriptor(
    name: str,
    config: Mapping[str, Any] | None = None,
    model_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> Descriptor:
    """Descriptor from a workflow config entry, e.g. {'kind': 'sscd', 'weights': ..., 'recipe': 'nemo'}.

    `name` is the entry's key and the default kind; copydetect loads from `model_dir` (or
    config['model_dir']), the output of a training rule.
    """
    cfg = dict(config or {})
    kind = cfg.get("kind", name)
    if kind == "pixel":
        return PixelDescriptor(size=int(cfg.get("size", 16)), device=device)
    if kind == "copydetect":
        where = model_dir if model_dir is not None else cfg.get("model_dir")
        if where is None:
            raise ValueError("copydetect descriptor needs model_dir (a trained model directory)")
        return CopyDetectNet.from_pretrained(where, device=device)
    if kind == "sscd":
        weights = cfg.get("weights")
        if not weights:
            raise FileNotFoundError(
                f"SSCD descriptor {name!r} has no 'weights' path. {SSCD_SOURCE}"
            )
        return SSCDDescriptor(weights, recipe=cfg.get("recipe", "nemo"), device=device)
    raise ValueError(f"unknown descriptor kind {kind!r} (expected pixel, copydetect or sscd)")


# keep the dataclass helper importable for config serialisation in workflow scripts
def train_config_dict(config: CopyDetectTrainConfig) -> dict[str, Any]:
    """JSON-ready dict of a training config (recorded in config.json of the saved model)."""
    d = asdict(config)
    d["channels"] = list(d["channels"])
    return d
