"""Drawing primitives on a square pixel grid, vectorised so that Python only loops over shapes.

Geometry is written in normalised image coordinates: x and y run from -1 to 1, y points down.
Frontal views use the radiological display convention (patient left = image right, so the heart
bulges to the image right); lateral views put the patient's front on the image left.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

_FILM_BLUR = 0.6  # final blur in pixels at 256 px (scaled with the image size)

# A region of the canvas (row and column slices) and the values to add there: what a shape
# draws, so that callers choose the target and the order of the additions.
Patch = tuple[tuple[slice, slice], np.ndarray]


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


def _blob_patch(cv: _Canvas, cx: float, cy: float, rx: float, ry: float, amp: float,
                angle: float = 0.0, edge: float = 0.02, profile: float = 0.0) -> Patch | None:
    """An (optionally rotated) ellipse; profile > 0 makes it dome-shaped instead of flat."""
    r = max(rx, ry) + edge
    b = cv.box(cx - r, cx + r, cy - r, cy + r)
    if b is None:
        return None
    sl, xs, ys = b
    ca, sa = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    u = ((xs - cx) * ca + (ys - cy) * sa) / rx
    v = (-(xs - cx) * sa + (ys - cy) * ca) / ry
    rr = np.sqrt(u * u + v * v)
    m = _ramp(1.0 - rr, cv.edge(edge) / min(rx, ry))
    if profile > 0:
        m = m * ((1.0 - profile) + profile * np.sqrt(_clip01(1.0 - rr * rr)))
    return sl, np.float32(amp) * m


def _blob(cv: _Canvas, target: np.ndarray, cx: float, cy: float, rx: float, ry: float,
          amp: float, angle: float = 0.0, edge: float = 0.02, profile: float = 0.0) -> None:
    """_blob_patch, added straight into target."""
    _add(target, _blob_patch(cv, cx, cy, rx, ry, amp, angle, edge, profile))


def _ring_patch(cv: _Canvas, cx: float, cy: float, r: float, width: float,
                amp: float) -> Patch | None:
    b = cv.box(cx - r - width, cx + r + width, cy - r - width, cy + r + width)
    if b is None:
        return None
    sl, xs, ys = b
    d = np.abs(np.sqrt((xs - cx) ** 2 + (ys - cy) ** 2) - r)
    return sl, np.float32(amp) * _ramp(width / 2.0 - d, cv.edge(0.0))


def _ring(cv: _Canvas, target: np.ndarray, cx: float, cy: float, r: float, width: float,
          amp: float) -> None:
    _add(target, _ring_patch(cv, cx, cy, r, width, amp))


def _add(target: np.ndarray, patch: Patch | None) -> None:
    if patch is not None:
        target[patch[0]] += patch[1]


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

