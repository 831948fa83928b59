"""One radiograph from one patient's anatomy and one study's labels: the anatomy pass, the
findings drawn over it, then the film (pose and exposure jitter, blur, film curve, grain)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from mnemo.phantoms.anatomy import PatientAnatomy, _frontal_anatomy, _lateral_anatomy
from mnemo.phantoms.findings import FINDINGS, _severity, draw_findings
from mnemo.phantoms.raster import _FILM_BLUR, _Canvas, _clip01, _warp, gaussian_blur


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


def render_study(anatomy: PatientAnatomy, view: str, ap_pa: str | None,
                 labels: Mapping[str, float], rng: np.random.Generator,
                 size: int = 256) -> np.ndarray:
    """One radiograph as float32 attenuation in [0, 1] (bright = dense, MONOCHROME2).

    rng decides the per-study jitter (pose, exposure, grain) and where findings go; it is split
    into fixed sub-streams first, so switching a label on or off leaves everything else equal.
    """
    rngs = _Rngs(rng)
    size = int(size)
    v = str(view).strip().lower()
    if v not in ("frontal", "lateral"):
        raise ValueError(f"view must be 'Frontal' or 'Lateral', got {view!r}")
    sev = {f: _severity(labels, f) for f in FINDINGS}
    ap = v == "frontal" and str(ap_pa or "PA").strip().upper() == "AP"
    if v == "frontal":
        att, lines, scene = _frontal_anatomy(anatomy, ap, sev, rngs.finding, size)
    else:
        att, lines, scene = _lateral_anatomy(anatomy, sev, rngs.finding, size)
    draw_findings(v, scene, sev, rngs.finding, att, lines)
    att += lines.render()
    return _finish(scene.cv, att, anatomy, rngs, ap, lateral=v == "lateral")
