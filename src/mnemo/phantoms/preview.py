"""PNG contact sheets of phantoms, for eyeballing the generator after a change."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from mnemo.data.chexpert import OBSERVATIONS
from mnemo.phantoms.anatomy import sample_anatomy
from mnemo.phantoms.config import _rng
from mnemo.phantoms.labels import sample_labels
from mnemo.phantoms.render import render_study


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
