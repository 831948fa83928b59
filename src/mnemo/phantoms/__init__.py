"""Synthetic CheXpert-like chest radiograph studies ("phantoms") written as DICOM.

The offline demo needs a data set that behaves like CheXpert where it matters for memorization
research: per-patient anatomy (so that several studies of one person look alike, as they do in
real data), sparse correlated labels in CheXpert's coding, DICOM files carrying fake identifiers
(so the de-identification step has something to remove), and a known set of planted duplicates
with rare prompts, so that memorization can be provoked and then scored against ground truth.

Geometry is written in normalised image coordinates: x and y run from -1 to 1, y points down.
Frontal views use the radiological display convention (patient left = image right, so the heart
bulges to the image right); lateral views put the patient's front on the image left.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as _dt
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from mnemo.data.chexpert import CSV_COLUMNS, OBSERVATIONS, UNCERTAINTY_POLICIES
from mnemo.data.prompts import prompt_text

__all__ = [
    "PatientAnatomy",
    "PhantomConfig",
    "PhantomSummary",
    "StudyMeta",
    "findings_grid",
    "gaussian_blur",
    "generate_phantom_dataset",
    "preview_grid",
    "quantize",
    "read_attenuation",
    "render_study",
    "sample_anatomy",
    "sample_labels",
    "write_dicom",
]

FINDINGS: tuple[str, ...] = OBSERVATIONS[1:]  # every observation except "No Finding"
UNCERTAIN_SEVERITY = 0.55  # an uncertain (-1) finding is drawn this much milder than a positive

# RNG stream tags: each purpose gets its own stream so that adding a draw in one place never
# shifts the random numbers used by another (and so never changes unrelated output bytes).
_S_META, _S_ANATOMY, _S_STUDY, _S_RELABEL, _S_COPY, _S_PLANT = range(6)
_SPLIT_CODE = {"train": 0, "valid": 1}
_FILM_BLUR = 0.6  # final blur in pixels at 256 px (scaled with the image size)


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in keys])


# --------------------------------------------------------------------------------------------
# Configuration and records
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhantomConfig:
    """Everything that determines the bytes of a phantom data set (worker count does not)."""

    seed: int = 0
    patients: int = 300
    valid_patients: int = 20
    studies_per_patient: tuple[int, int] = (1, 3)
    lateral_fraction: float = 0.25
    size: int = 256
    monochrome1_fraction: float = 0.1
    planted_studies: int = 8
    planted_copies: int = 12
    near_duplicate_noise: float = 0.0
    near_duplicate_shift: int = 0
    bits_stored: int = 12

    def __post_init__(self) -> None:
        spp = tuple(int(v) for v in self.studies_per_patient)
        object.__setattr__(self, "studies_per_patient", spp)
        if len(spp) != 2 or not 1 <= spp[0] <= spp[1]:
            raise ValueError(f"studies_per_patient must be (min, max) with 1 <= min <= max: {spp}")
        if self.patients < 1 or self.valid_patients < 0:
            raise ValueError("patients must be >= 1 and valid_patients >= 0")
        if not 0 <= self.planted_studies <= self.patients:
            raise ValueError("planted_studies must lie between 0 and patients")
        if self.planted_copies < 0:
            raise ValueError("planted_copies must be >= 0")
        if self.size < 32:
            raise ValueError(f"size must be at least 32 pixels, got {self.size}")
        if self.bits_stored not in (12, 16):
            raise ValueError(f"bits_stored must be 12 or 16, got {self.bits_stored}")
        for name in ("lateral_fraction", "monochrome1_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1]")
        if self.near_duplicate_noise < 0 or self.near_duplicate_shift < 0:
            raise ValueError("near_duplicate_noise and near_duplicate_shift must be >= 0")

    @classmethod
    def from_value(cls, value: PhantomConfig | Mapping[str, Any] | None) -> PhantomConfig:
        """Accept a config, a plain mapping (e.g. from YAML) or None for the defaults."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):
            raise TypeError(f"expected PhantomConfig or a mapping, got {type(value).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"unknown phantom config key(s): {', '.join(map(repr, unknown))}")
        return cls(**dict(value))


@dataclass(frozen=True)
class PhantomSummary:
    """What was written, for logs and for the workflow's checks."""

    out_dir: Path
    train_patients: int
    valid_patients: int
    train_studies: int
    valid_studies: int
    train_images: int
    valid_images: int
    planted_images: int
    train_csv: Path
    valid_csv: Path
    planted_csv: Path


@dataclass(frozen=True)
class StudyMeta:
    """DICOM header content of one image; identifiers are fake but shaped like real ones."""

    patient_name: str
    patient_id: str
    patient_sex: str
    birth_date: str
    age: int
    study_date: str
    study_time: str
    study_uid: str
    series_uid: str
    sop_uid: str
    view_position: str
    accession_number: str = ""
    study_id: str = "1"
    series_number: int = 1
    instance_number: int = 1
    institution_name: str = "Phantom General Hospital"
    referring_physician: str = "Phantom^Referrer"
    bits_stored: int = 12

    @classmethod
    def from_value(cls, value: StudyMeta | Mapping[str, Any]) -> StudyMeta:
        if isinstance(value, cls):
            return value
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"unknown StudyMeta key(s): {', '.join(map(repr, unknown))}")
        try:
            return cls(**dict(value))
        except TypeError as exc:
            raise ValueError(f"incomplete StudyMeta: {exc}") from None


# --------------------------------------------------------------------------------------------
# Anatomy
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PatientAnatomy:
    """One person's body, sampled once so that all of their studies show the same chest."""

    sex: str
    age: int
    body_width: float  # torso half-width
    body_height: float  # vertical stretch of the whole image (stature / positioning)
    shoulder_y: float
    neck_width: float
    lung_width: float  # half-width of one lung at the base
    lung_height: float  # apex to lateral costophrenic angle
    apex_y: float
    lung_center: float  # distance of a lung's axis from the midline
    heart_size: float  # scale of the cardiac silhouette (1 = cardiothoracic ratio ~0.45)
    heart_x: float  # horizontal position of the heart centre (towards patient left)
    heart_tilt: float  # degrees
    mediastinum_width: float
    rib_count: int
    rib_spacing: float
    rib_curve: float
    rib_thickness: float
    rotation: float  # degrees, in-plane tilt of the patient
    clavicle_angle: float  # degrees, rise of the clavicle towards the shoulder
    clavicle_y: float
    diaphragm_y: float  # y of the lateral costophrenic angles
    dome_height: float
    right_dome_offset: float  # the right hemidiaphragm usually sits higher
    exposure: float  # centre of the film curve (attenuation at mid-grey)
    contrast: float  # slope of the film curve
    noise: float  # film grain standard deviation
    bone_density: float  # lower with age (osteopenia)
    kyphosis: float  # thoracic curvature, higher with age
    scoliosis: float
    breast: float  # breast soft-tissue shadow strength (0 for male)
    soft_tissue: float  # habitus: thicker soft tissue = denser film
    aortic_unfolding: float  # older patients: more prominent aortic knob
    texture_seed: int  # vessels and parenchymal texture


def sample_anatomy(rng: np.random.Generator, sex: str, age: int) -> PatientAnatomy:
    """Draw one plausible adult chest; age and sex shift the draws the way they do in real films."""
    female = str(sex).lower().startswith("f")
    old = float(np.clip((age - 45) / 40.0, 0.0, 1.0))
    body_width = float(rng.uniform(0.80, 0.90) * (0.97 if female else 1.0))
    lung_height = float(rng.uniform(1.08, 1.22))
    apex_y = float(rng.uniform(-0.74, -0.66))
    rib_count = int(rng.integers(9, 12))
    return PatientAnatomy(
        sex="Female" if female else "Male",
        age=int(age),
        body_width=body_width,
        body_height=float(rng.uniform(0.96, 1.04)),
        shoulder_y=float(apex_y - rng.uniform(0.06, 0.14)),
        neck_width=float(rng.uniform(0.15, 0.2) * (0.92 if female else 1.0)),
        lung_width=float(body_width * rng.uniform(0.4, 0.44)),
        lung_height=lung_height,
        apex_y=apex_y,
        lung_center=float(body_width * rng.uniform(0.42, 0.46)),
        heart_size=float(rng.normal(1.0, 0.05) * (1.0 + 0.06 * old)),
        heart_x=float(rng.normal(0.1, 0.02)),
        heart_tilt=float(rng.uniform(18.0, 32.0)),
        mediastinum_width=float(rng.uniform(0.125, 0.15) + 0.015 * old),
        rib_count=rib_count,
        rib_spacing=float((lung_height + 0.08) / (rib_count - 0.2) * rng.uniform(0.93, 1.02)),
        rib_curve=float(rng.uniform(0.4, 0.55)),
        rib_thickness=float(rng.uniform(0.024, 0.031)),
        rotation=float(rng.normal(0.0, 1.8)),
        clavicle_angle=float(rng.uniform(2.0, 12.0)),
        clavicle_y=float(apex_y + rng.uniform(0.04, 0.12)),
        diaphragm_y=float(apex_y + lung_height),
        dome_height=float(rng.uniform(0.1, 0.17)),
        right_dome_offset=float(rng.uniform(0.02, 0.06)),
        exposure=float(rng.normal(0.37, 0.012)),
        contrast=float(rng.uniform(6.0, 7.5)),
        noise=float(rng.uniform(0.008, 0.02)),
        bone_density=float(rng.uniform(0.9, 1.1) * (1.0 - 0.35 * old)),
        kyphosis=float(np.clip(rng.normal(0.04 + 0.22 * old, 0.04), 0.0, 0.35)),
        scoliosis=float(rng.normal(0.0, 0.012)),
        breast=float(rng.uniform(0.6, 1.0)) if female else 0.0,
        soft_tissue=float(rng.uniform(0.93, 1.08)),
        aortic_unfolding=float(old * rng.uniform(0.4, 1.0)),
        texture_seed=int(rng.integers(0, 2**31 - 1)),
    )


# --------------------------------------------------------------------------------------------
# Raster helpers (vectorised over the pixel grid; Python loops only run over a few shapes)
# --------------------------------------------------------------------------------------------


def _ramp(d: np.ndarray | float, w: float) -> np.ndarray:
    """Soft step 0 -> 1 across a band of width w around d = 0 (an anti-aliased edge)."""
    r = np.asarray(d, dtype=np.float32) * np.float32(1.0 / w)
    r += np.float32(0.5)
    np.maximum(r, np.float32(0.0), out=r)
    return np.minimum(r, np.float32(1.0), out=r)


def _clip01(a: np.ndarray) -> np.ndarray:
    return np.minimum(np.maximum(a, np.float32(0.0)), np.float32(1.0))


