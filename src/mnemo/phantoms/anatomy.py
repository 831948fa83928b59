"""One patient's chest and how it lies on the film: body outline, lungs, heart, mediastinum,
ribs, spine, clavicles, scapulae, diaphragm and vessels, for the frontal and the lateral view.

Anatomy is sampled once per patient (several studies of one person look alike, as in real data).
A few findings change the anatomy rather than draw over it (a bigger heart, a raised
hemidiaphragm, a collapsed lung, broken ribs, congested vessels); those effects are drawn here,
inside the pass, because they alter shapes that the rest of the chest is built from.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from mnemo.phantoms.raster import (
    _Bands,
    _bezier,
    _blob,
    _Canvas,
    _clip01,
    _ellipse,
    _Lines,
    _patient_texture,
    _ramp,
    _ring,
)

# The random stream of one finding (the same stream the finding's renderer gets).
FindingRng = Callable[[str], np.random.Generator]


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
# Pulmonary vessels (both views)
# --------------------------------------------------------------------------------------------


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
                      finding_rng: FindingRng) -> tuple[_FrontalGeom, int]:
    """The study's frontal geometry, and the side of any atelectatic volume loss."""
    collapsed = 1
    base = a.diaphragm_y - (0.05 if ap else 0.0)  # AP films: semi-erect, lower lung volumes
    base_y = {-1: base - a.right_dome_offset, 1: base}
    med_shift = 0.0
    if sev["Atelectasis"] > 0:  # volume loss: raised hemidiaphragm, mediastinum pulled over
        r = finding_rng("Atelectasis")
        collapsed = -1 if r.random() < 0.5 else 1
        base_y[collapsed] -= 0.08 * sev["Atelectasis"]
        med_shift = 0.035 * collapsed * sev["Atelectasis"]
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
    return g, collapsed


def _heart_frontal(cv: _Canvas, g: _FrontalGeom, tilt: float) -> np.ndarray:
    """Cardiac silhouette: left ventricle (image right, down to the apex) + right atrium."""
    hx, hy, hs = g.heart
    lv = _ellipse(cv, hx + 0.1 * hs, hy + 0.02, 0.33 * hs, 0.22 * hs, tilt, 0.012)
    ra = _ellipse(cv, hx - 0.1 * hs, hy - 0.02, 0.17 * hs, 0.2 * hs, -8.0, 0.012)
    return np.maximum(lv, ra)


@dataclass(frozen=True)
class FrontalScene:
    """A drawn frontal study as the findings see it: where the lungs are and how thick."""

    cv: _Canvas
    anatomy: PatientAnatomy
    geom: _FrontalGeom
    ap: bool
    lungs: dict[int, np.ndarray]  # soft mask per side (-1 right, 1 left), heart cut out
    lung_thick: dict[int, np.ndarray]  # relative lung thickness along the beam
    dl: np.float32  # how much darker fully aerated lung is than soft tissue
    collapsed: int  # side of atelectatic volume loss (1 when there is none)


def _frontal_anatomy(a: PatientAnatomy, ap: bool, sev: Mapping[str, float],
                     finding_rng: FindingRng,
                     size: int) -> tuple[np.ndarray, _Lines, FrontalScene]:
    """Attenuation of the frontal anatomy, the (empty) lines layer that devices draw into, and
    the scene the findings are drawn over."""
    cv = _Canvas(size)
    g, collapsed = _frontal_geometry(a, ap, sev, finding_rng)
    x, y = cv.x, cv.y
    ax = np.abs(x)
    st = np.float32(0.46 * a.soft_tissue)
    bone = float(a.bone_density)
    lines = _Lines(cv)  # support devices draw their tubes and wires into this
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
        r = finding_rng("Pneumothorax")
        s = -1 if r.random() < 0.5 else 1
        gap = (0.06 + 0.1 * r.random()) * (0.55 + 0.45 * sev["Pneumothorax"])
        col, _ = _lung_shape(cv, g, s, lat_shrink=gap, apex_drop=gap * 1.4)
        col2, _ = _lung_shape(cv, g, s, lat_shrink=gap + 0.012, apex_drop=gap * 1.4 + 0.012)
        ptx_region = lungs[s] * (1.0 - col)
        att += np.float32(0.1) * lungs[s] * _clip01(col - col2)
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
        r = finding_rng("Fracture")
        frac = (int(r.integers(3, max(4, min(a.rib_count - 3, 7)))), -1 if r.random() < 0.5
                else 1, float(r.uniform(0.42, 0.6)), float(r.uniform(0.8, 1.0)
                                                          * sev["Fracture"]))
    ribs = _ribs_frontal(a, size, g.base_y[-1], g.base_y[1], frac)
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

    scene = FrontalScene(cv=cv, anatomy=a, geom=g, ap=ap, lungs=lungs, lung_thick=lung_thick,
                         dl=dl, collapsed=collapsed)
    return att, lines, scene


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


@lru_cache(maxsize=16)
def _ribs_frontal(a: PatientAnatomy, size: int, base_r: float, base_l: float,
                  frac: tuple | None) -> np.ndarray:
    """The rib cage of one patient (cached: studies of a patient share it; read-only)."""
    cv = _Canvas(size)
    out = cv.zeros()
    g = _FrontalGeom(bw=a.body_width, shoulder_y=a.shoulder_y, nw=a.neck_width,
                     apex_y=a.apex_y, base_y={-1: base_r, 1: base_l}, lung_h=a.lung_width,
                     lung_c=a.lung_center, dome_h=a.dome_height, heart=(0.0, 0.0, 1.0),
                     med_x=0.0, med_w=0.0, knob=(0.0, 0.0, 0.0), carina_y=0.0, hilum={})
    n_broken = 0 if frac is None else (2 if frac[3] > 0.7 else 1)  # positive: two ribs
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
            else:
                _rib(cv, out, s, y0, a1, a2, reach, th, amp, ant)
    out.flags.writeable = False
    return out


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


@dataclass(frozen=True)
class LateralScene:
    """A drawn lateral study as the findings see it."""

    cv: _Canvas
    anatomy: PatientAnatomy
    geom: _LateralGeom
    lung: np.ndarray  # aerated lung field (both lungs superimposed, less where the heart is)
    thick: np.ndarray  # relative lung thickness along the beam
    dl: np.float32  # how much darker fully aerated lung is than soft tissue
    trachea: np.ndarray  # the tracheal air column's polyline (endotracheal tubes follow it)


def _lateral_anatomy(a: PatientAnatomy, sev: Mapping[str, float], finding_rng: FindingRng,
                     size: int) -> tuple[np.ndarray, _Lines, LateralScene]:
    """Attenuation of the lateral anatomy, its lines layer (the trachea so far) and the scene
    the findings are drawn over."""
    cv = _Canvas(size)
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
        r = finding_rng("Pneumothorax")
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
        r = finding_rng("Fracture")
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

    scene = LateralScene(cv=cv, anatomy=a, geom=g, lung=lung_eff, thick=thick, dl=dl,
                         trachea=tpts)
    return att, lines, scene


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
