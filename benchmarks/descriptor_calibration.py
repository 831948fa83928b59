"""Train the in-house copy-detection descriptor and calibrate it against the pixel baseline.

Why: the memorization metrics need a threshold that means "this generated image is a copy of a
training image", and on chest X-rays every image shares one anatomy template, so a descriptor
must separate a mildly edited copy from a *different patient's* look-alike image. This script
measures exactly that (ROC AUC, threshold at 1% FPR, TPR there) on held-out patients.

Data: by default procedural look-alike "X-rays" generated here (one anatomy template, per-patient
geometry/texture/findings, several studies per patient); `--source phantoms` renders frontal
studies with `mnemo.phantoms` (the demo's generator) instead. `--parquet` reads an image cache instead
(columns: patient_id, study_id and an image column holding PNG bytes; provisional until the
dataset cache format is settled).

    PYTHONPATH=src python benchmarks/descriptor_calibration.py --steps 300
"""

from __future__ import annotations

import argparse
import io
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mnemo.copydetect.descriptors import (
    CopyDetectTrainConfig,
    PixelDescriptor,
    calibrate,
    train_copydetect,
)


def _smooth_field(n: int, size: int, cells: int, gen: torch.Generator) -> torch.Tensor:
    """Low-frequency random field in about [-1, 1]: bicubic upsampling of a coarse grid."""
    coarse = torch.randn(n, 1, cells, cells, generator=gen)
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)


def make_phantoms(
    n_patients: int,
    studies_per_patient: int = 2,
    size: int = 32,
    seed: int = 0,
) -> tuple[torch.Tensor, list[str], list[str]]:
    """Look-alike frontal chest "X-rays": one template, patient-specific detail, study jitter.

    Patient-level: lung/heart geometry (a few % of the side), rib spacing and phase, a smooth
    texture field, 0-3 nodules. Study-level: small positioning shift, exposure and a re-drawn
    fine texture, so same-patient-different-study pairs are alike but are not copies.
    Rendered at 2x and area-downsampled so edges are anti-aliased like real downsampled films.
    """
    gen = torch.Generator().manual_seed(seed)
    hi = 2 * size
    p = n_patients

    def u(lo: float, hi_: float, n: int = p) -> torch.Tensor:
        return lo + (hi_ - lo) * torch.rand(n, generator=gen)

    patient = {
        "lung_w": u(0.17, 0.23),
        "lung_h": u(0.28, 0.36),
        "lung_y": u(-0.08, 0.02),
        "lung_gap": u(0.20, 0.28),
        "heart_r": u(0.13, 0.19),
        "heart_x": u(0.04, 0.12),
        "rib_freq": u(9.0, 13.0),
        "rib_phase": u(0.0, 2 * math.pi),
        "rib_tilt": u(0.25, 0.6),
        "body_w": u(0.72, 0.86),
    }
    texture = _smooth_field(p, hi, 6, gen)
    n_nod = 3
    nod_xy = torch.rand(p, n_nod, 2, generator=gen) * 0.9 - 0.45
    nod_r = 0.02 + 0.03 * torch.rand(p, n_nod, generator=gen)
    nod_on = torch.rand(p, n_nod, generator=gen) < 0.5

    s = studies_per_patient
    pidx = torch.arange(p).repeat_interleave(s)
    m = len(pidx)

    def pv(key: str) -> torch.Tensor:
        return patient[key][pidx].view(m, 1, 1)

    shift = (torch.rand(m, 2, generator=gen) - 0.5) * 0.06
    exposure = 0.9 + 0.2 * torch.rand(m, generator=gen)
    lin = (torch.arange(hi) + 0.5) / hi * 2 - 1
    yy, xx = torch.meshgrid(lin, lin, indexing="ij")
    xx = xx[None] - shift[:, 0].view(m, 1, 1)
    yy = yy[None] - shift[:, 1].view(m, 1, 1)

    def ellipse(cx, cy, rx, ry, soft: float = 0.08) -> torch.Tensor:
        d = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2
        return torch.sigmoid((1 - d) / soft)

    body = ellipse(0.0, 0.1, pv("body_w"), 1.1)
    gap = pv("lung_gap") / 2 + pv("lung_w")
    lungs = ellipse(-gap, pv("lung_y"), pv("lung_w"), pv("lung_h"))
    lungs = lungs + ellipse(gap, pv("lung_y"), pv("lung_w"), pv("lung_h"))
    heart = ellipse(pv("heart_x"), pv("lung_y") + 0.15, pv("heart_r") * 1.2, pv("heart_r"))
    spine = torch.exp(-((xx / 0.06) ** 2))
    ribs = 0.5 + 0.5 * torch.cos(
        pv("rib_freq") * (yy + pv("rib_tilt") * xx.abs()) + pv("rib_phase")
    )
    ribs = ribs**4 * lungs.clamp(0, 1)
    clav = torch.exp(-(((yy + 0.55 - 0.25 * xx.abs()) / 0.03) ** 2)) * (xx.abs() < 0.45)
    img = 0.25 + 0.45 * body - 0.35 * lungs + 0.30 * heart + 0.25 * spine * body
    img = img + 0.12 * ribs + 0.2 * clav
    img = img + 0.06 * texture[pidx, 0]
    img = img + 0.03 * _smooth_field(m, hi, 12, gen)[:, 0]  # study-level fine texture
    for k in range(n_nod):
        c = nod_xy[pidx, k]
        blob = torch.exp(
            -((xx - c[:, 0].view(m, 1, 1)) ** 2 + (yy - c[:, 1].view(m, 1, 1)) ** 2)
            / (2 * nod_r[pidx, k].view(m, 1, 1) ** 2)
        )
        img = img + 0.25 * blob * nod_on[pidx, k].view(m, 1, 1)
    img = (img * exposure.view(m, 1, 1)).clamp(0, 1)
    img = F.interpolate(img[:, None], size=(size, size), mode="area")
    images = (img * 255).round().to(torch.uint8)
    pids = [f"patient{int(i):05d}" for i in pidx]
    sids = [f"study{k % s + 1}" for k in range(m)]
    return images, pids, sids