class _Canvas:
    """Pixel grid in normalised coordinates with helpers for bounding-box work."""

    def __init__(self, size: int) -> None:
        self.size = size
        c = ((np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0).astype(np.float32)
        self.c = c
        self.x = c[None, :]
        self.y = c[:, None]
        self.px = 2.0 / size

    def zeros(self) -> np.ndarray:
        return np.zeros((self.size, self.size), np.float32)

    def edge(self, w: float) -> float:
        """Edge width never thinner than ~1.5 pixels, so small images stay anti-aliased."""
        return max(w, 1.5 * self.px)

    def box(self, x0: float, x1: float, y0: float, y1: float):
        """Slices plus local coordinate vectors of the pixels inside [x0,x1] x [y0,y1]."""
        s = self.size
        i0 = max(0, math.floor((y0 + 1.0) * s / 2.0))
        i1 = min(s, math.ceil((y1 + 1.0) * s / 2.0) + 1)
        j0 = max(0, math.floor((x0 + 1.0) * s / 2.0))
        j1 = min(s, math.ceil((x1 + 1.0) * s / 2.0) + 1)
        if i0 >= i1 or j0 >= j1:
            return None
        return (slice(i0, i1), slice(j0, j1)), self.c[None, j0:j1], self.c[i0:i1, None]


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur (edge-replicating), sigma in pixels: soft edges as on film."""
    if sigma < 0.25:
        return img
    r = max(1, math.ceil(2.5 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1, dtype=np.float64) / sigma) ** 2)
    k = (k / k.sum()).astype(np.float32)
    h, w = img.shape
    p = np.pad(img, ((0, 0), (r, r)), mode="edge")
    out = k[0] * p[:, 0:w]
    for i in range(1, 2 * r + 1):
        out += k[i] * p[:, i : i + w]
    p = np.pad(out, ((r, r), (0, 0)), mode="edge")
    out = k[0] * p[0:h]
    for i in range(1, 2 * r + 1):
        out += k[i] * p[i : i + h]
    return out


class _Lines:
    """Polylines collected by width and rasterised in one vectorised pass per width.

    Points are splatted densely along each line (bilinear) and the splat is blurred to the
    line's width: the cost no longer grows with the number of segments, only with widths.
    """

    def __init__(self, cv: _Canvas, crisp: float | None = None) -> None:
        self.cv = cv
        self.crisp = crisp  # flat-topped bands (bone, tubing) instead of Gaussian profiles
        self.groups: dict[tuple[float, float], list[tuple[np.ndarray, ...]]] = {}

    def add(self, pts, width: float, amp: float = 1.0) -> None:
        p = np.asarray(pts, dtype=np.float64)
        if len(p) >= 2:
            self.add_segments(p[:-1], p[1:], width, amp)

    def add_segments(self, a: np.ndarray, b: np.ndarray, width: float,
                     amp: float | np.ndarray = 1.0) -> None:
        """Segments a[i] -> b[i]; amp may be one value or one per segment."""
        key = (round(float(width), 4), round(float(amp), 4) if self.crisp else 0.0)
        w = np.broadcast_to(np.asarray(1.0 if self.crisp else amp, dtype=np.float64), len(a))
        self.groups.setdefault(key, []).append((a, b, w))

    def render(self) -> np.ndarray:
        out = self.cv.zeros()
        for (width, amp), items in self.groups.items():
            layer = _splat_lines(self.cv, items, width, bool(self.crisp))
            if self.crisp:
                layer = _crisp(layer, self.crisp) * np.float32(amp)
            out += layer
        return out


def _splat_lines(cv: _Canvas, items: list[tuple[np.ndarray, ...]], width: float,
                 crisp: bool = False) -> np.ndarray:
    s = cv.size
    scale = s / 2.0
    a = np.concatenate([it[0] for it in items])
    b = np.concatenate([it[1] for it in items])
    amp = np.concatenate([it[2] for it in items])
    sigma = width * scale / 2.355  # the line's profile, in pixels
    base = 0.0 if crisp else _FILM_BLUR * s / 256.0  # what the final film blur will add
    pre = math.sqrt(max(sigma * sigma - base * base, 0.0))
    taps = 0 if pre < 0.35 else (2 if pre <= 1.1 else (3 if pre <= 1.6 else -1))
    pa = (a + 1.0) * scale - 0.5
    d = (b - a) * scale
    ln = np.hypot(d[:, 0], d[:, 1])
    n = np.maximum(1, np.ceil(ln / (0.5 if taps <= 0 else 0.75))).astype(np.int64)
    seg = np.repeat(np.arange(len(n)), n)
    j = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
    t = (j + 0.5) / n[seg]
    px = pa[seg, 0] + t * d[seg, 0]
    py = pa[seg, 1] + t * d[seg, 1]
    wt = (ln / n * amp)[seg]
    x0 = np.floor(px).astype(np.int64)
    y0 = np.floor(py).astype(np.int64)
    if taps <= 0:  # bilinear splat (blurred afterwards when the line is wide)
        fx, fy = px - x0, py - y0
        offs = ((0, 1 - fx), (1, fx)), ((0, 1 - fy), (1, fy))
    else:  # splat straight through a small Gaussian kernel: no full-frame blur needed
        o = np.arange(1 - taps, taps + 1)
        kx = np.exp(-0.5 * ((x0[:, None] + o - px[:, None]) / pre) ** 2)
        ky = np.exp(-0.5 * ((y0[:, None] + o - py[:, None]) / pre) ** 2)
        kx /= kx.sum(1, keepdims=True)
        ky /= ky.sum(1, keepdims=True)
        offs = (tuple((int(v), kx[:, i]) for i, v in enumerate(o)),
                tuple((int(v), ky[:, i]) for i, v in enumerate(o)))
    idx, wts = [], []
    for ox, wx in offs[0]:
        xi = x0 + ox
        okx = (xi >= 0) & (xi < s)
        for oy, wy in offs[1]:
            yi = y0 + oy
            ok = okx & (yi >= 0) & (yi < s)
            idx.append((yi * s + xi)[ok])
            wts.append((wt * wx * wy)[ok])
    acc = np.bincount(np.concatenate(idx), weights=np.concatenate(wts), minlength=s * s)
    layer = acc.reshape(s, s).astype(np.float32)
    if taps < 0 or (taps == 0 and pre >= 0.35):
        layer = gaussian_blur(layer, pre)
    eff = max(pre, 0.0) if taps != 0 else 0.0
    return layer * np.float32(math.sqrt(2.0 * math.pi * (eff * eff + base * base + 1.0 / 6.0)))


class _Bands:
    """Bands along polylines that run mostly along x or mostly along y, computed analytically
    on their bounding boxes: crisp bone-like edges with no full-frame blur."""

    def __init__(self, cv: _Canvas, rim: float = 0.35) -> None:
        self.cv = cv
        self.rim = rim  # brighter cortex around a lighter medulla
        self.out = cv.zeros()

    def add(self, pts, width: float, amp: float = 1.0, edge: float = 0.006) -> None:
        cv = self.cv
        p = np.asarray(pts, dtype=np.float64)
        along_x = np.ptp(p[:, 0]) >= np.ptp(p[:, 1])
        if not along_x:
            p = p[:, ::-1]
        p = p[np.argsort(p[:, 0], kind="stable")]
        half = width / 2.0
        e = cv.edge(edge)
        pad = half + e
        u0, u1, v0, v1 = p[0, 0], p[-1, 0], p[:, 1].min(), p[:, 1].max()
        if along_x:
            b = cv.box(u0 - pad, u1 + pad, v0 - pad, v1 + pad)
        else:
            b = cv.box(v0 - pad, v1 + pad, u0 - pad, u1 + pad)
        if b is None:
            return
        sl, xs, ys = b
        us, vs = (xs, ys) if along_x else (ys, xs)
        du = np.maximum(np.diff(p[:, 0]), 1e-9)
        slope = np.diff(p[:, 1]) / du
        flat = us.ravel()
        vc = np.interp(flat, p[:, 0], p[:, 1]).astype(np.float32).reshape(us.shape)
        sc = np.interp(flat, 0.5 * (p[1:, 0] + p[:-1, 0]), slope).astype(np.float32)
        dist = np.abs(vs - vc) / np.sqrt(1.0 + sc.reshape(us.shape) ** 2)
        band = _ramp(half - dist, e)
        if self.rim:
            band = band - np.float32(self.rim) * _ramp(0.45 * half - dist, e)
        self.out[sl] += np.float32(amp) * band * (_ramp(us - u0, e) * _ramp(u1 - us, e))


def _crisp(layer: np.ndarray, k: float = 1.8) -> np.ndarray:
    """Turn a Gaussian line profile into a flat band with soft edges (bones, tubes)."""
    return _clip01(layer * np.float32(k))


def _bezier(p0, p1, p2, n: int = 24) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n)[:, None]
    p0, p1, p2 = (np.asarray(p, dtype=np.float64) for p in (p0, p1, p2))
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def _blob(cv: _Canvas, target: np.ndarray, cx: float, cy: float, rx: float, ry: float,
          amp: float, angle: float = 0.0, edge: float = 0.02, profile: float = 0.0) -> None:
    """Add an (optionally rotated) ellipse; profile > 0 makes it dome-shaped instead of flat."""
    r = max(rx, ry) + edge
    b = cv.box(cx - r, cx + r, cy - r, cy + r)
    if b is None:
        return
    sl, xs, ys = b
    ca, sa = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    u = ((xs - cx) * ca + (ys - cy) * sa) / rx
    v = (-(xs - cx) * sa + (ys - cy) * ca) / ry
    rr = np.sqrt(u * u + v * v)
    m = _ramp(1.0 - rr, cv.edge(edge) / min(rx, ry))
    if profile > 0:
        m = m * ((1.0 - profile) + profile * np.sqrt(_clip01(1.0 - rr * rr)))
    target[sl] += np.float32(amp) * m


def _ring(cv: _Canvas, target: np.ndarray, cx: float, cy: float, r: float, width: float,
          amp: float) -> None:
    b = cv.box(cx - r - width, cx + r + width, cy - r - width, cy + r + width)
    if b is None:
        return
    sl, xs, ys = b
    d = np.abs(np.sqrt((xs - cx) ** 2 + (ys - cy) ** 2) - r)
    target[sl] += np.float32(amp) * _ramp(width / 2.0 - d, cv.edge(0.0))


def _ellipse(cv: _Canvas, cx: float, cy: float, rx: float, ry: float, angle: float,
             edge: float) -> np.ndarray:
    """Full-frame soft mask of a rotated ellipse."""
    ca, sa = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    u = ((cv.x - cx) * ca + (cv.y - cy) * sa) / rx
    v = (-(cv.x - cx) * sa + (cv.y - cy) * ca) / ry
    return _ramp(1.0 - np.sqrt(u * u + v * v), cv.edge(edge) / min(rx, ry))


@lru_cache(maxsize=64)
def _interp_matrix(size: int, n: int) -> np.ndarray:
    knots = np.linspace(-1.2, 1.2, n)
    c = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    sigma = (knots[1] - knots[0]) * 0.75
    w = np.exp(-0.5 * ((c[:, None] - knots[None, :]) / sigma) ** 2)
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


@lru_cache(maxsize=32)
def _patient_texture(seed: int, tag: int, size: int, cells: int) -> np.ndarray:
    """Parenchymal texture of one patient (cached across that patient's studies; read-only)."""
    tex = _smooth_noise(np.random.default_rng([seed, tag]), size, cells)
    tex.flags.writeable = False
    return tex


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Unit-variance band-limited noise (about `cells` blobs across).

    Interpolated from a cells x cells grid at a low resolution (two small products), then
    upsampled linearly: smooth fields do not need full-resolution work.
    """
    g = rng.standard_normal((cells, cells)).astype(np.float32)
    lo = min(size, max(32, 3 * cells))
    m = _interp_matrix(lo, cells)
    # einsum, not BLAS: threaded BLAS stalls on tiny products when the cores are busy
    f = np.einsum("ij,jk->ik", np.einsum("ij,jk->ik", m, g), m.T)
    if lo < size:
        i0, i1, w = _upsample_index(lo, size)
        f = f[i0] * (1.0 - w)[:, None] + f[i1] * w[:, None]
        f = f[:, i0] * (1.0 - w)[None, :] + f[:, i1] * w[None, :]
    return (f - f.mean()) * np.float32(1.0 / (f.std() + 1e-6))


@lru_cache(maxsize=16)
def _upsample_index(lo: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pos = np.clip((np.arange(size) + 0.5) * lo / size - 0.5, 0.0, lo - 1.0)
    i0 = np.floor(pos).astype(np.intp)
    return i0, np.minimum(i0 + 1, lo - 1), (pos - i0).astype(np.float32)


def _warp(img: np.ndarray, angle: float, dx: float, dy: float,
          stretch: float = 1.0) -> np.ndarray:
    """Rotate (degrees), shift (normalised units) and stretch vertically about the centre, with
    bilinear sampling and replicated edges."""
    if abs(angle) < 1e-3 and abs(dx) < 1e-4 and abs(dy) < 1e-4 and abs(stretch - 1) < 1e-4:
        return img
    s = img.shape[0]
    c = ((np.arange(s, dtype=np.float32) + 0.5) / s * 2.0 - 1.0).astype(np.float32)
    ca, sa = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    h = s / 2.0
    xo = (c - np.float32(dx))[None, :]
    yo = ((c - np.float32(dy)) / np.float32(stretch))[:, None]
    fx = np.float32(ca * h) * xo + np.float32(sa * h) * yo + np.float32(h - 0.5)
    fy = np.float32(-sa * h) * xo + np.float32(ca * h) * yo + np.float32(h - 0.5)
    np.clip(fx, 0.0, s - 1.001, out=fx)
    np.clip(fy, 0.0, s - 1.001, out=fy)
    x0 = fx.astype(np.intp)
    y0 = fy.astype(np.intp)
    fx -= x0
    fy -= y0
    i00 = y0 * s
    i00 += x0
    flat = np.concatenate([img.ravel(), np.zeros(s + 1, img.dtype)])  # room for +s+1
    p, q = flat.take(i00), flat[1:].take(i00)  # shifted views: no index arithmetic
    top = p + (q - p) * fx
    p, q = flat[s:].take(i00), flat[s + 1 :].take(i00)
    bot = p + (q - p) * fx
    return (top + (bot - top) * fy).astype(np.float32, copy=False)


def _rib(cv: _Canvas, out: np.ndarray, s: int, y0: float, a1: float, a2: float, reach: float,
         th: float, amp: float, ant_amp: float, x_lo: float = 0.04, x_hi: float = 9.0,
         drop: float = 0.0) -> None:
    """One rib: posterior arc y = y0 + a1 X + a2 X^2 out to the lateral wall, then the fainter
    anterior arc sloping back down and medially (X = s * x grows laterally).

    The band is an analytic distance to the curve (no per-segment loops), with brighter
    cortical rims around a lighter medulla; drop displaces the posterior arc (fractures).
    """
    y_end = y0 + a1 * reach + a2 * reach * reach
    span = 0.6 * reach
    k1, k2 = 0.3, 0.35
    y_top = min(y0, y0 - a1 * a1 / (4 * a2)) if a2 > 0 else min(y0, y_end)
    y_bot = y_end + 0.03 + k1 * span + k2 * span * span
    lo, hi = max(0.0, x_lo - 2 * th), reach + 2 * th
    b = cv.box(-hi if s < 0 else lo, hi if s > 0 else -lo, y_top - 2 * th,
               max(y_bot, y_end + drop) + 2 * th)
    if b is None:
        return
    sl, xs, ys = b
    e = cv.edge(0.006)
    X = s * xs
    Xc = np.minimum(X, np.float32(reach))
    p = np.float32(y0 + drop) + np.float32(a1) * Xc + np.float32(a2) * Xc * Xc
    dp = np.float32(a1) + np.float32(2 * a2) * Xc
    dist = np.abs(ys - p) / np.sqrt(1.0 + dp * dp)
    band = _ramp(th - dist, e) - 0.35 * _ramp(0.45 * th - dist, e)
    wt = np.float32(amp) * _ramp(X - x_lo, e) * _ramp(x_hi - X, e) * _ramp(reach - X, 0.02) * (
        1.0 - 0.25 * _clip01(X / reach))
    val = band * wt
    if ant_amp > 0:
        u = np.maximum(np.float32(reach) - X, np.float32(0.0))
        q = np.float32(y_end + 0.03) + np.float32(k1) * u + np.float32(k2) * u * u
        dq = np.float32(k1) + np.float32(2 * k2) * u
        dist_a = np.abs(ys - q) / np.sqrt(1.0 + dq * dq)
        band_a = _ramp(0.75 * th - dist_a, e) - 0.3 * _ramp(0.35 * th - dist_a, e)
        wt_a = np.float32(ant_amp) * _ramp(X - (reach - span), 0.08) * _ramp(
            reach + 0.5 * th - X, e)
        val = np.maximum(val, band_a * wt_a)
    out[sl] += val


def _vessel_tree(rng: np.random.Generator, angles: Sequence[float], length: float,
                 generations: int = 4) -> list[tuple[float, np.ndarray, np.ndarray, np.ndarray]]:
    """Branching pulmonary vessels from a hilum at (0, 0), side-local (x grows laterally).

    Grown one generation at a time (vectorised over branches); returns per width class the
    segment starts, ends and amplitudes, ready for _Lines.add_segments.
    """
    ang = np.asarray(angles, dtype=np.float64)
    n = len(ang)
    ln = length * rng.uniform(0.8, 1.2, n) * np.where(ang > 20, 1.2, 1.0)
    ang = ang + rng.normal(0, 6, n)
    start = np.zeros((n, 2))
    by_class: dict[float, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
    for gen in range(generations):
        a = np.radians(ang)
        bend = np.radians(rng.normal(0, 10, n))
        mid = start + 0.5 * ln[:, None] * np.stack([np.cos(a), np.sin(a)], 1)
        end = mid + 0.5 * ln[:, None] * np.stack([np.cos(a + bend), np.sin(a + bend)], 1)
        amp = np.full(2 * n, _VESSEL_A[gen])
        by_class.setdefault(_VESSEL_W[gen], []).append(
            (np.concatenate([start, mid]), np.concatenate([mid, end]), amp))
        if gen + 1 == generations:
            break
        n_child = np.where(rng.random(n) < 0.8, 2, 3)
        parent = np.repeat(np.arange(n), n_child)
        k = np.arange(len(parent)) - np.repeat(np.cumsum(n_child) - n_child, n_child)
        spread = rng.uniform(20, 36, n)[parent]
        da = spread * (k - (n_child[parent] - 1) / 2.0) + rng.normal(0, 6, len(parent))
        ang = np.degrees(a + bend)[parent] + da
        ln = ln[parent] * rng.uniform(0.62, 0.8, len(parent))
        start = end[parent]
        n = len(parent)
    return [(w, np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
             np.concatenate([p[2] for p in parts])) for w, parts in sorted(by_class.items())]


@lru_cache(maxsize=256)
def _patient_trees(seed: int, view: str) -> tuple:
    """Per-patient vessel trees (cached: several studies of one patient share them)."""
    r = np.random.default_rng([seed, 17])
    if view == "frontal":
        up, down = [-115, -85, -55, -25], [5, 35, 65, 95]
        return (_vessel_tree(r, up + down, 0.13), _vessel_tree(r, up + down, 0.13))
    return (_vessel_tree(r, [-150, -120, -80, -40, 0, 40, 80, 120, 160, 200], 0.14),)


_VESSEL_W = (0.022, 0.022, 0.011, 0.011)  # two width classes: one blur each
_VESSEL_A = (1.0, 0.75, 0.85, 0.6)


def _add_trees(lines: _Lines, trees, roots, sides, widen: float = 1.0) -> None:
    for tree, (rx, ry), s in zip(trees, roots, sides, strict=True):
        flip = np.array([s, 1.0])
        shift = np.array([rx, ry])
        for width, a, b, w in tree:
            lines.add_segments(a * flip + shift, b * flip + shift, width * widen, w)


def _severity(labels: Mapping[str, float], name: str) -> float:
    v = labels.get(name, math.nan)
    try:
        v = float(v)
    except (TypeError, ValueError):
        return 0.0
    if v == 1.0:
        return 1.0
    if v == -1.0:
        return UNCERTAIN_SEVERITY
    return 0.0


class _Rngs:
    """Independent sub-streams per purpose, drawn up front so findings don't shift the grain."""

    def __init__(self, rng: np.random.Generator) -> None:
        seeds = rng.integers(0, 2**63 - 1, size=4 + len(FINDINGS))
        self.jitter = np.random.default_rng(int(seeds[0]))
        self.grain = np.random.default_rng(int(seeds[1]))  # seeds[2:4] are kept spare
        self._finding = {f: int(s) for f, s in zip(FINDINGS, seeds[4:], strict=True)}

    def finding(self, name: str) -> np.random.Generator:
        return np.random.default_rng(self._finding[name])


def _finish(cv: _Canvas, att: np.ndarray, a: PatientAnatomy, rngs: _Rngs, ap: bool,
            lateral: bool) -> np.ndarray:
    """Per-study pose and exposure jitter, blur, film characteristic curve and grain."""
    j = rngs.jitter
    angle = a.rotation * (0.4 if lateral else 1.0) + j.normal(0.0, 0.8)
    dx, dy = j.normal(0.0, 0.015), j.normal(0.0, 0.015)
    att = _warp(att, angle, dx, dy, a.body_height)
    exposure = a.exposure + j.normal(0.0, 0.008) + (0.01 if ap else 0.0) + (0.1 if lateral
                                                                              else 0.0)
    contrast = a.contrast * (1.0 + j.normal(0.0, 0.03))
    noise = abs(a.noise * (1.25 if ap else 1.0) * (1.0 + j.normal(0.0, 0.1)))
    # quantum noise lives in the attenuation domain; the blur then gives it a grain size
    grain = rngs.grain.standard_normal(att.shape, dtype=np.float32)
    att += grain * np.float32(1.3 * noise * cv.size / 256.0)
    att = gaussian_blur(att, _FILM_BLUR * cv.size / 256.0)
    z = np.float32(contrast) * (att - np.float32(exposure))
    out = np.float32(1.0) / (np.float32(1.0) + np.exp(-z))
    lo = 1.0 / (1.0 + math.exp(contrast * exposure))
    out = (out - np.float32(lo)) * np.float32(1.0 / (1.0 - lo))
    out *= np.float32(1.0) - np.float32(0.03) * (cv.y + 1.0)  # anode heel: faint gradient
    return _clip01(out).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Frontal view
# --------------------------------------------------------------------------------------------

_TAU = 0.45  # fraction of lung height over which the apex rounds out to full width


@dataclass
class _FrontalGeom:
    bw: float
    shoulder_y: float
    nw: float
    apex_y: float
    base_y: dict[int, float]
    lung_h: float
    lung_c: float
    dome_h: float
    heart: tuple[float, float, float]  # centre x, centre y, scale
    med_x: float
    med_w: float
    knob: tuple[float, float, float]
    carina_y: float
    hilum: dict[int, tuple[float, float]]

    def dome_y(self, s: int, x):
        xp = self.lung_c * 0.7
        q = (s * np.asarray(x, dtype=np.float32) - np.float32(xp)) / np.float32(
            self.lung_c + self.lung_h - xp)
        return np.float32(self.base_y[s]) - np.float32(self.dome_h) * _clip01(1.0 - q * q)

    def half_width(self, t):
        tt = np.clip(np.asarray(t, dtype=np.float32) / _TAU, -1.0, 1.0)
        v = 1.0 - (1.0 - tt) ** 2
        return np.float32(self.lung_h) * np.sign(v) * np.sqrt(np.abs(v)) * (
            1.0 + 0.05 * np.clip(t, 0.0, 1.2))

    def centre(self, t):
        return np.float32(self.lung_c - 0.04) + np.float32(0.08) * np.clip(t, 0.0, 1.2)

    def lung_t(self, s: int, y):
        return (y - np.float32(self.apex_y)) / np.float32(self.base_y[s] - self.apex_y)

    def lung_point(self, s: int, t: float, frac: float) -> tuple[float, float]:
        """Point at relative height t (0 apex, 1 base) and lateral fraction frac (-1..1)."""
        y = self.apex_y + t * (self.base_y[s] - self.apex_y)
        return s * float(self.centre(t) + frac * self.half_width(t)), y


def _lung_shape(cv: _Canvas, g: _FrontalGeom, s: int, lat_shrink: float = 0.0,
                apex_drop: float = 0.0, edge: float = 0.014):
    """Soft mask of one lung plus its relative thickness along the beam."""
    t = g.lung_t(s, cv.y)
    h = g.half_width(t - np.float32(apex_drop / (g.base_y[s] - g.apex_y)))
    rel = np.float32(s) * cv.x - g.centre(t)  # positive = lateral
    d = np.minimum(h - np.float32(lat_shrink) - rel, h + rel)
    e = cv.edge(edge)
    dome = g.dome_y(s, cv.x)
    m = _ramp(d, e) * _ramp(dome - cv.y, e)
    u = _clip01(np.abs(rel) / np.maximum(h, np.float32(0.02)))
    thick = (0.5 + 0.5 * np.sqrt(1.0 - u * u)) * (0.5 + 0.5 * _clip01((dome - cv.y) / 0.12))
    thick = thick * (0.55 + 0.45 * _clip01(t / 0.3))
    return m, thick


def _frontal_geometry(a: PatientAnatomy, ap: bool, sev: Mapping[str, float],
                      rngs: _Rngs) -> tuple[_FrontalGeom, dict[str, Any]]:
    extra: dict[str, Any] = {}
    base = a.diaphragm_y - (0.05 if ap else 0.0)  # AP films: semi-erect, lower lung volumes
    base_y = {-1: base - a.right_dome_offset, 1: base}
    med_shift = 0.0
    if sev["Atelectasis"] > 0:  # volume loss: raised hemidiaphragm, mediastinum pulled over
        r = rngs.finding("Atelectasis")
        side = -1 if r.random() < 0.5 else 1
        base_y[side] -= 0.08 * sev["Atelectasis"]
        med_shift = 0.035 * side * sev["Atelectasis"]
        extra["atelectasis_side"] = side
    hs = a.heart_size * (1.1 if ap else 1.0) * (1.0 + 0.4 * sev["Cardiomegaly"])
    carina_y = a.apex_y + 0.42 * a.lung_height
    med_w = a.mediastinum_width * (1.12 if ap else 1.0) * (
        1.0 + 0.8 * sev["Enlarged Cardiomediastinum"])
    knob_r = 0.05 * (1 + 0.5 * a.aortic_unfolding) * (
        1 + 0.5 * sev["Enlarged Cardiomediastinum"])
    g = _FrontalGeom(
        bw=a.body_width, shoulder_y=a.shoulder_y, nw=a.neck_width, apex_y=a.apex_y,
        base_y=base_y, lung_h=a.lung_width, lung_c=a.lung_center, dome_h=a.dome_height,
        heart=(a.heart_x + med_shift, base - a.dome_height - 0.06, hs), med_x=med_shift,
        med_w=med_w, knob=(med_shift + med_w * 0.9, carina_y - 0.1, knob_r),
        carina_y=carina_y,
        hilum={-1: (med_shift - 0.19, carina_y + 0.14), 1: (med_shift + 0.2, carina_y + 0.1)},
    )
    return g, extra


def _heart_frontal(cv: _Canvas, g: _FrontalGeom, tilt: float) -> np.ndarray:
    """Cardiac silhouette: left ventricle (image right, down to the apex) + right atrium."""
    hx, hy, hs = g.heart
    lv = _ellipse(cv, hx + 0.1 * hs, hy + 0.02, 0.33 * hs, 0.22 * hs, tilt, 0.012)
    ra = _ellipse(cv, hx - 0.1 * hs, hy - 0.02, 0.17 * hs, 0.2 * hs, -8.0, 0.012)
    return np.maximum(lv, ra)


def _render_frontal(a: PatientAnatomy, ap: bool, labels: Mapping[str, float], rngs: _Rngs,
                    size: int) -> np.ndarray:
    cv = _Canvas(size)
    sev = {f: _severity(labels, f) for f in FINDINGS}
    g, extra = _frontal_geometry(a, ap, sev, rngs)
    x, y = cv.x, cv.y
    ax = np.abs(x)
    st = np.float32(0.46 * a.soft_tissue)
    bone = float(a.bone_density)
    lines = _Lines(cv)  # soft tissue / vessel lines (added as they are)
    bones = _Bands(cv)  # bone bands, scaled by bone density at the end

    # --- body: torso chord, neck, shoulders, arms
    bw_row = np.float32(g.bw) * (0.92 + 0.08 * _clip01((y - g.shoulder_y) / 0.9))
    chord = np.sqrt(_clip01(1.0 - (ax / bw_row) ** 4))
    q = _clip01((ax - g.nw) / (g.bw + 0.12 - g.nw))
    top = g.shoulder_y - 0.22 * (1.0 - q) ** 1.8 + 0.04 * q
    top_m = _ramp(y - top, cv.edge(0.035))
    neck = np.sqrt(_clip01(1.0 - (x / g.nw) ** 2)) * 0.8
    body = chord * top_m + neck * (1.0 - top_m)
    shoulder = np.exp(-(((y - (g.shoulder_y + 0.12)) / 0.16) ** 2)) * _clip01((ax - 0.25) / 0.4)
    att = st * (body + 0.25 * shoulder * top_m)
    for s in (-1, 1):  # upper arms in the top corners, fading out of the field below
        _blob(cv, att, s * (g.bw + 0.13), g.shoulder_y + 0.3, 0.14, 0.55, float(st) * 0.6,
              edge=0.06, profile=0.8)
        _blob(cv, att, s * (g.bw + 0.07), g.shoulder_y + 0.1, 0.085, 0.09, 0.1 * bone,
              edge=0.012, profile=0.5)
        bones.add([(s * (g.bw + 0.09), g.shoulder_y + 0.15), (s * (g.bw + 0.16),
                                                             g.shoulder_y + 0.75)], 0.06, 0.09)
        bones.add([(s * (g.bw + 0.06), g.shoulder_y + 0.05), (s * (g.bw - 0.12),
                                                             g.shoulder_y + 0.08)],
                  0.03, 0.05)  # acromion / scapular spine
    body_m = top_m * _ramp(bw_row - ax, cv.edge(0.03))

    # --- mediastinum, heart, abdomen
    heart = _heart_frontal(cv, g, a.heart_tilt)
    med_half = np.float32(g.med_w) * (0.8 + 0.35 * _clip01((y - (g.carina_y - 0.5)) / 0.7))
    upper = _ramp(med_half - np.abs(x - g.med_x), cv.edge(0.02))
    upper = upper * _ramp(g.heart[1] + 0.05 - y, cv.edge(0.1)) * _ramp(y - g.apex_y + 0.05, 0.2)
    kx, ky, kr = g.knob
    knob = _ellipse(cv, kx, ky, kr, kr * 1.1, 0.0, 0.012)
    desc = _ramp(0.03 - np.abs(x - (kx - 0.02)), cv.edge(0.015)) * _ramp(y - ky, 0.02)
    med = np.maximum(np.maximum(upper, heart), np.maximum(knob, 0.6 * desc))
    dome_row = np.where(x < g.med_x, g.dome_y(-1, x), g.dome_y(1, x))
    below = _ramp(y - dome_row, cv.edge(0.015))
    att += np.float32(0.09) * med * (1.0 - below) + np.float32(0.17) * below * chord * body_m
    att += np.float32(0.03) * heart * (1.0 - below)

    # --- lungs
    lungs, lung_thick = {}, {}
    for s in (-1, 1):
        m, th = _lung_shape(cv, g, s)
        lungs[s], lung_thick[s] = m * (1.0 - med), th
    lung_all = lungs[-1] + lungs[1]
    ptx_region = None
    if sev["Pneumothorax"] > 0:  # collapsed lung edge: pleural line, no markings beyond
        r = rngs.finding("Pneumothorax")
        s = -1 if r.random() < 0.5 else 1
        gap = (0.06 + 0.1 * r.random()) * (0.55 + 0.45 * sev["Pneumothorax"])
        col, _ = _lung_shape(cv, g, s, lat_shrink=gap, apex_drop=gap * 1.4)
        col2, _ = _lung_shape(cv, g, s, lat_shrink=gap + 0.012, apex_drop=gap * 1.4 + 0.012)
        ptx_region = lungs[s] * (1.0 - col)
        att += np.float32(0.1) * lungs[s] * _clip01(col - col2)
        extra["ptx_side"] = s
    dl = np.float32(0.3)
    dark = lungs[-1] * lung_thick[-1] + lungs[1] * lung_thick[1]
    if ptx_region is not None:
        dark = dark + np.float32(0.25) * ptx_region
    att -= dl * dark

    # --- hila, vessels, parenchymal texture (the same for every study of a patient)
    trees = _patient_trees(a.texture_seed, "frontal")
    widen = 1.0 + 0.8 * sev["Edema"]  # congestion: vessels wider and indistinct
    vlines = _Lines(cv)
    _add_trees(vlines, trees, (g.hilum[-1], g.hilum[1]), (-1, 1), widen)
    for s in (-1, 1):
        hx, hy = g.hilum[s]
        _blob(cv, att, hx, hy, 0.06, 0.09, 0.05, edge=0.05, profile=1.0)
        vlines.add(_bezier((g.med_x + s * 0.06, g.carina_y + 0.02), (hx, hy - 0.06), (hx, hy),
                           8), 0.026, 1.0)
    tex = _patient_texture(a.texture_seed, 3, size, 24)
    markings = np.float32(0.055) * vlines.render() + np.float32(0.01) * tex
    if ptx_region is not None:
        markings = markings * (1.0 - ptx_region)
    att += markings * lung_all

    # --- breasts (female): soft-tissue shadows over the lower zones with a curved lower edge
    if a.breast > 0:
        for s in (-1, 1):
            bx, by = s * (g.lung_c + 0.1), g.base_y[s] - 0.2
            b = cv.box(bx - 0.45, bx + 0.45, by - 0.45, by + 0.35)
            if b is not None:
                sl, xs, ys = b
                rr = np.sqrt(((xs - bx) / 0.4) ** 2 + ((ys - by) / 0.3) ** 2)
                shade = _ramp(1.0 - rr, cv.edge(0.025) / 0.3) * _clip01(0.15 + (ys - by + 0.3)
                                                                        / 0.5)
                att[sl] += np.float32(0.055 * a.breast) * shade

    # --- bones: spine, ribs, clavicles, scapulae
    att += np.float32(bone) * _spine_frontal(cv, a, g)
    frac = None
    if sev["Fracture"] > 0:  # posterolateral rib(s) broken, lateral fragment displaced
        r = rngs.finding("Fracture")
        frac = (int(r.integers(3, max(4, min(a.rib_count - 3, 7)))), -1 if r.random() < 0.5
                else 1, float(r.uniform(0.42, 0.6)), float(r.uniform(0.8, 1.0)
                                                          * sev["Fracture"]))
        extra["fracture"] = frac
    ribs, frac_xy = _ribs_frontal(a, size, g.base_y[-1], g.base_y[1], frac)
    if frac_xy is not None:
        extra["fracture_xy"] = frac_xy
    att += np.float32(bone) * ribs * (1.0 - 0.5 * below)  # ribs fade into the dense abdomen
    cang = math.radians(a.clavicle_angle)
    for s in (-1, 1):
        x0c, y0c = s * 0.07 + g.med_x * 0.3, a.clavicle_y + 0.04
        ln = g.bw * 0.8
        us = np.linspace(0.0, 1.0, 20)
        pts = np.stack([x0c + s * us * ln,
                        y0c - np.tan(cang) * us * ln + 0.03 * np.sin(np.pi * us * 1.7)], 1)
        bones.add(pts, 0.06, 0.09)
        _blob(cv, att, x0c + s * 0.025, y0c, 0.045, 0.035, 0.05 * bone, edge=0.015)
        # scapula: in AP films it overlaps the lateral lung; in PA it is rotated away
        sx = s * (g.bw - (0.2 if ap else 0.08))
        tri = np.array([(s * (g.bw - 0.02), a.clavicle_y + 0.02), (sx, a.clavicle_y + 0.12),
                        (sx + s * 0.04, a.clavicle_y + 0.58)])
        bones.add(tri[1:], 0.03, 0.05)
        bones.add(tri[[0, 1]], 0.03, 0.05)
    att += np.float32(bone) * bones.out

    # --- trachea and main bronchi (air columns)
    tr = _ramp(0.038 - np.abs(x - g.med_x * 0.5), cv.edge(0.015))
    tr = tr * _ramp(g.carina_y - y, cv.edge(0.02))
    for s in (-1, 1):  # main bronchi
        _blob(cv, att, g.med_x * 0.5 + s * 0.045, g.carina_y + 0.045, 0.065, 0.02, -0.07,
              angle=s * 45.0, edge=0.02)
    att -= np.float32(0.13) * tr

    # --- stomach bubble under the left hemidiaphragm
    sbx = g.lung_c * 0.75
    sby = float(g.dome_y(1, sbx)) + 0.08
    b = cv.box(sbx - 0.15, sbx + 0.15, sby - 0.08, sby + 0.08)
    if b is not None:
        sl, xs, ys = b
        rr = np.sqrt(((xs - sbx) / 0.13) ** 2 + ((ys - sby) / 0.065) ** 2)
        att[sl] -= np.float32(0.1) * _ramp(1.0 - rr, 0.25) * _ramp(sby + 0.01 - ys, cv.edge(0.0))

    # --- findings and devices
    att += _frontal_findings(cv, a, g, sev, rngs, lungs, lung_thick, dl, extra)
    if sev["Support Devices"] > 0:
        _devices_frontal(cv, g, sev["Support Devices"], rngs.finding("Support Devices"), ap,
                         lines, att)
    att += lines.render()
    return _finish(cv, att, a, rngs, ap, lateral=False)


def _spine_frontal(cv: _Canvas, a: PatientAnatomy, g: _FrontalGeom) -> np.ndarray:
    """Vertebral column: bodies with disc spaces, pedicle 'eyes', spinous processes."""
    out = cv.zeros()
    b = cv.box(-0.2, 0.2, -1.0, 1.0)
    sl, xs, ys = b
    sx = g.med_x * 0.3 + a.scoliosis * np.sin((ys + 1.0) * 2.2)
    period = a.rib_spacing * 0.9
    ph = np.mod((ys - a.apex_y) / period, 1.0)
    rel = xs - sx
    col = _ramp(0.075 - np.abs(rel), cv.edge(0.012))
    dd = np.minimum(ph, 1.0 - ph)
    disc = _clip01(1.0 - dd / 0.09)
    plate = _clip01(1.0 - np.abs(dd - 0.11) / 0.04)
    body = col * ((1.0 - 0.6 * disc) * 0.045 + 0.02 * plate)
    ped_r = np.sqrt(((np.abs(rel) - 0.055) / 0.016) ** 2 + ((ph - 0.35) * period / 0.022) ** 2)
    ped = _clip01(1.0 - np.abs(ped_r - 0.8) / 0.35) * 0.035
    spin_r = np.sqrt((rel / 0.01) ** 2 + ((ph - 0.7) * period / 0.028) ** 2)
    spin = _ramp(1.0 - spin_r, 0.6) * 0.02
    out[sl] = body + ped + spin
    return out


@lru_cache(maxsize=16)
def _ribs_frontal(a: PatientAnatomy, size: int, base_r: float, base_l: float,
                  frac: tuple | None) -> tuple[np.ndarray, tuple[float, float] | None]:
    """The rib cage of one patient (cached: studies of a patient share it; read-only)."""
    cv = _Canvas(size)
    out = cv.zeros()
    g = _FrontalGeom(bw=a.body_width, shoulder_y=a.shoulder_y, nw=a.neck_width,
                     apex_y=a.apex_y, base_y={-1: base_r, 1: base_l}, lung_h=a.lung_width,
                     lung_c=a.lung_center, dome_h=a.dome_height, heart=(0.0, 0.0, 1.0),
                     med_x=0.0, med_w=0.0, knob=(0.0, 0.0, 0.0), carina_y=0.0, hilum={})
    n_broken = 0 if frac is None else (2 if frac[3] > 0.7 else 1)  # positive: two ribs
    frac_xy = None
    th = a.rib_thickness
    for i in range(a.rib_count):
        y0 = a.apex_y - 0.08 + a.rib_spacing * i * (0.92 + 0.015 * i)
        a1 = 0.12 - 0.45 * math.exp(-1.2 * i)  # the first ribs rise before they turn down
        a2 = a.rib_curve * 0.75 + 0.7 * math.exp(-0.9 * i)
        for s in (-1, 1):
            t_l = float(np.clip((y0 + 0.1 - g.apex_y) / (g.base_y[s] - g.apex_y), 0.0, 1.2))
            reach = float(g.centre(t_l) + g.half_width(t_l)) + 0.04
            reach = min(max(reach, 0.25), g.bw * 0.96)
            amp, ant = 0.16 * (1.0 - 0.03 * i), 0.07
            if frac is not None and frac[0] <= i < frac[0] + n_broken and frac[1] == s:
                xf = (frac[2] + 0.04 * (i - frac[0])) * reach
                disp = frac[3]
                _rib(cv, out, s, y0, a1, a2, reach, th, amp * 1.15, ant, x_hi=xf - 0.016)
                a1f = a1 + 0.35 * disp  # lateral fragment: angulated and stepped down
                _rib(cv, out, s, y0 + (a1 - a1f) * xf, a1f, a2, reach, th, amp * 1.15, 0.0,
                     x_lo=xf + 0.016, drop=1.1 * th * disp)
                _blob(cv, out, s * xf, y0 + a1 * xf + a2 * xf * xf + 0.6 * th * disp, 0.02,
                      0.04, 0.04 * disp, edge=0.01)  # haematoma at the break
                frac_xy = (s * xf, y0 + a1 * xf + a2 * xf * xf)
            else:
                _rib(cv, out, s, y0, a1, a2, reach, th, amp, ant)
    out.flags.writeable = False
    return out, frac_xy


def _frontal_findings(cv: _Canvas, a: PatientAnatomy, g: _FrontalGeom,
                      sev: Mapping[str, float], rngs: _Rngs, lungs: dict, lung_thick: dict,
                      dl: float, extra: dict) -> np.ndarray:
    out = cv.zeros()
    x, y = cv.x, cv.y
    size = cv.size

    if sev["Lung Opacity"] > 0:  # hazy, ill-defined patch in one (sometimes both) mid zones
        r = rngs.finding("Lung Opacity")
        sides = [-1 if r.random() < 0.5 else 1]
        if r.random() < 0.35:
            sides.append(-sides[0])
        field_ = _smooth_noise(r, size, 9)
        for s in sides:
            px, py = g.lung_point(s, r.uniform(0.35, 0.7), r.uniform(-0.1, 0.5))
            gss = np.exp(-(((x - px) / 0.28) ** 2 + ((y - py) / 0.24) ** 2))
            patch = gss * np.clip(0.65 + 0.45 * field_, 0.0, 1.3)
            out += np.float32(0.19 * sev["Lung Opacity"]) * patch * lungs[s] * lung_thick[s]

    if sev["Lung Lesion"] > 0:  # solitary round nodule / mass with a lobulated edge
        r = rngs.finding("Lung Lesion")
        s = -1 if r.random() < 0.5 else 1
        px, py = g.lung_point(s, r.uniform(0.2, 0.5), r.uniform(-0.1, 0.5))
        rad = r.uniform(0.045, 0.075) * (0.7 + 0.3 * sev["Lung Lesion"])
        b = cv.box(px - 2 * rad, px + 2 * rad, py - 2 * rad, py + 2 * rad)
        if b is not None:
            sl, xs, ys = b
            ang = np.arctan2(ys - py, xs - px)
            ph = r.uniform(0, 6.28, size=2)
            rr = rad * (1 + 0.08 * np.sin(3 * ang + ph[0]) + 0.05 * np.sin(5 * ang + ph[1]))
            d = np.sqrt((xs - px) ** 2 + (ys - py) ** 2)
            m = _ramp(rr - d, cv.edge(0.008)) * (0.7 + 0.3 * np.sqrt(_clip01(1 - (d / rr) ** 2)))
            out[sl] += np.float32(0.22 * (0.6 + 0.4 * sev["Lung Lesion"])) * m
        extra["lesion_xy"] = (px, py)

    if sev["Edema"] > 0:  # bat-wing perihilar haze + Kerley B lines at the bases
        r = rngs.finding("Edema")
        tex = _smooth_noise(r, size, 14)
        kerley = _Lines(cv)
        for s in (-1, 1):
            hx, hy = g.hilum[s]
            haze = np.exp(-(((x - hx - s * 0.07) / 0.26) ** 2 + ((y - hy - 0.03) / 0.3) ** 2))
            out += np.float32(0.15 * sev["Edema"]) * haze * (0.85 + 0.25 * tex) * lungs[s]
            for k in range(int(5 + 4 * sev["Edema"])):
                yk = g.base_y[s] - 0.05 - k * r.uniform(0.025, 0.04)
                tk = float(np.clip((yk - g.apex_y) / (g.base_y[s] - g.apex_y), 0, 1))
                xe, _ = g.lung_point(s, tk, 0.97)
                kerley.add([(xe, yk), (xe - s * r.uniform(0.04, 0.07), yk + r.normal(0, 0.004))],
                           0.008, 1.0)
        out += np.float32(0.09 * sev["Edema"]) * kerley.render() * (lungs[-1] + lungs[1])

    if sev["Consolidation"] > 0:  # dense lobar opacity with air bronchograms
        r = rngs.finding("Consolidation")
        lobe = int(r.integers(0, 3))
        s = -1 if lobe < 2 else 1
        hx, hy = g.hilum[s]
        if lobe == 0:  # right upper lobe: sharp lower border along the horizontal fissure
            fiss = hy - 0.03 + 0.05 * (s * x - 0.2)
            region = _ramp(fiss - y, cv.edge(0.01))
            target = (g.lung_point(s, 0.2, 0.2))
        else:  # lower lobes: fuzzy upper border
            region = _ramp(y - (hy + 0.03), 0.14)
            target = (g.lung_point(s, 0.92, 0.2))
        tex = _smooth_noise(r, size, 18)
        dens = region * lungs[s] * lung_thick[s] * np.clip(0.92 + 0.12 * tex, 0.0, 1.2)
        br = _Lines(cv)
        for _ in range(4):
            ang = math.atan2(target[1] - hy, target[0] - hx) + r.normal(0, 0.3)
            cur = (hx, hy)
            pts = [cur]
            for _k in range(5):
                ang += r.normal(0, 0.2)
                ln = r.uniform(0.05, 0.08)
                cur = (cur[0] + ln * math.cos(ang), cur[1] + ln * math.sin(ang))
                pts.append(cur)
            br.add(pts, 0.016, 1.0)
        bronch = _clip01(br.render())
        out += np.float32(dl * (0.78 + 0.2 * sev["Consolidation"])) * dens * (1.0 - 0.6 * bronch)

    if sev["Pneumonia"] > 0:  # several patchy foci in a lower zone
        r = rngs.finding("Pneumonia")
        sides = [-1 if r.random() < 0.6 else 1]
        if r.random() < 0.3:
            sides.append(-sides[0])
        tex = _smooth_noise(r, size, 36)
        for s in sides:
            blob_f = cv.zeros()
            t0, f0 = r.uniform(0.65, 0.85), r.uniform(-0.2, 0.5)
            for _ in range(int(r.integers(5, 9))):
                px, py = g.lung_point(s, t0 + r.uniform(-0.15, 0.15), f0 + r.uniform(-0.45, 0.45))
                rad = r.uniform(0.06, 0.1)
                b = cv.box(px - 2.5 * rad, px + 2.5 * rad, py - 2.5 * rad, py + 2.5 * rad)
                if b is not None:
                    sl, xs, ys = b
                    blob_f[sl] += np.exp(-(((xs - px) ** 2 + (ys - py) ** 2) / (rad * rad)))
            patchy = _clip01(_clip01(blob_f) * (0.55 + 0.6 * tex))  # confluent, mottled
            out += np.float32(0.2 * sev["Pneumonia"]) * patchy * lungs[s] * lung_thick[s]

    if sev["Atelectasis"] > 0:  # plate-like band at a base (volume loss is in the geometry)
        r = rngs.finding("Atelectasis")
        s = extra.get("atelectasis_side", 1)
        band = _Lines(cv)
        for k in range(1 + int(r.random() < 0.5)):
            t0 = r.uniform(0.74, 0.86) - 0.1 * k
            p0 = g.lung_point(s, t0, -0.3)
            p1 = g.lung_point(s, t0 + r.uniform(-0.02, 0.05), 0.85)
            band.add([p0, ((p0[0] + p1[0]) / 2, (p0[1] + p1[1]) / 2 + r.normal(0, 0.01)), p1],
                     r.uniform(0.02, 0.03), 1.0)
        out += np.float32(0.16 * sev["Atelectasis"]) * _crisp(band.render(), 1.2) * lungs[s]

    if sev["Pleural Effusion"] > 0:  # costophrenic angle filled, meniscus rising laterally
        r = rngs.finding("Pleural Effusion")
        sides = [-1 if r.random() < 0.5 else 1]
        if r.random() < 0.4:
            sides.append(-sides[0])
        for s in sides:
            height = 0.07 + r.uniform(0.12, 0.28) * sev["Pleural Effusion"] ** 2
            level = g.base_y[s] - height
            q = _clip01((s * x - 0.05) / (g.lung_c + g.lung_h))
            meniscus = level - (0.04 + 0.45 * height) * q**3
            fluid = _ramp(y - meniscus, cv.edge(0.035))
            out += np.float32(dl * 1.05) * fluid * lungs[s] * lung_thick[s]
            side = _ramp(s * x - 0.03, cv.edge(0.02)) * _ramp(g.bw - 0.05 - s * x, 0.04)
            below = _ramp(y - g.dome_y(s, x), cv.edge(0.02)) * _ramp(g.base_y[s] + 0.05 - y,
                                                                      0.05)
            out += np.float32(0.05) * fluid * side * (lungs[s] + below)

    if sev["Pleural Other"] > 0:  # pleural thickening along the lateral wall + plaques
        r = rngs.finding("Pleural Other")
        s = -1 if r.random() < 0.5 else 1
        t0 = r.uniform(0.25, 0.45)
        t1 = t0 + r.uniform(0.3, 0.45)
        y0_ = g.apex_y + t0 * (g.base_y[s] - g.apex_y)
        y1_ = g.apex_y + t1 * (g.base_y[s] - g.apex_y)
        thk = r.uniform(0.035, 0.055) * (0.7 + 0.3 * sev["Pleural Other"])
        inner, _ = _lung_shape(cv, g, s, lat_shrink=thk)
        vert = _clip01(np.minimum(y - y0_, y1_ - y) / 0.08)
        wall = lungs[s] * (1.0 - inner) * vert * _ramp(s * x - 0.25, 0.1)
        out += np.float32(0.3) * wall
        for _ in range(int(r.integers(2, 4))):
            px, py = g.lung_point(s, r.uniform(0.3, 0.9), 0.92)
            _blob(cv, out, px, py, 0.018, r.uniform(0.04, 0.07), 0.2 * sev["Pleural Other"],
                  angle=r.normal(0, 10), edge=0.006)
    return out


def _devices_frontal(cv: _Canvas, g: _FrontalGeom, severity: float, r: np.random.Generator,
                     ap: bool, lines: _Lines, att: np.ndarray) -> None:
    """Tubes, lines and ECG leads: thin, very dense (metal or contrast-striped) structures."""
    full = severity >= 1.0
    for _ in range(int(r.integers(3, 6)) if full else 2):  # ECG electrodes and their wires
        s = -1 if r.random() < 0.5 else 1
        lx, ly = s * r.uniform(0.3, 0.8), r.uniform(-0.75, 0.55)
        _ring(cv, att, lx, ly, 0.03, 0.012, 0.35)
        _blob(cv, att, lx, ly, 0.011, 0.011, 0.45, edge=0.005)
        ctrl = (lx + s * r.uniform(0.0, 0.3), ly + r.uniform(-0.4, 0.4))
        lines.add(_bezier((lx, ly), ctrl, (s * 1.1, ly + r.uniform(-0.5, 0.5))), 0.01, 0.3)
    if full and r.random() < 0.75:  # endotracheal tube ending above the carina
        tip = g.carina_y - r.uniform(0.06, 0.14)
        xm = g.med_x * 0.5
        for dxw in (-0.017, 0.017):
            lines.add([(xm + dxw, -1.05), (xm + dxw, tip)], 0.008, 0.2)
        lines.add([(xm - 0.008, -1.05), (xm - 0.008, tip)], 0.01, 0.45)
    if r.random() < (0.8 if full else 0.45):  # central venous line into the SVC
        side = -1 if r.random() < 0.7 else 1
        start = (side * g.bw * 0.75, g.shoulder_y + 0.04)
        knee = (side * 0.14, g.carina_y - 0.3)
        tipp = (g.med_x - 0.08, g.carina_y + r.uniform(0.05, 0.2))
        pts = np.concatenate([_bezier(start, (side * 0.4, g.shoulder_y + 0.2), knee, 16),
                              _bezier(knee, (g.med_x - 0.09, g.carina_y - 0.2), tipp, 12)])
        lines.add(pts, 0.012, 0.5)
    if full and r.random() < 0.45:  # nasogastric tube down the oesophagus into the stomach
        xs0 = g.med_x + 0.03
        stomach = (g.lung_c * 0.75, float(g.dome_y(1, g.lung_c * 0.75)) + 0.12)
        pts = np.concatenate([np.array([(xs0, -1.05), (xs0 + 0.01, 0.0)]),
                              _bezier((xs0 + 0.01, 0.0), (xs0 + 0.02, stomach[1] + 0.05),
                                      stomach, 12)])
        lines.add(pts, 0.013, 0.4)
    if full and r.random() < (0.3 if not ap else 0.15):  # pacemaker with its lead
        px, py = (-0.55 if r.random() < 0.3 else 0.55), g.shoulder_y + 0.22
        _blob(cv, att, px, py, 0.08, 0.06, 0.9, angle=r.normal(0, 15), edge=0.01)
        lines.add(_bezier((px, py), (0.0, g.carina_y - 0.1), (g.heart[0] + 0.05,
                                                              g.heart[1] + 0.1), 24), 0.013,
                  0.45)


# --------------------------------------------------------------------------------------------
# Lateral view (patient's front on the image left, spine on the right)
# --------------------------------------------------------------------------------------------


@dataclass
class _LateralGeom:
    ant: float  # anterior border of the lung field at mid height (behind the sternum)
    post: float  # posterior border of the lung field (posterior ribs)
    apex_x: float
    apex_y: float
    base_ant: float  # diaphragm height at the anterior border
    base_post: float  # posterior costophrenic sulcus (the lowest point of the lung)
    dome_h: float
    heart: tuple[float, float, float]  # centre x, centre y, scale
    spine_x: float
    kyph: float
    hilum: tuple[float, float]
    carina_y: float
    skin_ant: float
    skin_post: float

    def t(self, y):
        return (y - np.float32(self.apex_y)) / np.float32(self.base_post - self.apex_y)

    def x_ant(self, t):
        tt = np.clip(np.asarray(t, dtype=np.float32) / 0.55, -1.0, 1.0)
        k = np.sign(tt) * np.abs(tt) ** 0.38  # the apex rounds down towards the sternum
        return np.float32(self.apex_x) + np.float32(self.ant - self.apex_x) * k - 0.05 * np.clip(
            t, 0.0, 1.2)

    def x_post(self, t):
        tt = np.clip(np.asarray(t, dtype=np.float32) / 0.35, -1.0, 1.0)
        k = np.sign(tt) * np.abs(tt) ** 0.45
        return np.float32(self.apex_x) + np.float32(self.post - self.apex_x) * k + 0.04 * np.sin(
            np.pi * np.clip(t, 0.0, 1.0))

    def dome_y(self, x, offset: float = 0.0):
        xn = _clip01((np.asarray(x, dtype=np.float32) - self.ant) / (self.post - self.ant))
        return (np.float32(self.base_ant) + np.float32(self.base_post - self.base_ant) * xn**2.2
                - np.float32(self.dome_h) * 4.0 * xn * (1.0 - xn) + np.float32(offset))

    def spine(self, y):
        return self.spine_x - self.kyph * 0.3 * (1.0 - np.asarray(y, dtype=np.float32) ** 2)

    def point(self, t: float, frac: float) -> tuple[float, float]:
        """t: 0 apex .. 1 posterior base; frac: -1 anterior .. 1 posterior border."""
        y = self.apex_y + t * (self.base_post - self.apex_y)
        xa, xp = float(self.x_ant(t)), float(self.x_post(t))
        return 0.5 * (xa + xp) + 0.5 * frac * (xp - xa), y


def _lateral_lung(cv: _Canvas, g: _LateralGeom, shrink: float = 0.0, apex_drop: float = 0.0,
                  edge: float = 0.014):
    """Soft mask of the (superimposed) lung field and its relative thickness."""
    t = g.t(cv.y - np.float32(apex_drop))
    xa = g.x_ant(t) + np.float32(shrink * 0.4)
    xp = g.x_post(t) - np.float32(shrink)
    e = cv.edge(edge)
    dome = g.dome_y(cv.x)
    m = _ramp(cv.x - xa, e) * _ramp(xp - cv.x, e) * _ramp(dome - cv.y, e)
    u = _clip01(np.abs(cv.x - 0.5 * (xa + xp)) / np.maximum(0.5 * (xp - xa), 0.02))
    thick = (0.5 + 0.5 * np.sqrt(1.0 - u * u)) * (0.6 + 0.4 * _clip01((dome - cv.y) / 0.15))
    return m, thick


def _render_lateral(a: PatientAnatomy, labels: Mapping[str, float], rngs: _Rngs,
                    size: int) -> np.ndarray:
    cv = _Canvas(size)
    sev = {f: _severity(labels, f) for f in FINDINGS}
    x, y = cv.x, cv.y
    depth = a.body_width / 0.85
    base = a.diaphragm_y
    atel = sev["Atelectasis"]
    hs = a.heart_size * (1.0 + 0.35 * sev["Cardiomegaly"])
    g = _LateralGeom(
        ant=-0.5 * depth, post=0.6 * depth, apex_x=0.08, apex_y=a.apex_y - 0.02,
        base_ant=base - 0.2 - 0.05 * atel, base_post=base + 0.14 - 0.05 * atel,
        dome_h=0.03 + 0.4 * a.dome_height, heart=(-0.2 * depth, base - 0.3, hs),
        spine_x=0.42 * depth, kyph=a.kyphosis, hilum=(0.1, a.apex_y + 0.62),
        carina_y=a.apex_y + 0.52, skin_ant=-0.64 * depth, skin_post=0.76 * depth,
    )
    st = np.float32(0.55 * a.soft_tissue)
    bone = float(a.bone_density)
    lines = _Lines(cv)
    bones = _Bands(cv)

    # --- body: elliptical chord across the chest, neck above, shoulders superimposed on top
    neck = _clip01((a.shoulder_y + 0.1 - y) / 0.3)
    ant_row = g.skin_ant - 0.04 * np.exp(-(((y - 0.15) / 0.5) ** 2)) + 0.35 * neck**1.5
    post_row = g.skin_post + 0.12 * a.kyphosis * np.exp(-(((y + 0.3) / 0.4) ** 2)) - 0.2 * (
        neck**1.5)
    c_row = 0.5 * (ant_row + post_row)
    hw_row = 0.5 * (post_row - ant_row)
    rel = np.abs(x - c_row) / hw_row
    body = np.sqrt(_clip01(1.0 - rel * rel)) * _ramp(1.0 - rel, cv.edge(0.02) / 0.7)
    att = st * body * (1.0 - 0.25 * neck)
    att += st * 0.3 * body * _clip01((g.carina_y - 0.1 - y) / 0.4)  # shoulders superimposed
    arms = _Bands(cv, rim=0.0)  # arms raised forward over the upper chest
    arms.add([(-1.15, -0.4), (0.0, -1.1)], 0.3, 1.0, edge=0.12)
    att += st * 0.25 * arms.out
    bones.add([(-1.1, -0.38), (-0.1, -1.05)], 0.06, 0.06)
    if a.breast > 0:
        bx, by = g.skin_ant, base - 0.22
        b = cv.box(bx - 0.35, bx + 0.15, by - 0.3, by + 0.3)
        if b is not None:
            sl, xs, ys = b
            rr = np.sqrt(((xs - bx) / 0.17) ** 2 + ((ys - by) / 0.22) ** 2)
            att[sl] += np.float32(0.3 * a.breast) * st * np.sqrt(_clip01(1.0 - rr * rr))

    # --- lung field (both lungs superimposed), heart, great vessels
    lung, thick = _lateral_lung(cv, g)
    hx, hy, _ = g.heart
    heart = _ellipse(cv, hx - 0.05 * (hs - 1), hy - 0.03 * (hs - 1), 0.37 * hs,
                     0.27 * (1 + 0.6 * (hs - 1)), -32.0, 0.02)
    ivc = _ramp(0.045 - np.abs(x - (hx + 0.3 * hs)), 0.03) * _ramp(y - (hy + 0.12), 0.05)
    aorta = _Lines(cv, crisp=1.3)
    ac = (0.0, g.carina_y - 0.08)
    angs = np.linspace(math.pi * 0.95, math.pi * 2.0, 14)
    arc = np.stack([ac[0] + 0.17 * np.cos(angs), ac[1] + 0.15 * np.sin(angs)], 1)
    arc = np.concatenate([np.array([(hx + 0.02, hy - 0.1)]), arc,
                          np.array([(float(g.spine(0.3)) - 0.13, base + 0.1)])])
    aorta.add(arc, 0.09 * (1 + 0.25 * a.aortic_unfolding), 1.0)
    med = np.maximum(np.maximum(heart, 0.5 * ivc), 0.4 * aorta.render())
    if sev["Enlarged Cardiomediastinum"] > 0:  # fills the retrosternal clear space
        em = cv.zeros()
        _blob(cv, em, g.ant + 0.22, g.carina_y - 0.05, 0.2, 0.28,
              0.7 + 0.3 * sev["Enlarged Cardiomediastinum"], edge=0.06, profile=0.4)
        med = np.maximum(med, _clip01(em))
    dome1 = g.dome_y(x)
    below = _ramp(y - dome1, cv.edge(0.015))
    att += np.float32(0.1) * below * body
    _polyline_dome = _Lines(cv)  # the other hemidiaphragm: a second, higher contour
    xsd = np.linspace(g.ant, g.post - 0.05, 20)
    _polyline_dome.add(np.stack([xsd, g.dome_y(xsd, offset=-0.045)], 1), 0.012, 1.0)
    att += np.float32(0.04) * _polyline_dome.render() * lung
    att += np.float32(0.02) * med * (1.0 - below)
    ptx_region = None
    if sev["Pneumothorax"] > 0:
        r = rngs.finding("Pneumothorax")
        gap = (0.04 + 0.05 * r.random()) * (0.55 + 0.45 * sev["Pneumothorax"])
        col, _ = _lateral_lung(cv, g, shrink=gap * 0.5, apex_drop=gap * 1.6)
        col2, _ = _lateral_lung(cv, g, shrink=gap * 0.5 + 0.012, apex_drop=gap * 1.6 + 0.012)
        top = _ramp(g.carina_y - 0.1 - y, 0.2)
        ptx_region = lung * (1.0 - col) * top
        att += np.float32(0.1) * lung * _clip01(col - col2) * top
    dl = np.float32(0.33)
    lung_eff = lung * (1.0 - 0.6 * med)  # the lungs flank the heart: still partly aerated
    dark = lung_eff * thick * (0.75 + 0.25 * _clip01((y - g.apex_y) / 0.45))
    if ptx_region is not None:
        dark = dark + np.float32(0.25) * ptx_region
    att -= dl * dark

    trees = _patient_trees(a.texture_seed, "lateral")
    vlines = _Lines(cv)
    _add_trees(vlines, trees, (g.hilum,), (1,), 1.0 + 0.8 * sev["Edema"])
    _blob(cv, att, g.hilum[0], g.hilum[1], 0.09, 0.08, 0.05, edge=0.05, profile=1.0)
    tex = _patient_texture(a.texture_seed, 4, size, 22)
    markings = np.float32(0.032) * vlines.render() + np.float32(0.012) * tex
    if ptx_region is not None:
        markings = markings * (1.0 - ptx_region)
    att += markings * lung

    # --- trachea, sternum, spine, ribs, scapulae
    tpts = np.array([(0.0, -1.05), (0.04, g.carina_y - 0.3), (g.hilum[0] + 0.01,
                                                                g.carina_y)])
    lines.add(tpts, 0.07, -0.12)
    _ring(cv, att, g.hilum[0] + 0.01, g.carina_y + 0.06, 0.022, 0.01, 0.03)
    sx0 = g.skin_ant + 0.07
    ster = np.array([(sx0 + 0.05, a.clavicle_y + 0.08), (sx0, base - 0.4),
                     (sx0 + 0.03, g.base_ant - 0.02)])
    if sev["Fracture"] > 0:  # sternal step-off on the lateral view
        r = rngs.finding("Fracture")
        k = r.uniform(0.35, 0.6)
        mid = ster[0] + k * (ster[1] - ster[0])
        step = 0.035 * sev["Fracture"]
        shift = np.array([step, 0.0])
        bones.add([ster[0], mid - np.array([0.0, 0.012])], 0.035, 0.09)
        bones.add([mid + np.array([step, 0.012]), ster[1] + shift, ster[2] + shift], 0.035,
                  0.09)
    else:
        bones.add(ster, 0.035, 0.09)
    _blob(cv, att, sx0 + 0.07, a.clavicle_y + 0.14, 0.05, 0.08, 0.05 * bone, edge=0.02)
    att += np.float32(bone) * _spine_lateral(cv, a, g)
    ribs = _Lines(cv, crisp=1.5)
    for i in range(a.rib_count):
        y0 = a.apex_y + 0.02 + i * a.rib_spacing
        sx = float(g.spine(y0)) + 0.06
        for off in (0.0, 0.04):  # left and right ribs, offset by magnification
            ribs.add(_bezier((sx + off, y0 + off), (sx - 0.35, y0 - 0.02 + off),
                             (sx - 0.7, y0 + 0.3 + off), 14), 1.8 * a.rib_thickness, 1.0)
    att += np.float32(0.035 * bone) * ribs.render()
    for off in (0.0, 0.05):  # scapular borders
        sxs = float(g.spine(-0.4))
        bones.add([(sxs - 0.18 + off, a.clavicle_y + 0.02), (sxs - 0.04 + off,
                                                            a.clavicle_y + 0.62)],
                  0.02, 0.04)
    att += np.float32(bone) * bones.out

    # --- stomach bubble below the left dome, anteriorly
    sbx = g.ant + 0.3
    _blob(cv, att, sbx, float(g.dome_y(sbx)) + 0.08, 0.1, 0.045, -0.08, edge=0.03)

    att += _lateral_findings(cv, a, g, sev, rngs, lung_eff, thick, dl)
    if sev["Support Devices"] > 0:
        _devices_lateral(cv, g, sev["Support Devices"], rngs.finding("Support Devices"), tpts,
                         lines, att)
    att += lines.render()
    return _finish(cv, att, a, rngs, False, lateral=True)


def _spine_lateral(cv: _Canvas, a: PatientAnatomy, g: _LateralGeom) -> np.ndarray:
    """Vertebral bodies as blocks with end plates; lower ones more lucent (the 'spine sign')."""
    out = cv.zeros()
    b = cv.box(g.spine_x - 0.45, g.spine_x + 0.45, -1.0, 1.0)
    if b is None:
        return out
    sl, xs, ys = b
    sx = g.spine(ys)
    period = a.rib_spacing * 0.95
    ph = np.mod((ys - a.apex_y) / period, 1.0)
    rel = xs - sx
    col = _ramp(0.085 - np.abs(rel), cv.edge(0.01))
    dd = np.minimum(ph, 1.0 - ph)
    disc = _clip01(1.0 - dd / 0.1)
    plate = _clip01(1.0 - np.abs(dd - 0.12) / 0.035)
    cortex = _clip01(1.0 - np.abs(np.abs(rel) - 0.078) / 0.012)
    fade = 1.0 - 0.35 * _clip01((ys + 0.3) / 1.0)
    body = col * ((1.0 - 0.8 * disc) * (0.07 + 0.03 * cortex) + 0.04 * plate) * fade
    post_el = _ramp(0.07 - np.abs(rel - 0.19), 0.05) * (0.5 + 0.5 * np.cos(ph * 6.283)) * 0.045
    out[sl] = body + post_el
    return out


def _lateral_findings(cv: _Canvas, a: PatientAnatomy, g: _LateralGeom,
                      sev: Mapping[str, float], rngs: _Rngs, lung: np.ndarray,
                      thick: np.ndarray, dl: float) -> np.ndarray:
    out = cv.zeros()
    x, y = cv.x, cv.y
    size = cv.size
    if sev["Lung Opacity"] > 0:
        r = rngs.finding("Lung Opacity")
        px, py = g.point(r.uniform(0.3, 0.55), r.choice([-1, 1]) * r.uniform(0.35, 0.6))
        f = _smooth_noise(r, size, 9)
        gss = np.exp(-(((x - px) / 0.3) ** 2 + ((y - py) / 0.24) ** 2))
        out += np.float32(0.2 * sev["Lung Opacity"]) * gss * np.clip(0.65 + 0.45 * f, 0,
                                                                     1.3) * lung * thick
    if sev["Lung Lesion"] > 0:
        r = rngs.finding("Lung Lesion")
        px, py = g.point(r.uniform(0.2, 0.5), r.uniform(-0.3, 0.6))
        rad = r.uniform(0.045, 0.075) * (0.7 + 0.3 * sev["Lung Lesion"])
        _blob(cv, out, px, py, rad, rad * r.uniform(0.85, 1.0), 0.2, edge=0.008, profile=0.3)
    if sev["Edema"] > 0:
        r = rngs.finding("Edema")
        tex = _smooth_noise(r, size, 14)
        hx, hy = g.hilum
        haze = np.exp(-(((x - hx) / 0.35) ** 2 + ((y - hy) / 0.3) ** 2))
        out += np.float32(0.15 * sev["Edema"]) * haze * (0.85 + 0.25 * tex) * lung
        fiss = _Lines(cv)  # fluid in the major fissure
        fiss.add(_bezier((g.post - 0.2, g.apex_y + 0.35), (hx, hy + 0.1),
                         (g.ant + 0.15, g.base_ant - 0.03), 16), 0.012, 1.0)
        out += np.float32(0.09 * sev["Edema"]) * fiss.render() * lung
    if sev["Consolidation"] > 0:  # lower lobe: behind and below the major fissure
        r = rngs.finding("Consolidation")
        p0 = np.array((g.post - 0.2, g.apex_y + 0.35 + r.uniform(-0.05, 0.1)))
        p1 = np.array((g.ant + 0.15, g.base_ant - 0.03))
        nrm = np.array((p1[1] - p0[1], -(p1[0] - p0[0])))
        nrm = nrm / np.linalg.norm(nrm)
        if nrm[0] < 0:
            nrm = -nrm
        along = ((x - p0[0]) * (p1[0] - p0[0]) + (y - p0[1]) * (p1[1] - p0[1])) / float(
            np.sum((p1 - p0) ** 2))
        sd = (x - p0[0]) * nrm[0] + (y - p0[1]) * nrm[1] + 0.08 * along * (1.0 - along)
        region = _ramp(sd, cv.edge(0.01)) * _ramp(y - (g.hilum[1] - 0.15), 0.15)
        tex = _smooth_noise(r, size, 18)
        br = _Lines(cv)
        for _ in range(3):
            q1 = g.point(r.uniform(0.75, 0.95), r.uniform(0.1, 0.7))
            br.add(_bezier(g.hilum, ((g.hilum[0] + q1[0]) / 2 + r.normal(0, 0.05),
                                     (g.hilum[1] + q1[1]) / 2), q1, 10), 0.016, 1.0)
        out += np.float32(dl * (0.8 + 0.2 * sev["Consolidation"])) * region * lung * thick * (
            np.clip(0.92 + 0.12 * tex, 0, 1.2) * (1.0 - 0.6 * _clip01(br.render())))
    if sev["Pneumonia"] > 0:
        r = rngs.finding("Pneumonia")
        tex = _smooth_noise(r, size, 36)
        bl = cv.zeros()
        t0, f0 = r.uniform(0.55, 0.7), r.uniform(0.25, 0.55)
        for _ in range(int(r.integers(5, 9))):
            px, py = g.point(t0 + r.uniform(-0.1, 0.1), f0 + r.uniform(-0.3, 0.3))
            rad = r.uniform(0.06, 0.1)
            b = cv.box(px - 2.5 * rad, px + 2.5 * rad, py - 2.5 * rad, py + 2.5 * rad)
            if b is not None:
                sl, xs, ys = b
                bl[sl] += np.exp(-(((xs - px) ** 2 + (ys - py) ** 2) / (rad * rad)))
        out += np.float32(0.2 * sev["Pneumonia"]) * _clip01(_clip01(bl) * (0.55 + 0.6 * tex)) * (
            lung * thick)
    if sev["Atelectasis"] > 0:
        r = rngs.finding("Atelectasis")
        band = _Lines(cv, crisp=1.3)
        t0 = r.uniform(0.68, 0.8)
        band.add([g.point(t0, -0.6), g.point(t0 + 0.06, 0.5)], r.uniform(0.025, 0.035), 1.0)
        out += np.float32(0.26 * sev["Atelectasis"]) * band.render() * lung
    if sev["Pleural Effusion"] > 0:  # the posterior costophrenic sulcus fills first
        r = rngs.finding("Pleural Effusion")
        height = 0.08 + r.uniform(0.1, 0.24) * sev["Pleural Effusion"] ** 2
        q = _clip01((x - g.ant) / (g.post - g.ant))
        meniscus = g.dome_y(x) - height * (0.15 + 0.85 * q * q)  # deepest in the sulcus
        fluid = _ramp(y - meniscus, cv.edge(0.03))
        out += np.float32(dl * 1.05) * fluid * lung * thick
    if sev["Pleural Other"] > 0:  # thickening along the posterior wall + diaphragmatic plaques
        r = rngs.finding("Pleural Other")
        inner, _ = _lateral_lung(cv, g, shrink=r.uniform(0.03, 0.045))
        t0, t1 = r.uniform(0.2, 0.4), r.uniform(0.7, 0.9)
        y0_ = g.apex_y + t0 * (g.base_post - g.apex_y)
        y1_ = g.apex_y + t1 * (g.base_post - g.apex_y)
        vert = _clip01(np.minimum(y - y0_, y1_ - y) / 0.06)
        out += np.float32(0.24) * lung * (1.0 - inner) * vert * _ramp(x - 0.1, 0.1)
        for _ in range(int(r.integers(2, 4))):
            px = r.uniform(g.ant + 0.3, g.post - 0.3)
            _blob(cv, out, px, float(g.dome_y(px)) - 0.012, r.uniform(0.04, 0.07), 0.016,
                  0.2 * sev["Pleural Other"], edge=0.006)
    if sev["Fracture"] > 0:  # plus a displaced posterior rib fragment
        r = rngs.finding("Fracture")
        i = int(r.integers(3, max(4, a.rib_count - 3)))
        y0 = a.apex_y + 0.02 + i * a.rib_spacing
        sx = float(g.spine(y0)) + 0.06
        pts = _bezier((sx, y0), (sx - 0.35, y0 - 0.02), (sx - 0.7, y0 + 0.3), 14)
        frag = _Lines(cv, crisp=1.5)
        frag.add(pts[5:9] + np.array([0.0, 0.05 * sev["Fracture"]]), 1.8 * a.rib_thickness,
                 1.0)
        out += np.float32(0.06 * a.bone_density) * frag.render()
    return out


def _devices_lateral(cv: _Canvas, g: _LateralGeom, severity: float, r: np.random.Generator,
                     trachea: np.ndarray, lines: _Lines, att: np.ndarray) -> None:
    full = severity >= 1.0
    for _ in range(int(r.integers(2, 5)) if full else 2):
        lx, ly = r.uniform(g.ant, g.post - 0.1), r.uniform(-0.6, 0.4)
        _ring(cv, att, lx, ly, 0.03, 0.012, 0.3)
        _blob(cv, att, lx, ly, 0.01, 0.01, 0.4, edge=0.005)
        lines.add(_bezier((lx, ly), (lx + r.uniform(-0.3, 0.3), ly + 0.3),
                          (r.uniform(-1, 1), 1.1), 16), 0.01, 0.25)
    if full and r.random() < 0.75:
        tr = trachea.copy()
        tr[-1] = tr[-2] + 0.8 * (tr[-1] - tr[-2])
        lines.add(tr, 0.013, 0.4)
    if r.random() < (0.8 if full else 0.45):
        lines.add(_bezier((-0.3, -1.05), (-0.2, g.carina_y - 0.3),
                          (g.heart[0] + 0.1, g.carina_y + 0.14), 16), 0.012, 0.45)
    if full and r.random() < 0.45:
        sx = float(g.spine(0.0)) - 0.15
        end = (g.ant + 0.3, float(g.dome_y(g.ant + 0.3)) + 0.1)
        lines.add(_bezier((0.02, -1.05), (sx, 0.0), end, 20), 0.013, 0.4)


# --------------------------------------------------------------------------------------------
# Public rendering entry point
# --------------------------------------------------------------------------------------------


def render_study(anatomy: PatientAnatomy, view: str, ap_pa: str | None,
                 labels: Mapping[str, float], rng: np.random.Generator,
                 size: int = 256) -> np.ndarray:
    """One radiograph as float32 attenuation in [0, 1] (bright = dense, MONOCHROME2).

    rng decides the per-study jitter (pose, exposure, grain) and where findings go; it is split
    into fixed sub-streams first, so switching a label on or off leaves everything else equal.
    """
    rngs = _Rngs(rng)
    v = str(view).strip().lower()
    if v == "frontal":
        ap = str(ap_pa or "PA").strip().upper() == "AP"
        return _render_frontal(anatomy, ap, labels, rngs, int(size))
    if v == "lateral":
        return _render_lateral(anatomy, labels, rngs, int(size))
    raise ValueError(f"view must be 'Frontal' or 'Lateral', got {view!r}")


# --------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------

# Rough CheXpert-like propensities of being picked as a positive finding.
_BASE_WEIGHT = {
    "Enlarged Cardiomediastinum": 0.06, "Cardiomegaly": 0.14, "Lung Opacity": 0.38,
    "Lung Lesion": 0.05, "Edema": 0.2, "Consolidation": 0.08, "Pneumonia": 0.05,
    "Atelectasis": 0.16, "Pneumothorax": 0.09, "Pleural Effusion": 0.3, "Pleural Other": 0.025,
    "Fracture": 0.045, "Support Devices": 0.35,
}
# Once a finding is present, these become more likely (co-occurrence structure of CheXpert).
_BOOST = {
    "Cardiomegaly": {"Enlarged Cardiomediastinum": 3.5, "Edema": 2.2, "Pleural Effusion": 1.8},
    "Enlarged Cardiomediastinum": {"Cardiomegaly": 3.5},
    "Edema": {"Pleural Effusion": 2.5, "Cardiomegaly": 2.0, "Support Devices": 1.6},
    "Pleural Effusion": {"Edema": 1.8, "Atelectasis": 2.0, "Support Devices": 1.4},
    "Pneumonia": {"Consolidation": 4.0, "Lung Opacity": 3.0},
    "Consolidation": {"Pneumonia": 3.5, "Lung Opacity": 2.0, "Atelectasis": 1.5},
    "Lung Opacity": {"Pneumonia": 2.0, "Atelectasis": 1.5},
    "Atelectasis": {"Pleural Effusion": 1.8, "Lung Opacity": 1.5},
    "Support Devices": {"Edema": 1.6, "Pleural Effusion": 1.5, "Pneumothorax": 1.5},
    "Pneumothorax": {"Support Devices": 2.0, "Fracture": 2.0},
    "Fracture": {"Pneumothorax": 2.5},
    "Lung Lesion": {"Pleural Effusion": 1.3},
}
# Strong pairs: once the key is present the partner is added outright with this chance.
_COMPANION = {
    "Cardiomegaly": (("Enlarged Cardiomediastinum", 0.25), ("Pleural Effusion", 0.2)),
    "Pneumonia": (("Consolidation", 0.3), ("Lung Opacity", 0.35)),
    "Edema": (("Pleural Effusion", 0.3), ("Cardiomegaly", 0.15)),
    "Fracture": (("Pneumothorax", 0.15),),
}
_P_UNCERTAIN = {  # chance that a non-positive observation is reported as uncertain
    "Atelectasis": 0.1, "Consolidation": 0.08, "Pneumonia": 0.07, "Edema": 0.05,
    "Enlarged Cardiomediastinum": 0.05, "Cardiomegaly": 0.03, "Pleural Effusion": 0.04,
    "Lung Opacity": 0.02,
}
_P_NEGATIVE = {  # chance of an explicit negative ("no pneumothorax")
    "Pneumothorax": 0.35, "Pleural Effusion": 0.3, "Edema": 0.2, "Consolidation": 0.2,
    "Pneumonia": 0.1, "Cardiomegaly": 0.1, "Enlarged Cardiomediastinum": 0.08,
    "Lung Opacity": 0.05, "Support Devices": 0.05, "Fracture": 0.05, "Lung Lesion": 0.04,
    "Atelectasis": 0.04, "Pleural Other": 0.02,
}
_AGE_LINKED = ("Cardiomegaly", "Pleural Effusion", "Edema", "Enlarged Cardiomediastinum")


def sample_labels(rng: np.random.Generator, ap_pa: str, age: int) -> dict[str, float]:
    """CheXpert-coded labels of one study: sparse, correlated, some uncertain, many blank."""
    labels = {o: math.nan for o in OBSERVATIONS}
    ap = ap_pa == "AP"
    if rng.random() < (0.14 if ap else 0.32):
        labels["No Finding"] = 1.0
        for o in FINDINGS:
            if rng.random() < 0.5 * _P_NEGATIVE.get(o, 0.0):
                labels[o] = 0.0
        return labels
    weights = dict(_BASE_WEIGHT)
    weights["Support Devices"] *= 2.5 if ap else 0.35
    for o in _AGE_LINKED:
        weights[o] *= 0.6 + age / 90.0
    n_pos = int(rng.choice([1, 2, 3, 4], p=[0.36, 0.3, 0.2, 0.14]))
    chosen: list[str] = []
    for _ in range(n_pos):
        names = [o for o in FINDINGS if o not in chosen]
        w = np.array([weights[o] for o in names])
        pick = names[int(rng.choice(len(names), p=w / w.sum()))]
        chosen.append(pick)
        for o, f in _BOOST.get(pick, {}).items():
            weights[o] *= f
    for o in list(chosen):
        for partner, p in _COMPANION.get(o, ()):
            if len(chosen) < 4 and partner not in chosen and rng.random() < p:
                chosen.append(partner)
    for k, o in enumerate(chosen):  # the first one stays positive
        labels[o] = -1.0 if k > 0 and rng.random() < 0.15 else 1.0
    for o in FINDINGS:
        if o in chosen:
            continue
        u = rng.random()
        if u < _P_UNCERTAIN.get(o, 0.01):
            labels[o] = -1.0
        elif u < _P_UNCERTAIN.get(o, 0.01) + _P_NEGATIVE.get(o, 0.0):
            labels[o] = 0.0
    return labels


_RARE = ("Lung Lesion", "Pleural Other", "Fracture", "Pneumothorax",
         "Enlarged Cardiomediastinum", "Pneumonia")


def _planted_labels(rng: np.random.Generator) -> dict[str, float]:
    """2-4 certain positives including a rare one: a combination seldom seen by chance."""
    labels = {o: math.nan for o in OBSERVATIONS}
    first = _RARE[int(rng.integers(len(_RARE)))]
    others = [o for o in FINDINGS if o != first]
    n = int(rng.integers(2, 5))
    picks = [first] + [others[i] for i in rng.choice(len(others), size=n - 1, replace=False)]
    for o in FINDINGS:
        labels[o] = 1.0 if o in picks else (0.0 if rng.random() < 0.25 else math.nan)
    return labels


def _prompts(view: str, ap_pa: str | None, sex: str, age: int,
             labels: Mapping[str, float]) -> set[str]:
    return {prompt_text(view, ap_pa, sex, age, labels, p) for p in UNCERTAINTY_POLICIES}


# --------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------


def quantize(attenuation: np.ndarray, bits_stored: int = 12) -> np.ndarray:
    """Attenuation in [0, 1] -> MONOCHROME2 stored values (uint16, 0 .. 2**bits_stored - 1)."""
    maxval = (1 << int(bits_stored)) - 1
    a = np.clip(np.asarray(attenuation, dtype=np.float64), 0.0, 1.0)
    return np.rint(a * maxval).astype(np.uint16)


def write_dicom(path: str | Path, attenuation: np.ndarray, meta: StudyMeta | Mapping[str, Any],
                monochrome1: bool = False) -> Path:
    """Write a DX 'for presentation' file; MONOCHROME1 files store inverted values.

    Identifiers come from meta and are fake by construction; pydicom is imported here so that
    rendering alone does not pay for it.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        PYDICOM_IMPLEMENTATION_UID,
        DigitalXRayImageStorageForPresentation,
        ExplicitVRLittleEndian,
    )

    m = StudyMeta.from_value(meta)
    if m.bits_stored not in (12, 16):
        raise ValueError(f"bits_stored must be 12 or 16, got {m.bits_stored}")
    att = np.asarray(attenuation)
    if att.ndim != 2:
        raise ValueError(f"attenuation must be a 2-D array, got shape {att.shape}")
    maxval = (1 << m.bits_stored) - 1
    stored = quantize(att, m.bits_stored)
    if monochrome1:
        stored = (maxval - stored).astype(np.uint16)

    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    fm.MediaStorageSOPInstanceUID = m.sop_uid
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    fm.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    fm.ImplementationVersionName = "MNEMO_PHANTOM"

    ds = Dataset()
    ds.file_meta = fm
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = m.sop_uid
    ds.StudyDate = m.study_date
    ds.SeriesDate = m.study_date
    ds.ContentDate = m.study_date
    ds.StudyTime = m.study_time
    ds.SeriesTime = m.study_time
    ds.ContentTime = m.study_time
    ds.AccessionNumber = m.accession_number
    ds.Modality = "DX"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = "mnemo phantom"
    ds.InstitutionName = m.institution_name
    ds.ReferringPhysicianName = m.referring_physician
    ds.StudyDescription = "CHEST"
    ds.SeriesDescription = f"CHEST {m.view_position}"
    ds.PatientName = m.patient_name
    ds.PatientID = m.patient_id
    ds.PatientBirthDate = m.birth_date
    ds.PatientSex = {"male": "M", "female": "F", "m": "M", "f": "F"}.get(
        str(m.patient_sex).strip().lower(), "O")
    ds.PatientAge = f"{int(m.age):03d}Y"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = m.view_position
    ds.StudyInstanceUID = m.study_uid
    ds.SeriesInstanceUID = m.series_uid
    ds.StudyID = m.study_id
    ds.SeriesNumber = m.series_number
    ds.InstanceNumber = m.instance_number
    ds.PatientOrientation = ["P", "F"] if m.view_position == "LL" else ["L", "F"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.Rows, ds.Columns = int(att.shape[0]), int(att.shape[1])
    spacing = f"{430.0 / att.shape[1]:.4f}"
    ds.ImagerPixelSpacing = [spacing, spacing]
    ds.PixelSpacing = [spacing, spacing]
    ds.BitsAllocated = 16
    ds.BitsStored = m.bits_stored
    ds.HighBit = m.bits_stored - 1
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    lo, hi = np.percentile(stored[::4, ::4], [1.0, 99.0])  # a subsample is plenty
    ds.WindowCenter = f"{(lo + hi) / 2.0:.1f}"
    ds.WindowWidth = f"{max(hi - lo, 1.0) + 1.0:.1f}"
    ds.PixelData = stored.astype("<u2").tobytes()
    ds["PixelData"].VR = "OW"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def read_attenuation(path: str | Path) -> np.ndarray:
    """Inverse of write_dicom: float32 in [0, 1], bright = dense whatever the photometry."""
    import pydicom

    ds = pydicom.dcmread(path)
    arr = ds.pixel_array.astype(np.float64)
    arr = arr * float(getattr(ds, "RescaleSlope", 1)) + float(getattr(ds, "RescaleIntercept", 0))
    maxval = float((1 << int(ds.BitsStored)) - 1)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        arr = maxval - arr
    return (arr / maxval).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Data-set plan (made in the parent; cheap) and rendering jobs (run in workers)
# --------------------------------------------------------------------------------------------

_FIRST_NAMES = {
    "Female": ("Alice", "Beth", "Clara", "Dora", "Edith", "Fay", "Greta", "Hilda", "Iris",
               "June", "Kate", "Lena", "Mira", "Nora", "Olga", "Pia", "Rosa", "Sara", "Tess",
               "Vera"),
    "Male": ("Adam", "Boris", "Carl", "Dan", "Emil", "Felix", "Gus", "Hugo", "Ivan", "Jack",
             "Karl", "Leo", "Max", "Nils", "Otto", "Paul", "Rolf", "Sam", "Tom", "Walt"),
}


@dataclass
class _Image:
    view: str  # "Frontal" | "Lateral"
    file: str  # "view1_frontal.dcm"
    monochrome1: bool
    series_uid: str
    sop_uid: str


@dataclass
class _Study:
    number: int
    date: _dt.date
    time: str
    age: int
    ap_pa: str
    labels: dict[str, float]
    images: list[_Image]
    study_uid: str
    accession: str
    planted_id: int | None = None
    copy_of: int | None = None  # study number of the original for planted copies
    copy_index: int = 0


@dataclass
class _Patient:
    split: str
    index: int  # 0-based within the split (drives the RNG)
    number: int  # folder number: patient00001 ...
    sex: str
    birth: _dt.date
    name: str
    pid: str
    studies: list[_Study] = field(default_factory=list)


def _uid(seed: int, *parts: object) -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=["mnemo-phantom", str(seed), *map(str, parts)]))


def _make_study(cfg: PhantomConfig, p: _Patient, number: int, date: _dt.date,
                rng: np.random.Generator, with_lateral: bool) -> _Study:
    age = _age_at(p.birth, date)
    ap_pa = "AP" if rng.random() < 0.58 else "PA"
    labels = sample_labels(rng, ap_pa, age)
    views = ["Frontal", "Lateral"] if with_lateral else ["Frontal"]
    images = []
    for k, v in enumerate(views, start=1):
        images.append(_Image(
            view=v, file=f"view{k}_{v.lower()}.dcm",
            monochrome1=bool(rng.random() < cfg.monochrome1_fraction),
            series_uid=_uid(cfg.seed, p.split, p.index, number, k, "series"),
            sop_uid=_uid(cfg.seed, p.split, p.index, number, k, "sop")))
    return _Study(number=number, date=date, time=f"{int(rng.integers(7, 20)):02d}"
                  f"{int(rng.integers(0, 60)):02d}{int(rng.integers(0, 60)):02d}", age=age,
                  ap_pa=ap_pa, labels=labels, images=images,
                  study_uid=_uid(cfg.seed, p.split, p.index, number, "study"),
                  accession=f"ACC{int(rng.integers(10**7, 10**8))}")


def _age_at(birth: _dt.date, when: _dt.date) -> int:
    return when.year - birth.year - ((when.month, when.day) < (birth.month, birth.day))


def _plan(cfg: PhantomConfig) -> dict[str, list[_Patient]]:
    """Decide every patient, study, label and UID up front (so workers only render)."""
    total = cfg.patients + cfg.valid_patients
    ids = _rng(cfg.seed, 99).choice(900_000, size=total, replace=False) + 100_000
    splits: dict[str, list[_Patient]] = {"train": [], "valid": []}
    for split, count, offset in (("train", cfg.patients, 0),
                                 ("valid", cfg.valid_patients, cfg.patients)):
        for i in range(count):
            r = _rng(cfg.seed, _SPLIT_CODE[split], i, _S_META)
            sex = "Male" if r.random() < 0.58 else "Female"
            age0 = int(np.clip(round(r.normal(60, 17)), 18, 87))
            first = _dt.date(2002, 1, 1) + _dt.timedelta(days=int(r.integers(0, 15 * 365)))
            birth = first - _dt.timedelta(days=int(age0 * 365.25 + r.integers(1, 364)))
            name = f"Phantom^{_FIRST_NAMES[sex][int(r.integers(20))]}{int(r.integers(1, 100))}"
            p = _Patient(split=split, index=i, number=offset + i + 1, sex=sex, birth=birth,
                         name=name, pid=f"PH-{int(ids[offset + i]):06d}")
            n = int(r.integers(cfg.studies_per_patient[0], cfg.studies_per_patient[1] + 1))
            date = first
            for k in range(1, n + 1):
                if _age_at(birth, date) > 90:
                    break
                p.studies.append(_make_study(cfg, p, k, date, r,
                                             bool(r.random() < cfg.lateral_fraction)))
                date = date + _dt.timedelta(days=int(r.integers(1, 300)))
            splits[split].append(p)
    _plant(cfg, splits["train"])
    return splits


def _plant(cfg: PhantomConfig, train: list[_Patient]) -> None:
    """Turn K studies into planted ones with unique rare prompts, add their copies, and
    relabel any other train study whose prompt (under any policy) would collide."""
    if cfg.planted_studies == 0:
        return
    r = _rng(cfg.seed, _S_PLANT)
    chosen = sorted(int(i) for i in r.choice(len(train), size=cfg.planted_studies, replace=False))
    planted_prompts: set[str] = set()
    for k, pi in enumerate(chosen):
        p = train[pi]
        st = p.studies[int(r.integers(len(p.studies)))]
        st.ap_pa = "AP" if r.random() < 0.5 else "PA"
        st.images = st.images[:1]  # frontal only
        for _ in range(1000):
            labels = _planted_labels(r)
            prompt = prompt_text("Frontal", st.ap_pa, p.sex, st.age, labels, "ones")
            if prompt not in planted_prompts:
                break
        else:  # pragma: no cover - 1000 misses would need an absurdly small label space
            raise RuntimeError("could not find distinct planted prompts")
        planted_prompts.add(prompt)
        st.labels, st.planted_id = labels, k
        base_n = len(p.studies)
        for c in range(1, cfg.planted_copies + 1):
            number = base_n + c
            img = st.images[0]
            p.studies.append(_Study(
                number=number, date=st.date,
                time=f"{(int(st.time[:2]) + c // 60) % 24:02d}{c % 60:02d}00", age=st.age,
                ap_pa=st.ap_pa, labels=dict(labels),
                images=[_Image(view="Frontal", file="view1_frontal.dcm",
                               monochrome1=img.monochrome1,
                               series_uid=_uid(cfg.seed, p.split, p.index, number, 1, "series"),
                               sop_uid=_uid(cfg.seed, p.split, p.index, number, 1, "sop"))],
                study_uid=_uid(cfg.seed, p.split, p.index, number, "study"),
                accession=f"ACC{int(r.integers(10**7, 10**8))}", planted_id=k,
                copy_of=st.number, copy_index=c))
    for p in train:
        for st in p.studies:
            if st.planted_id is not None:
                continue
            attempt = 0
            while any(_prompts(im.view, st.ap_pa if im.view == "Frontal" else None, p.sex,
                               st.age, st.labels) & planted_prompts for im in st.images):
                rr = _rng(cfg.seed, _SPLIT_CODE[p.split], p.index, _S_RELABEL, st.number, attempt)
                attempt += 1
                if attempt > 50:  # "no finding" can never equal a planted prompt
                    st.labels = {o: math.nan for o in OBSERVATIONS}
                    st.labels["No Finding"] = 1.0
                else:
                    st.labels = sample_labels(rr, st.ap_pa, st.age)


@dataclass(frozen=True)
class _Job:
    out_dir: str
    seed: int
    size: int
    bits_stored: int
    near_noise: float
    near_shift: int
    patient: _Patient


def _render_patient(job: _Job) -> int:
    """Render and write every image of one patient (the unit of parallel work)."""
    p = job.patient
    code = _SPLIT_CODE[p.split]
    anatomy = sample_anatomy(_rng(job.seed, code, p.index, _S_ANATOMY), p.sex,
                             p.studies[0].age if p.studies else 60)
    originals: dict[int, np.ndarray] = {}
    written = 0
    for st in p.studies:
        folder = Path(job.out_dir) / p.split / f"patient{p.number:05d}" / f"study{st.number}"
        for k, im in enumerate(st.images, start=1):
            if st.copy_of is not None:
                img = originals[st.copy_of]
                img = _near_duplicate(img, job, _rng(job.seed, code, p.index, _S_COPY,
                                                     st.number))
            else:
                rng = _rng(job.seed, code, p.index, _S_STUDY, st.number, k)
                ap_pa = st.ap_pa if im.view == "Frontal" else None
                img = render_study(anatomy, im.view, ap_pa, st.labels, rng, job.size)
                if st.planted_id is not None:
                    originals[st.number] = img
            meta = StudyMeta(
                patient_name=p.name, patient_id=p.pid, patient_sex=p.sex,
                birth_date=p.birth.strftime("%Y%m%d"), age=st.age,
                study_date=st.date.strftime("%Y%m%d"), study_time=st.time,
                study_uid=st.study_uid, series_uid=im.series_uid, sop_uid=im.sop_uid,
                view_position=(st.ap_pa if im.view == "Frontal" else "LL"),
                accession_number=st.accession, study_id=str(st.number), series_number=k,
                instance_number=1, bits_stored=job.bits_stored)
            write_dicom(folder / im.file, img, meta, im.monochrome1)
            written += 1
    return written


def _near_duplicate(img: np.ndarray, job: _Job, rng: np.random.Generator) -> np.ndarray:
    if job.near_noise <= 0 and job.near_shift <= 0:
        return img
    out = img
    if job.near_shift > 0:
        dy, dx = (int(v) for v in rng.integers(-job.near_shift, job.near_shift + 1, size=2))
        pad = job.near_shift
        padded = np.pad(out, pad, mode="edge")
        out = padded[pad - dy : pad - dy + img.shape[0], pad - dx : pad - dx + img.shape[1]]
    if job.near_noise > 0:
        out = out + rng.normal(0.0, job.near_noise, size=out.shape).astype(np.float32)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _fmt_label(v: float) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{float(v):.1f}"


def _csv_rows(root_name: str, patients: list[_Patient]) -> list[list[str]]:
    rows = []
    for p in patients:
        for st in p.studies:
            for im in st.images:
                rel = f"{root_name}/{p.split}/patient{p.number:05d}/study{st.number}/{im.file}"
                rows.append([rel, p.sex, str(st.age), im.view,
                             st.ap_pa if im.view == "Frontal" else ""]
                            + [_fmt_label(st.labels.get(o, math.nan)) for o in OBSERVATIONS])
    return rows


def _write_csv(path: Path, header: Sequence[str], rows: list[list[str]]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
    os.replace(tmp, path)


def generate_phantom_dataset(out_dir: str | Path,
                             config: PhantomConfig | Mapping[str, Any] | None = None,
                             workers: int | None = 1, overwrite: bool = False) -> PhantomSummary:
    """Write a CheXpert-shaped phantom data set; same config -> byte-identical files.

    The CSVs are written last, so their presence means the DICOM tree is complete. An existing
    data set in out_dir is only replaced when overwrite=True.
    """
    cfg = PhantomConfig.from_value(config)
    out = Path(out_dir)
    names = ("train", "valid", "train.csv", "valid.csv", "planted.csv")
    existing = [n for n in names if (out / n).exists()]
    if existing:
        if not overwrite:
            raise FileExistsError(f"{out} already holds a phantom data set ({existing[0]}); "
                                  "pass overwrite=True to replace it")
        for n in existing:
            target = out / n
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink()
    out.mkdir(parents=True, exist_ok=True)
    plan = _plan(cfg)
    jobs = [_Job(str(out), cfg.seed, cfg.size, cfg.bits_stored, cfg.near_duplicate_noise,
                 cfg.near_duplicate_shift, p) for split in ("train", "valid") for p in plan[split]]
    n_workers = (os.cpu_count() or 1) if workers is None else max(1, int(workers))
    if n_workers == 1 or len(jobs) <= 1:
        for j in jobs:
            _render_patient(j)
    else:
        with ProcessPoolExecutor(max_workers=n_workers) as ex:
            chunk = max(1, len(jobs) // (n_workers * 8))
            for _ in ex.map(_render_patient, jobs, chunksize=chunk):
                pass

    root_name = out.resolve().name
    header = list(CSV_COLUMNS)
    train_rows = _csv_rows(root_name, plan["train"])
    valid_rows = _csv_rows(root_name, plan["valid"])
    planted_rows = []
    for p in plan["train"]:
        for st in p.studies:
            if st.planted_id is None:
                continue
            rel = f"{root_name}/train/patient{p.number:05d}/study{st.number}/{st.images[0].file}"
            prompt = prompt_text("Frontal", st.ap_pa, p.sex, st.age, st.labels, "ones")
            planted_rows.append((st.planted_id, 0 if st.copy_of is not None else 1, rel, prompt))
    planted_rows.sort(key=lambda r: (r[0], -r[1], r[2]))
    planted_csv = out / "planted.csv"
    _write_csv(planted_csv, ["planted_id", "Path", "is_original", "prompt"],
               [[str(k), rel, str(orig), prompt] for k, orig, rel, prompt in planted_rows])
    _write_csv(out / "valid.csv", header, valid_rows)
    _write_csv(out / "train.csv", header, train_rows)
    return PhantomSummary(
        out_dir=out,
        train_patients=len(plan["train"]),
        valid_patients=len(plan["valid"]),
        train_studies=sum(len(p.studies) for p in plan["train"]),
        valid_studies=sum(len(p.studies) for p in plan["valid"]),
        train_images=len(train_rows),
        valid_images=len(valid_rows),
        planted_images=len(planted_rows),
        train_csv=out / "train.csv",
        valid_csv=out / "valid.csv",
        planted_csv=planted_csv,
    )


# --------------------------------------------------------------------------------------------
# Previews for eyeballing
# --------------------------------------------------------------------------------------------


def _to_png(tiles: list[np.ndarray], cols: int, out_png: str | Path) -> Path:
    from PIL import Image

    size = tiles[0].shape[0]
    rows = (len(tiles) + cols - 1) // cols
    pad = max(2, size // 64)
    grid = np.zeros((rows * (size + pad) + pad, cols * (size + pad) + pad), np.uint8)
    for k, t in enumerate(tiles):
        i, j = divmod(k, cols)
        y0, x0 = pad + i * (size + pad), pad + j * (size + pad)
        grid[y0 : y0 + size, x0 : x0 + size] = np.clip(t * 255.0 + 0.5, 0, 255).astype(np.uint8)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid, mode="L").save(out_png)
    return out_png


def preview_grid(out_png: str | Path, n: int = 16, seed: int = 0, size: int = 256) -> Path:
    """Grid of random studies (frontal and lateral, varied findings) for a quick visual check."""
    tiles = []
    for i in range(n):
        r = _rng(seed, 7, i)
        sex = "Male" if r.random() < 0.55 else "Female"
        age = int(r.integers(20, 90))
        anatomy = sample_anatomy(r, sex, age)
        ap_pa = "AP" if r.random() < 0.5 else "PA"
        labels = sample_labels(r, ap_pa, age)
        view = "Lateral" if i % 4 == 3 else "Frontal"
        tiles.append(render_study(anatomy, view, ap_pa if view == "Frontal" else None, labels,
                                  r, size))
    return _to_png(tiles, math.ceil(math.sqrt(n)), out_png)


def findings_grid(out_png: str | Path, seed: int = 0, size: int = 256,
                  view: str = "Frontal", ap_pa: str | None = "PA") -> Path:
    """One tile per observation for the same patient and study seed (label set to 1)."""
    r = _rng(seed, 8)
    anatomy = sample_anatomy(r, "Female" if seed % 2 else "Male", 55)
    tiles = []
    for o in OBSERVATIONS:
        labels = {k: math.nan for k in OBSERVATIONS}
        labels[o] = 1.0
        tiles.append(render_study(anatomy, view, ap_pa if view.lower() == "frontal" else None,
                                  labels, _rng(seed, 9), size))
    return _to_png(tiles, 7, out_png)
