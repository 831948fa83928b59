"""Descriptors and copy-detection augmentations: the invariances the memorization metrics rely on."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mnemo.copydetect import augment
from mnemo.copydetect.descriptors import (
    CopyDetectNet,
    CopyDetectTrainConfig,
    Descriptor,
    PixelDescriptor,
    SSCDDescriptor,
    build_descriptor,
    calibrate,
    embed_images,
    train_copydetect,
)


def smooth_blobs(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Look-alike images: a shared smooth template plus per-image smooth detail (uint8)."""
    g = torch.Generator().manual_seed(seed)
    template = F.interpolate(
        torch.randn(1, 1, 3, 3, generator=g), size=(size, size), mode="bicubic"
    )
    detail = F.interpolate(torch.randn(n, 1, 6, 6, generator=g), size=(size, size), mode="bicubic")
    x = 0.5 + 0.15 * template + 0.1 * detail
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


# ------------------------------------------------------------------------------ pixel


def test_pixel_duplicate_negative_and_exposure() -> None:
    x = smooth_blobs(4, seed=1)
    d = PixelDescriptor(size=16)
    assert isinstance(d, Descriptor)
    assert d.recipe == "pixel:16x16:zscore" and d.dim == 256
    e = d.embed(torch.cat([x, x]))
    assert e.dtype == torch.float32 and e.shape == (8, 256)
    torch.testing.assert_close(e.norm(dim=1), torch.ones(8))
    assert torch.allclose((e[:4] * e[4:]).sum(1), torch.ones(4), atol=1e-5)

    neg = 255 - x
    sim_neg = (d.embed(x) * d.embed(neg)).sum(1)
    assert torch.allclose(sim_neg, -torch.ones(4), atol=1e-5)

    # brightness/contrast change without clipping: correlation stays ~1
    xf = x.float()
    bright = ((xf - 128) * 0.6 + 140).round().clamp(0, 255).to(torch.uint8)
    sim = (d.embed(x) * d.embed(bright)).sum(1)
    assert (sim > 0.995).all()
    # colour input is averaged to grey
    rgb = x.expand(-1, 3, -1, -1)
    torch.testing.assert_close(d.embed(rgb), d.embed(x))
    # batching does not change results
    torch.testing.assert_close(d.embed(x, batch_size=1), embed_images(d, x, batch_size=3))


# ------------------------------------------------------------------------------ augment

OPS = [
    augment.random_resized_crop,
    augment.random_shift,
    augment.random_flip,
    augment.gaussian_blur,
    augment.gaussian_noise,
    augment.random_contrast_gamma,
    augment.random_erase,
    augment.strong_augment,
    augment.copy_edit,
]


@pytest.mark.parametrize("op", OPS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("channels", [1, 3])
def test_augment_shapes_range_determinism(op, channels: int) -> None:
    x = torch.rand(6, channels, 24, 20, generator=torch.Generator().manual_seed(0))
    y1 = op(x, torch.Generator().manual_seed(3))
    y2 = op(x, torch.Generator().manual_seed(3))
    y3 = op(x, torch.Generator().manual_seed(4))
    assert y1.shape == x.shape and y1.dtype == x.dtype
    assert y1.min() >= -1e-6 and y1.max() <= 1 + 1e-6
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)
    assert not torch.equal(y1, y3)


def test_crop_full_scale_is_identity_and_flip_is_exact() -> None:
    x = torch.rand(5, 1, 16, 16)
    g = torch.Generator().manual_seed(0)
    torch.testing.assert_close(augment.random_resized_crop(x, g, scale=(1.0, 1.0)), x)
    y = augment.random_flip(x, g, p=1.0)
    torch.testing.assert_close(y, x.flip(-1))
    # a zero-size shift and zero-strength jitter are identities as well
    torch.testing.assert_close(augment.random_shift(x, g, max_shift=0.0), x)
    torch.testing.assert_close(
        augment.random_contrast_gamma(x, g, brightness=0, contrast=0, gamma=0), x
    )


def test_shift_moves_whole_pixels() -> None:
    x = torch.zeros(64, 1, 16, 16)
    x[:, :, 8, 8] = 1.0
    y = augment.random_shift(x, torch.Generator().manual_seed(1), max_shift=0.25)
    # the single bright pixel survives unblurred somewhere (or leaves the frame)
    assert set(torch.unique(y).tolist()) <= {0.0, 1.0}


# ------------------------------------------------------------------------------ CopyDetectNet