def render_mnemo_phantoms(
    n_patients: int, studies_per_patient: int = 2, size: int = 32, seed: int = 0
) -> tuple[torch.Tensor, list[str], list[str]]:
    """Frontal studies from `mnemo.phantoms` (the demo's generator), rendered at 2x and
    area-downsampled. Imported lazily: that module is optional for this benchmark."""
    from mnemo import phantoms

    rng = np.random.default_rng(seed)
    images, pids, sids = [], [], []
    for p in range(n_patients):
        sex, age = ("Female" if p % 2 else "Male"), int(rng.integers(20, 90))
        anatomy = phantoms.sample_anatomy(rng, sex, age)
        for s in range(studies_per_patient):
            ap_pa = "AP" if rng.random() < 0.3 else "PA"
            labels = phantoms.sample_labels(rng, ap_pa, age)
            images.append(phantoms.render_study(anatomy, "Frontal", ap_pa, labels, rng, 2 * size))
            pids.append(f"patient{p:05d}")
            sids.append(f"study{s + 1}")
    x = torch.from_numpy(np.stack(images)).float()[:, None].clamp(0, 1)
    x = F.interpolate(x, size=(size, size), mode="area")
    return (x * 255).round().to(torch.uint8), pids, sids


def read_parquet(path: str) -> tuple[torch.Tensor, list[str], list[str]]:
    """Images + ids from a Parquet cache with PNG bytes (provisional column names)."""
    import pyarrow.parquet as pq
    from PIL import Image

    table = pq.read_table(path)
    cols = set(table.column_names)
    img_col = next((c for c in ("png", "image", "image_png", "pixels") if c in cols), None)
    if img_col is None or "patient_id" not in cols:
        raise ValueError(f"{path}: need patient_id and an image column, found {sorted(cols)}")
    arrays = [
        np.asarray(Image.open(io.BytesIO(b)).convert("L")) for b in table[img_col].to_pylist()
    ]
    images = torch.from_numpy(np.stack(arrays))[:, None]
    pids = [str(v) for v in table["patient_id"].to_pylist()]
    sids = [str(v) for v in table["study_id"].to_pylist()] if "study_id" in cols else pids
    return images, pids, sids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parquet", help="image cache to use instead of procedural phantoms")
    ap.add_argument(
        "--source",
        choices=("procedural", "phantoms"),
        default="procedural",
        help="procedural look-alikes defined here, or mnemo.phantoms renders",
    )
    ap.add_argument("--patients", type=int, default=1200, help="procedural patients (train+test)")
    ap.add_argument("--studies", type=int, default=2)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--test-frac", type=float, default=0.25)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--input-size", type=int, default=64)
    ap.add_argument("--channels", default="16,32,64,128")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--temperature", type=float, default=0.07)
    ap.add_argument("--koleo", type=float, default=0.1)
    ap.add_argument("--strength", type=float, default=1.0)
    ap.add_argument("--flip-p", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--save", help="directory to save the trained model to")
    ap.add_argument("--json", help="write the figures to this JSON file")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    if args.parquet:
        images, pids, sids = read_parquet(args.parquet)
    elif args.source == "phantoms":
        images, pids, sids = render_mnemo_phantoms(
            args.patients, args.studies, args.size, args.seed
        )
    else:
        images, pids, sids = make_phantoms(args.patients, args.studies, args.size, args.seed)
    # split by patient so the test set holds patients the net never saw
    uniq = sorted(set(pids))
    rng = np.random.default_rng(args.seed)
    test_p = set(rng.choice(uniq, size=max(2, int(len(uniq) * args.test_frac)), replace=False))
    is_test = np.array([p in test_p for p in pids])
    train_x = images[torch.from_numpy(~is_test)]
    test_idx = np.flatnonzero(is_test)
    test_x = images[torch.from_numpy(test_idx)]
    test_p_ids = [pids[i] for i in test_idx]
    test_s_ids = [sids[i] for i in test_idx]
    print(
        f"images: {len(images)} ({tuple(images.shape[1:])}), train {len(train_x)}, test {len(test_x)}"
    )

    cfg = CopyDetectTrainConfig(
        channels=tuple(int(c) for c in args.channels.split(",")),
        input_size=args.input_size,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        temperature=args.temperature,
        koleo_weight=args.koleo,
        strength=args.strength,
        flip_p=args.flip_p,
        progress=not args.no_progress,
    )
    t0 = time.perf_counter()
    net, history = train_copydetect(train_x, cfg, seed=args.seed)
    train_s = time.perf_counter() - t0
    if args.save:
        net.save_pretrained(args.save)

    t0 = time.perf_counter()
    net.embed(test_x, batch_size=256)
    embed_ips = len(test_x) / (time.perf_counter() - t0)

    results = {"train_seconds": train_s, "embed_images_per_s": embed_ips}
    results["first_loss"] = float(np.mean([h["loss"] for h in history[:10]]))
    results["last_loss"] = float(np.mean([h["loss"] for h in history[-10:]]))
    results["last_acc"] = float(np.mean([h["acc"] for h in history[-10:]]))
    for desc in (PixelDescriptor(16), PixelDescriptor(32), net):
        cal = calibrate(desc, test_x, test_p_ids, test_s_ids, seed=args.seed + 1)
        results[desc.recipe] = cal
        print(
            f"{desc.recipe:45s} AUC {cal['auc']:.4f}  thr@1%FPR {cal['threshold']:.3f}  "
            f"TPR {cal['tpr_at_threshold']:.3f}  pos med {cal['positive_median']:.3f}  "
            f"neg p99 {cal['negative_p99']:.3f}  same-patient med {cal['same_patient_median']:.3f} "
            f"(above thr {cal['same_patient_frac_above']:.2f})"
        )
    print(
        f"train {train_s:.1f} s ({args.steps} steps, loss {results['first_loss']:.3f} -> "
        f"{results['last_loss']:.3f}, twin acc {results['last_acc']:.2f}); "
        f"embed {embed_ips:.0f} images/s"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
