"""The CheXpert findings as drawn on a phantom: one renderer per finding and view, in a registry.

Each renderer gets the drawn anatomy (a scene), the finding's severity and its own random stream,
and returns what it draws; `draw_findings` adds the drawings onto the film. A finding without a
renderer in a view acts through the anatomy instead (see `mnemo.phantoms.anatomy`): Cardiomegaly
and Enlarged Cardiomediastinum change the heart and mediastinum, Pneumothorax collapses a lung,
and a frontal Fracture breaks ribs; Atelectasis (volume loss), Edema (congested vessels) and
a lateral Fracture (sternal step-off) act there as well as here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from mnemo.data.chexpert import OBSERVATIONS
from mnemo.phantoms.anatomy import (
    FindingRng,
    FrontalScene,
    LateralScene,
    _lateral_lung,
    _lung_shape,
)
from mnemo.phantoms.raster import (
    Patch,
    _bezier,
    _blob_patch,
    _clip01,
    _crisp,
    _Lines,
    _ramp,
    _ring_patch,
    _smooth_noise,
)

FINDINGS: tuple[str, ...] = OBSERVATIONS[1:]  # every observation except "No Finding"
UNCERTAIN_SEVERITY = 0.55  # an uncertain (-1) finding is drawn this much milder than a positive
VIEWS = ("frontal", "lateral")
# Drawn onto the film after the other findings' layer (metal lies on top of everything).
ON_TOP = frozenset({"Support Devices"})


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


class Drawing:
    """What one finding draws, in drawing order: attenuation to add and lines to rasterise.

    Renderers return this instead of adding into a shared buffer; `draw_into` adds the strokes
    in the order they were drawn, because float sums depend on their order and a data set's
    bytes should change only when what is drawn changes.
    """

    def __init__(self) -> None:
        self.strokes: list[tuple[tuple[slice, slice] | None, np.ndarray]] = []
        self.lines: list[tuple[Any, float, float]] = []

    def add(self, values: np.ndarray, region: tuple[slice, slice] | None = None) -> None:
        """Values over the whole frame, or over region (a pair of slices) when given."""
        self.strokes.append((region, values))

    def patch(self, patch: Patch | None) -> None:
        if patch is not None:
            self.add(patch[1], patch[0])

    def line(self, pts: Any, width: float, amp: float) -> None:
        self.lines.append((pts, width, amp))

    def draw_into(self, target: np.ndarray) -> None:
        for region, values in self.strokes:
            if region is None:
                target += values
            else:
                target[region] += values


Renderer = Callable[[Any, float, np.random.Generator], Drawing]
RENDERERS: dict[str, dict[str, Renderer]] = {v: {} for v in VIEWS}


def renders(finding: str, view: str) -> Callable[[Renderer], Renderer]:
    """Register the decorated function as `finding`'s renderer in `view`; a view's findings are
    drawn in registration order."""
    if finding not in FINDINGS or view not in RENDERERS:
        raise ValueError(f"unknown finding or view: {finding!r}, {view!r}")

    def register(fn: Renderer) -> Renderer:
        if finding in RENDERERS[view]:
            raise ValueError(f"{finding!r} already has a {view} renderer")
        RENDERERS[view][finding] = fn
        return fn

    return register


def draw_findings(view: str, scene: FrontalScene | LateralScene, sev: Mapping[str, float],
                  finding_rng: FindingRng, att: np.ndarray, lines: _Lines) -> None:
    """Add every present finding of `view` onto the film att (and the view's lines layer)."""
    layer = scene.cv.zeros()
    drawings = []
    for name, render in RENDERERS[view].items():
        if sev[name] > 0:
            drawing = render(scene, sev[name], finding_rng(name))
            drawings.append((name, drawing))
            if name not in ON_TOP:
                drawing.draw_into(layer)
    att += layer
    for name, drawing in drawings:
        if name in ON_TOP:
            drawing.draw_into(att)
        for pts, width, amp in drawing.lines:
            lines.add(pts, width, amp)


# --------------------------------------------------------------------------------------------
# Renderers (sev: 1 for a positive label, UNCERTAIN_SEVERITY for an uncertain one)
# --------------------------------------------------------------------------------------------


@renders("Lung Opacity", "frontal")
def _lung_opacity_frontal(sc: FrontalScene, sev: float, r: np.random.Generator) -> Drawing:
    """Hazy, ill-defined patch in one (sometimes both) mid zones."""
    out, g, x, y = Drawing(), sc.geom, sc.cv.x, sc.cv.y
    sides = [-1 if r.random() < 0.5 else 1]
    if r.random() < 0.35:
        sides.append(-sides[0])
    field_ = _smooth_noise(r, sc.cv.size, 9)
    for s in sides:
        px, py = g.lung_point(s, r.uniform(0.35, 0.7), r.uniform(-0.1, 0.5))
        gss = np.exp(-(((x - px) / 0.28) ** 2 + ((y - py) / 0.24) ** 2))
        patch = gss * np.clip(0.65 + 0.45 * field_, 0.0, 1.3)
        out.add(np.float32(0.19 * sev) * patch * sc.lungs[s] * sc.lung_thick[s])
    return out


@renders("Lung Opacity", "lateral")
def _lung_opacity_lateral(sc: LateralScene, sev: float, r: np.random.Generator) -> Drawing:
    out, g, x, y = Drawing(), sc.geom, sc.cv.x, sc.cv.y
    px, py = g.point(r.uniform(0.3, 0.55), r.choice([-1, 1]) * r.uniform(0.35, 0.6))
    f = _smooth_noise(r, sc.cv.size, 9)
    gss = np.exp(-(((x - px) / 0.3) ** 2 + ((y - py) / 0.24) ** 2))
    out.add(np.float32(0.2 * sev) * gss * np.clip(0.65 + 0.45 * f, 0, 1.3) * sc.lung * sc.thick)
    return out


@renders("Lung Lesion", "frontal")
def _lung_lesion_frontal(sc: FrontalScene, sev: float, r: np.random.Generator) -> Drawing:
    """Solitary round nodule / mass with a lobulated edge."""
    out, g, cv = Drawing(), sc.geom, sc.cv
    s = -1 if r.random() < 0.5 else 1
    px, py = g.lung_point(s, r.uniform(0.2, 0.5), r.uniform(-0.1, 0.5))
    rad = r.uniform(0.045, 0.075) * (0.7 + 0.3 * sev)
    b = cv.box(px - 2 * rad, px + 2 * rad, py - 2 * rad, py + 2 * rad)
    if b is not None:
        sl, xs, ys = b
        ang = np.arctan2(ys - py, xs - px)
        ph = r.uniform(0, 6.28, size=2)
        rr = rad * (1 + 0.08 * np.sin(3 * ang + ph[0]) + 0.05 * np.sin(5 * ang + ph[1]))
        d = np.sqrt((xs - px) ** 2 + (ys - py) ** 2)
        m = _ramp(rr - d, cv.edge(0.008)) * (0.7 + 0.3 * np.sqrt(_clip01(1 - (d / rr) ** 2)))
        out.add(np.float32(0.22 * (0.6 + 0.4 * sev)) * m, sl)
    return out


@renders("Lung Lesion", "lateral")
def _lung_lesion_lateral(sc: LateralScene, sev: float, r: np.random.Generator) -> Drawing:
    out = Drawing()
    px, py = sc.geom.point(r.uniform(0.2, 0.5), r.uniform(-0.3, 0.6))
    rad = r.uniform(0.045, 0.075) * (0.7 + 0.3 * sev)
    out.patch(_blob_patch(sc.cv, px, py, rad, rad * r.uniform(0.85, 1.0), 0.2, edge=0.008,
                          profile=0.3))
    return out


@renders("Edema", "frontal")
def _edema_frontal(sc: FrontalScene, sev: float, r: np.random.Generator) -> Drawing:
    """Bat-wing perihilar haze + Kerley B lines at the bases (vessel widening: anatomy)."""
    out, g, cv, x, y = Drawing(), sc.geom, sc.cv, sc.cv.x, sc.cv.y
    lungs = sc.lungs
    tex = _smooth_noise(r, cv.size, 14)
    kerley = _Lines(cv)
    for s in (-1, 1):
        hx, hy = g.hilum[s]
        haze = np.exp(-(((x - hx - s * 0.07) / 0.26) ** 2 + ((y - hy - 0.03) / 0.3) ** 2))
        out.add(np.float32(0.15 * sev) * haze * (0.85 + 0.25 * tex) * lungs[s])
        for k in range(int(5 + 4 * sev)):
            yk = g.base_y[s] - 0.05 - k * r.uniform(0.025, 0.04)
            tk = float(np.clip((yk - g.apex_y) / (g.base_y[s] - g.apex_y), 0, 1))
            xe, _ = g.lung_point(s, tk, 0.97)
            kerley.add([(xe, yk), (xe - s * r.uniform(0.04, 0.07), yk + r.normal(0, 0.004))],
                       0.008, 1.0)
    out.add(np.float32(0.09 * sev) * kerley.render() * (lungs[-1] + lungs[1]))
    return out


@renders("Edema", "lateral")
def _edema_lateral(sc: LateralScene, sev: float, r: np.random.Generator) -> Drawing:
    """Perihilar haze and fluid in the major fissure."""
    out, g, cv, x, y = Drawing(), sc.geom, sc.cv, sc.cv.x, sc.cv.y
    tex = _smooth_noise(r, cv.size, 14)
    hx, hy = g.hilum
    haze = np.exp(-(((x - hx) / 0.35) ** 2 + ((y - hy) / 0.3) ** 2))
    out.add(np.float32(0.15 * sev) * haze * (0.85 + 0.25 * tex) * sc.lung)
    fiss = _Lines(cv)
    fiss.add(_bezier((g.post - 0.2, g.apex_y + 0.35), (hx, hy + 0.1),
                     (g.ant + 0.15, g.base_ant - 0.03), 16), 0.012, 1.0)
    out.add(np.float32(0.09 * sev) * fiss.render() * sc.lung)
    return out


@renders("Consolidation", "frontal")
def _consolidation_frontal(sc: FrontalScene, sev: float, r: np.random.Generator) -> Drawing:
    """Dense lobar opacity with air bronchograms."""
    out, g, cv, x, y = Drawing(), sc.geom, sc.cv, sc.cv.x, sc.cv.y
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
    tex = _smooth_noise(r, cv.size, 18)
    dens = region * sc.lungs[s] * sc.lung_thick[s] * np.clip(0.92 + 0.12 * tex, 0.0, 1.2)
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
    out.add(np.float32(sc.dl * (0.78 + 0.2 * sev)) * dens * (1.0 - 0.6 * bronch))
    return out


@renders("Consolidation", "lateral")
def _consolidation_lateral(sc: LateralScene, sev: float, r: np.random.Generator) -> Drawing:
    """Lower lobe: behind and below the major fissure."""
    out, g, cv, x, y = Drawing(), sc.geom, sc.cv, sc.cv.x, sc.cv.y
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
    tex = _smooth_noise(r, cv.size, 18)
    br = _Lines(cv)
    for _ in range(3):
        q1 = g.point(r.uniform(0.75, 0.95), r.uniform(0.1, 0.7))
        br.add(_bezier(g.hilum, ((g.hilum[0] + q1[0]) / 2 + r.normal(0, 0.05),
                                 (g.hilum[1] + q1[1]) / 2), q1, 10), 0.016, 1.0)
    out.add(np.float32(sc.dl * (0.8 + 0.2 * sev)) * region * sc.lung * sc.thick * (
        np.clip(0.92 + 0.12 * tex, 0, 1.2) * (1.0 - 0.6 * _clip01(br.render()))))
    return out


@renders("Pneumonia", "frontal")
def _pneumonia_frontal(sc: FrontalScene, sev: float, r: np.random.Generator) -> Drawing:
    """Several patchy foci in a lower zone."""
    out, g, cv = Drawing(), sc.geom, sc.cv
    sides = [-1 if r.random() < 0.6 else 1]
    if r.random() < 0.3:
        sides.append(-sides[0])
    tex = _smooth_noise(r, cv.size, 36)
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
        out.add(np.float32(0.2 * sev) * patchy * sc.lungs[s] * sc.lung_thick[s])
    return out


@renders("Pneumonia", "lateral")
def _pneumonia_lateral(sc: LateralScene, sev: float, r: np.random.Generator) -> Drawing:
    out, g, cv = Drawing(), sc.geom, sc.cv
    tex = _smooth_noise(r, cv.size, 36)
    bl = cv.zeros()
    t0, f0 = r.uniform(0.55, 0.7), r.uniform(0.25, 0.55)
    for _ in range(int(r.integers(5, 9))):
        px, py = g.point(t0 + r.uniform(-0.1, 0.1), f0 + r.uniform(-0.3, 0.3))
        rad = r.uniform(0.06, 0.1)
        b = cv.box(px - 2.5 * rad, px + 2.5 * rad, py - 2.5 * rad, py + 2.5 * rad)
        if b is not None:
            sl, xs, ys = b
            bl[sl] += np.exp(-(((xs - px) ** 2 + (ys - py) ** 2) / (rad * rad)))
    out.add(np.float32(0.2 * sev) * _clip01(_clip01(bl) * (0.55 + 0.6 * tex)) * (
        sc.lung * sc.thick))
    return out


@renders("Atelectasis", "frontal")
def _atelectasis_frontal(sc: FrontalScene, sev: float, r: np.random.Generator) -> Drawing:
    """Plate-like band at a base, on the side whose volume loss the anatomy drew.

    r is the same stream the anatomy drew that side from, so its first draw repeats that one.
    """
    out, g, s = Drawing(), sc.geom, sc.collapsed
    band = _Lines(sc.cv)
    for k in range(1 + int(r.random() < 0.5)):
        t0 = r.uniform(0.74, 0.86) - 0.1 * k
        p0 = g.lung_point(s, t0, -0.3)
        p1 = g.lung_point(s, t0 + r.uniform(-0.02, 0.05), 0.85)
        band.add([p0, ((p0[0] + p1[0]) / 2, (p0[1] + p1[1]) / 2 + r.normal(0, 0.01)), p1],
                 r.uniform(0.02, 0.03), 1.0)
    out.add(np.float32(0.16 * sev) * _crisp(band.render(), 1.2) * sc.lungs[s])
    return out


@renders("Atelectasis", "lateral")
def _atelectasis_lateral(sc: LateralScene, sev: float, r: np.random.Generator) -> Drawing:
    out, g = Drawing(), sc.geom
    band = _Lines(sc.cv, crisp=1.3)
    t0 = r.uniform(0.68, 0.8)
    band.add([g.point(t0, -0.6), g.point(t0 + 0.06, 0.5)], r.uniform(0.025, 0.035), 1.0)
    out.add(np.float32(0.26 * sev) * band.render() * sc.lung)
    return out


@renders("Pleural Effusion", "frontal")
def _pleural_effusion_frontal(sc: FrontalScene, sev: float, r: np.random.Generator) -> Drawing:
    """Costophrenic angle filled, meniscus rising laterally."""
    out, g, cv, x, y = Drawing(), sc.geom, sc.cv, sc.cv.x, sc.cv.y
    sides = [-1 if r.random() < 0.5 else 1]
    if r.random() < 0.4:
        sides.append(-sides[0])
    for s in sides:
        height = 0.07 + r.uniform(0.12, 0.28) * sev**2
        level = g.base_y[s] - height
        q = _clip01((s * x - 0.05) / (g.lung_c + g.lung_h))
        meniscus = level - (0.04 + 0.45 * height) * q**3
        fluid = _ramp(y - meniscus, cv.edge(0.035))
        out.add(np.float32(sc.dl * 1.05) * fluid * sc.lungs[s] * sc.lung_thick[s])
        side = _ramp(s * x - 0.03, cv.edge(0.02)) * _ramp(g.bw - 0.05 - s * x, 0.04)
        below = _ramp(y - g.dome_y(s, x), cv.edge(0.02)) * _ramp(g.base_y[s] + 0.05 - y, 0.05)
        out.add(np.float32(0.05) * fluid * side * (sc.lungs[s] + below))
    return out


@renders("Pleural Effusion", "lateral")
def _pleural_effusion_lateral(sc: LateralScene, sev: float, r: np.random.Generator) -> Drawing:
    """The posterior costophrenic sulcus fills first."""
    out, g, cv, x, y = Drawing(), sc.geom, sc.cv, sc.cv.x, sc.cv.y
    height = 0.08 + r.uniform(0.1, 0.24) * sev**2
    q = _clip01((x - g.ant) / (g.post - g.ant))
    meniscus = g.dome_y(x) - height * (0.15 + 0.85 * q * q)  # deepest in the sulcus
    fluid = _ramp(y - meniscus, cv.edge(0.03))
    out.add(np.float32(sc.dl * 1.05) * fluid * sc.lung * sc.thick)
    return out


@renders("Pleural Other", "frontal")
def _pleural_other_frontal(sc: FrontalScene, sev: float, r: np.random.Generator) -> Drawing:
    """Pleural thickening along the lateral wall + plaques."""
    out, g, cv, x, y = Drawing(), sc.geom, sc.cv, sc.cv.x, sc.cv.y
    s = -1 if r.random() < 0.5 else 1
    t0 = r.uniform(0.25, 0.45)
    t1 = t0 + r.uniform(0.3, 0.45)
    y0_ = g.apex_y + t0 * (g.base_y[s] - g.apex_y)
    y1_ = g.apex_y + t1 * (g.base_y[s] - g.apex_y)
    thk = r.uniform(0.035, 0.055) * (0.7 + 0.3 * sev)
    inner, _ = _lung_shape(cv, g, s, lat_shrink=thk)
    vert = _clip01(np.minimum(y - y0_, y1_ - y) / 0.08)
    wall = sc.lungs[s] * (1.0 - inner) * vert * _ramp(s * x - 0.25, 0.1)
    out.add(np.float32(0.3) * wall)
    for _ in range(int(r.integers(2, 4))):
        px, py = g.lung_point(s, r.uniform(0.3, 0.9), 0.92)
        out.patch(_blob_patch(cv, px, py, 0.018, r.uniform(0.04, 0.07), 0.2 * sev,
                              angle=r.normal(0, 10), edge=0.006))
    return out


@renders("Pleural Other", "lateral")
def _pleural_other_lateral(sc: LateralScene, sev: float, r: np.random.Generator) -> Drawing:
    """Thickening along the posterior wall + diaphragmatic plaques."""
    out, g, cv, x, y = Drawing(), sc.geom, sc.cv, sc.cv.x, sc.cv.y
    inner, _ = _lateral_lung(cv, g, shrink=r.uniform(0.03, 0.045))
    t0, t1 = r.uniform(0.2, 0.4), r.uniform(0.7, 0.9)
    y0_ = g.apex_y + t0 * (g.base_post - g.apex_y)
    y1_ = g.apex_y + t1 * (g.base_post - g.apex_y)
    vert = _clip01(np.minimum(y - y0_, y1_ - y) / 0.06)
    out.add(np.float32(0.24) * sc.lung * (1.0 - inner) * vert * _ramp(x - 0.1, 0.1))
    for _ in range(int(r.integers(2, 4))):
        px = r.uniform(g.ant + 0.3, g.post - 0.3)
        out.patch(_blob_patch(cv, px, float(g.dome_y(px)) - 0.012, r.uniform(0.04, 0.07),
                              0.016, 0.2 * sev, edge=0.006))
    return out


@renders("Fracture", "lateral")
def _fracture_lateral(sc: LateralScene, sev: float, r: np.random.Generator) -> Drawing:
    """A displaced posterior rib fragment (the sternal step-off is drawn with the sternum)."""
    out, g, a = Drawing(), sc.geom, sc.anatomy
    i = int(r.integers(3, max(4, a.rib_count - 3)))
    y0 = a.apex_y + 0.02 + i * a.rib_spacing
    sx = float(g.spine(y0)) + 0.06
    pts = _bezier((sx, y0), (sx - 0.35, y0 - 0.02), (sx - 0.7, y0 + 0.3), 14)
    frag = _Lines(sc.cv, crisp=1.5)
    frag.add(pts[5:9] + np.array([0.0, 0.05 * sev]), 1.8 * a.rib_thickness, 1.0)
    out.add(np.float32(0.06 * a.bone_density) * frag.render())
    return out


@renders("Support Devices", "frontal")
def _devices_frontal(sc: FrontalScene, sev: float, r: np.random.Generator) -> Drawing:
    """Tubes, lines and ECG leads: thin, very dense (metal or contrast-striped) structures."""
    out, g, cv = Drawing(), sc.geom, sc.cv
    full = sev >= 1.0
    for _ in range(int(r.integers(3, 6)) if full else 2):  # ECG electrodes and their wires
        s = -1 if r.random() < 0.5 else 1
        lx, ly = s * r.uniform(0.3, 0.8), r.uniform(-0.75, 0.55)
        out.patch(_ring_patch(cv, lx, ly, 0.03, 0.012, 0.35))
        out.patch(_blob_patch(cv, lx, ly, 0.011, 0.011, 0.45, edge=0.005))
        ctrl = (lx + s * r.uniform(0.0, 0.3), ly + r.uniform(-0.4, 0.4))
        out.line(_bezier((lx, ly), ctrl, (s * 1.1, ly + r.uniform(-0.5, 0.5))), 0.01, 0.3)
    if full and r.random() < 0.75:  # endotracheal tube ending above the carina
        tip = g.carina_y - r.uniform(0.06, 0.14)
        xm = g.med_x * 0.5
        for dxw in (-0.017, 0.017):
            out.line([(xm + dxw, -1.05), (xm + dxw, tip)], 0.008, 0.2)
        out.line([(xm - 0.008, -1.05), (xm - 0.008, tip)], 0.01, 0.45)
    if r.random() < (0.8 if full else 0.45):  # central venous line into the SVC
        side = -1 if r.random() < 0.7 else 1
        start = (side * g.bw * 0.75, g.shoulder_y + 0.04)
        knee = (side * 0.14, g.carina_y - 0.3)
        tipp = (g.med_x - 0.08, g.carina_y + r.uniform(0.05, 0.2))
        pts = np.concatenate([_bezier(start, (side * 0.4, g.shoulder_y + 0.2), knee, 16),
                              _bezier(knee, (g.med_x - 0.09, g.carina_y - 0.2), tipp, 12)])
        out.line(pts, 0.012, 0.5)
    if full and r.random() < 0.45:  # nasogastric tube down the oesophagus into the stomach
        xs0 = g.med_x + 0.03
        stomach = (g.lung_c * 0.75, float(g.dome_y(1, g.lung_c * 0.75)) + 0.12)
        pts = np.concatenate([np.array([(xs0, -1.05), (xs0 + 0.01, 0.0)]),
                              _bezier((xs0 + 0.01, 0.0), (xs0 + 0.02, stomach[1] + 0.05),
                                      stomach, 12)])
        out.line(pts, 0.013, 0.4)
    if full and r.random() < (0.3 if not sc.ap else 0.15):  # pacemaker with its lead
        px, py = (-0.55 if r.random() < 0.3 else 0.55), g.shoulder_y + 0.22
        out.patch(_blob_patch(cv, px, py, 0.08, 0.06, 0.9, angle=r.normal(0, 15), edge=0.01))
        out.line(_bezier((px, py), (0.0, g.carina_y - 0.1),
                         (g.heart[0] + 0.05, g.heart[1] + 0.1), 24), 0.013, 0.45)
    return out


@renders("Support Devices", "lateral")
def _devices_lateral(sc: LateralScene, sev: float, r: np.random.Generator) -> Drawing:
    """ECG leads, endotracheal tube along the trachea, central line, nasogastric tube."""
    out, g, cv = Drawing(), sc.geom, sc.cv
    full = sev >= 1.0
    for _ in range(int(r.integers(2, 5)) if full else 2):
        lx, ly = r.uniform(g.ant, g.post - 0.1), r.uniform(-0.6, 0.4)
        out.patch(_ring_patch(cv, lx, ly, 0.03, 0.012, 0.3))
        out.patch(_blob_patch(cv, lx, ly, 0.01, 0.01, 0.4, edge=0.005))
        out.line(_bezier((lx, ly), (lx + r.uniform(-0.3, 0.3), ly + 0.3),
                         (r.uniform(-1, 1), 1.1), 16), 0.01, 0.25)
    if full and r.random() < 0.75:
        tr = sc.trachea.copy()
        tr[-1] = tr[-2] + 0.8 * (tr[-1] - tr[-2])
        out.line(tr, 0.013, 0.4)
    if r.random() < (0.8 if full else 0.45):
        out.line(_bezier((-0.3, -1.05), (-0.2, g.carina_y - 0.3),
                         (g.heart[0] + 0.1, g.carina_y + 0.14), 16), 0.012, 0.45)
    if full and r.random() < 0.45:
        sx = float(g.spine(0.0)) - 0.15
        end = (g.ant + 0.3, float(g.dome_y(g.ant + 0.3)) + 0.1)
        out.line(_bezier((0.02, -1.05), (sx, 0.0), end, 20), 0.013, 0.4)
    return out