def test_copydetect_net_normalised_sizes_and_round_trip(tmp_path) -> None:
    torch.manual_seed(0)
    net = CopyDetectNet(channels=(8, 16, 16), dim=24, input_size=32).eval()
    assert isinstance(net, Descriptor)
    for side in (32, 64):
        x = torch.randint(0, 256, (3, 1, side, side), dtype=torch.uint8)
        e = net.embed(x)
        assert e.shape == (3, 24) and e.dtype == torch.float32
        torch.testing.assert_close(e.norm(dim=1), torch.ones(3))
        assert net.features(x).shape == (3, 16)
    x = torch.randint(0, 256, (5, 1, 40, 40), dtype=torch.uint8)
    before = net.embed(x)
    net.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").is_file()
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["channels"] == [8, 16, 16] and cfg["dim"] == 24
    loaded = CopyDetectNet.from_pretrained(tmp_path / "m")
    torch.testing.assert_close(loaded.embed(x), before, rtol=0, atol=0)
    assert loaded.recipe == net.recipe and "unsaved" not in loaded.recipe
    via_factory = build_descriptor("copydetect", {"kind": "copydetect"}, model_dir=tmp_path / "m")
    torch.testing.assert_close(via_factory.embed(x), before, rtol=0, atol=0)
    # RGB input is averaged to the grey channel the net was built for
    torch.testing.assert_close(net.embed(x.expand(-1, 3, -1, -1)), before)


# ------------------------------------------------------------------------------ training + calibration

TINY = {
    "channels": (8, 16, 32),
    "dim": 32,
    "input_size": 32,
    "batch_size": 16,
    "lr": 5e-3,
    "strength": 0.5,
}


def test_train_copydetect_learns_and_calibrates() -> None:
    torch.manual_seed(123)  # global RNG must not matter: training uses its own seed
    images = smooth_blobs(64, seed=2)
    logged = []
    cfg = {**TINY, "steps": 30, "warmup_steps": 3, "progress": False}
    net, hist = train_copydetect(images, cfg, seed=0, log=logged.append)
    assert len(hist) == 30 and logged and logged[-1]["step"] == 30
    first = sum(h["loss"] for h in hist[:5]) / 5
    last = sum(h["loss"] for h in hist[-5:]) / 5
    assert last < first - 0.3
    assert net.training_metadata["config"]["steps"] == 30

    held_out = smooth_blobs(24, seed=3)
    pids = [f"p{i // 2}" for i in range(24)]
    sids = [f"s{i % 2}" for i in range(24)]
    cal = calibrate(net, held_out, pids, sids, seed=0)
    assert 0.0 <= cal["auc"] <= 1.0
    assert -1.0 <= cal["threshold"] <= 1.0 + 1e-6
    assert cal["fpr_at_threshold"] <= 0.01
    assert cal["n_positive"] == 24 and cal["n_negative"] == 24 * 22
    assert cal["n_same_patient"] == 24
    assert cal["recipe"] == net.recipe


def test_train_copydetect_is_deterministic() -> None:
    images = smooth_blobs(20, seed=4)
    cfg = CopyDetectTrainConfig(**TINY, steps=3, warmup_steps=1, progress=False)
    net1, h1 = train_copydetect(images, cfg, seed=7)
    torch.manual_seed(999)
    net2, h2 = train_copydetect(images, cfg, seed=7)
    assert [h["loss"] for h in h1] == [h["loss"] for h in h2]
    torch.testing.assert_close(net1.embed(images), net2.embed(images), rtol=0, atol=0)


def quadrant_images() -> torch.Tensor:
    """Six 2x2 block patterns (two bright quadrants each): pairwise correlation 0 or -1."""
    patterns = torch.tensor(
        [[1, 1, 0, 0], [0, 0, 1, 1], [1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 0, 1], [0, 1, 1, 0]],
        dtype=torch.float32,
    ).view(6, 1, 2, 2)
    x = F.interpolate(patterns, size=(32, 32), mode="nearest") * 160 + 40
    return x.round().to(torch.uint8)


def test_calibrate_perfect_separation() -> None:
    x = quadrant_images()
    cal = calibrate(PixelDescriptor(size=2), x, [f"p{i}" for i in range(6)], seed=0)
    assert cal["auc"] == 1.0
    assert cal["tpr_at_threshold"] == 1.0 and cal["fpr_at_threshold"] == 0.0
    assert cal["negative_max"] < cal["threshold"] <= cal["positive_p05"] + 1e-6
    assert cal["n_same_patient"] == 0 and cal["same_patient_median"] != cal["same_patient_median"]


def test_calibrate_threshold_is_smallest_with_fpr_below_target() -> None:
    x = smooth_blobs(30, seed=5)
    pids = [f"p{i}" for i in range(30)]
    d = PixelDescriptor(8)
    cal = calibrate(d, x, pids, seed=1, fpr=0.05)
    # recompute negatives exactly as calibrate does (same copy_edit draw)
    gen = torch.Generator().manual_seed(1)
    q = d.embed((augment.copy_edit(x.float() / 255, gen) * 255).round().to(torch.uint8))
    r = d.embed(x)
    sim = q @ r.T
    neg = sim[~torch.eye(30, dtype=torch.bool)]
    pos = sim.diagonal()
    thr = cal["threshold"]
    assert (neg >= thr).double().mean() <= 0.05
    # any lower observed score would let in more than 5% false positives
    below = torch.cat([pos, neg])
    below = below[below < thr - 1e-7]
    if below.numel():
        assert (neg >= below.max()).double().mean() > 0.05
    assert cal["tpr_at_threshold"] == pytest.approx(float((pos >= thr - 1e-7).double().mean()))


# ------------------------------------------------------------------------------ SSCD


class ShapeProbe(nn.Module):
    """Stands in for SSCD: conv + GeM + linear, plus the input shape it saw in the output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.proj = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = F.relu(self.conv(x)).clamp(min=1e-6).pow(3.0).mean(dim=(2, 3)).pow(1.0 / 3.0)
        shape = torch.tensor([x.shape[1], x.shape[2], x.shape[3]], dtype=torch.float32)
        return torch.cat([self.proj(f) * 0.0, shape.expand(x.shape[0], 3)], dim=1)


@pytest.fixture
def probe_path(tmp_path):
    path = tmp_path / "probe.torchscript.pt"
    with warnings.catch_warnings():  # torch.jit is deprecated, but it is how SSCD ships
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.jit.save(torch.jit.script(ShapeProbe()), str(path))
    return path


@pytest.mark.parametrize(("recipe", "side"), [("nemo", 320), ("wen", 224)])
def test_sscd_recipes_feed_expected_shape(probe_path, recipe: str, side: int) -> None:
    d = build_descriptor("sscd", {"kind": "sscd", "weights": str(probe_path), "recipe": recipe})
    assert isinstance(d, SSCDDescriptor) and d.dim == 8
    assert d.recipe.startswith(f"sscd:{recipe}-") and d.recipe.endswith(":probe")
    grey = torch.randint(0, 256, (3, 1, 40, 56), dtype=torch.uint8)
    e = d.embed(grey, batch_size=2)
    expected = F.normalize(torch.tensor([0, 0, 0, 0, 0, 3.0, side, side]), dim=0)
    torch.testing.assert_close(e, expected.expand(3, 8))
    pre = d.preprocess(grey)
    assert pre.shape == (3, 3, side, side)
    # grey replicated to 3 channels before per-channel normalisation
    got = d.preprocess(torch.full((1, 1, 8, 8), 255, dtype=torch.uint8))[0, :, 0, 0]
    want = (
        (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
        if recipe == "nemo"
        else torch.ones(3)
    )
    torch.testing.assert_close(got, want)


def test_sscd_missing_weights_names_path_and_source(tmp_path) -> None:
    missing = tmp_path / "nowhere" / "sscd_disc_mixup.torchscript.pt"
    with pytest.raises(FileNotFoundError) as err:
        SSCDDescriptor(missing)
    assert str(missing) in str(err.value)
    assert "facebookresearch/sscd-copy-detection" in str(err.value)
    with pytest.raises(FileNotFoundError):
        build_descriptor("sscd", {"weights": str(missing)})


def test_build_descriptor_pixel_and_unknown() -> None:
    d = build_descriptor("pixel", {"kind": "pixel", "size": 8})
    assert isinstance(d, PixelDescriptor) and d.dim == 64
    with pytest.raises(ValueError, match="unknown descriptor kind"):
        build_descriptor("x", {"kind": "clip"})


def test_losses_handle_planted_duplicates() -> None:
    from mnemo.copydetect.descriptors import info_nce, koleo

    e = torch.eye(8)
    # views 0..3 and their twins 4..7; images 0 and 1 are byte-identical, so all four match
    z = torch.stack([e[0], e[0], e[2], e[3], e[0], e[0], e[2], e[3]]).requires_grad_(True)
    groups = torch.tensor([0, 0, 1, 2, 0, 0, 1, 2])
    loss, acc = info_nce(z, 0.1, groups)
    reg = koleo(z, groups)
    (loss + reg).backward()
    assert torch.isfinite(loss) and torch.isfinite(reg) and torch.isfinite(z.grad).all()
    assert acc == 1.0  # the identical image is not counted as a competing negative
    images = torch.cat([smooth_blobs(6, seed=8)] * 2)
    cfg = {**TINY, "steps": 2, "warmup_steps": 1, "progress": False}
    _, hist = train_copydetect(images, cfg, seed=0)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in hist)
