"""Label fidelity classifier and Fréchet distance: tiny synthetic data, CPU, seconds."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
import torch

from mnemo.copydetect.descriptors import CopyDetectNet
from mnemo.data import chexpert
from mnemo.data.prompts import prompt_text
from mnemo.evaluate.fidelity import (
    ATTRIBUTES,
    ClassifierTrainConfig,
    FeatureExtractor,
    LabelClassifier,
    evaluate_classifier,
    evaluate_probabilities,
    fit_from_cache,
    frechet_distance,
    frechet_distance_images,
    label_fidelity_table,
    masked_bce,
    per_prompt_accuracy,
    targets_from_cache,
    targets_from_prompts,
    train_classifier,
)

FAST = {"channels": (4, 8), "input_size": 16, "batch_size": 16, "progress": False}


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny convs run fastest on one thread, and far faster than two on a shared, busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _bright_dark(n: int = 48, size: int = 16, seed: int = 0):
    """Images whose brightness alone decides attribute 0; everything else unknown."""
    gen = torch.Generator().manual_seed(seed)
    label = torch.arange(n) % 2
    base = torch.where(label.bool(), 170.0, 70.0)[:, None, None, None]
    noise = 25.0 * torch.randn(n, 1, size, size, generator=gen)
    images = (base + noise).clamp(0, 255).to(torch.uint8)
    targets = torch.zeros(n, len(ATTRIBUTES))
    targets[:, 0] = label.float()
    known = torch.zeros(n, len(ATTRIBUTES), dtype=torch.bool)
    known[:, 0] = True
    return images, targets, known


def test_attributes_order():
    assert len(ATTRIBUTES) == 16
    assert ATTRIBUTES[:14] == chexpert.LABEL_COLUMNS
    assert ATTRIBUTES[14:] == ("frontal", "male")


def test_prompt_round_trip():
    rng = np.random.default_rng(0)
    views = [("Frontal", "PA"), ("Frontal", "AP"), ("Lateral", None)]
    for _ in range(200):
        view, proj = views[rng.integers(3)]
        sex = ["Female", "Male"][rng.integers(2)]
        values = rng.choice([1.0, 0.0, -1.0, math.nan], size=len(chexpert.OBSERVATIONS))
        labels = dict(zip(chexpert.OBSERVATIONS, values, strict=True))
        text = prompt_text(view, proj, sex, int(rng.integers(18, 91)), labels, "ones")
        targets, known = targets_from_prompts([text], strict=True)
        expected = [
            float(chexpert.apply_uncertainty(labels[o], "ones") == 1.0)
            for o in chexpert.OBSERVATIONS
        ] + [float(view == "Frontal"), float(sex == "Male")]
        assert targets[0].tolist() == expected, text
        assert bool(known.all()), text


def test_prompt_partial_and_empty():
    targets, known = targets_from_prompts(
        ["frontal PA unknown-sex 60s pleural effusion", "", "a photo of a cat"]
    )
    col = {a: i for i, a in enumerate(ATTRIBUTES)}
    assert targets[0, col["pleural_effusion"]] == 1 and targets[0, col["pleural_other"]] == 0
    assert known[0, :14].all() and known[0, col["frontal"]] and not known[0, col["male"]]
    assert not known[1].any() and not known[2].any()
    with pytest.raises(ValueError, match="cat"):
        targets_from_prompts(["frontal PA female 60s cat"], strict=True)


def test_targets_from_cache():
    columns = {c: pa.array([1.0, 0.0, None], pa.float32()) for c in chexpert.LABEL_COLUMNS}
    columns["view"] = pa.array(["frontal", "lateral", "frontal"])
    columns["sex"] = pa.array(["Male", "Female", "Unknown"])
    targets, known = targets_from_cache(pa.table(columns))
    assert targets.dtype == torch.float32 and known.dtype == torch.bool
    assert targets[:, :14].tolist() == [[1.0] * 14, [0.0] * 14, [0.0] * 14]
    assert known[:2].all() and not known[2, :14].any()
    assert targets[:, 14].tolist() == [1, 0, 1] and targets[:, 15].tolist() == [1, 0, 0]
    assert known[2, 14] and not known[2, 15]
    targets, known = targets_from_cache(pa.table(columns), blank_as_negative=True)
    assert known[:, :14].all() and targets[2, :14].tolist() == [0.0] * 14


def test_fit_from_cache_holds_out_patients():
    from mnemo.data.images import encode_png

    n = 24
    images, targets, _ = _bright_dark(n)
    columns = {c: pa.array([None] * n, pa.float32()) for c in chexpert.LABEL_COLUMNS}
    columns["no_finding"] = pa.array(targets[:, 0].tolist(), pa.float32())
    columns["view"] = pa.array(["frontal"] * n)
    columns["sex"] = pa.array(["Female", "Male"] * (n // 2))
    columns["patient_id"] = pa.array([f"pat-{i // 2}" for i in range(n)])
    columns["image"] = pa.array([encode_png(im[0].numpy()) for im in images], pa.binary())
    model, history, metrics = fit_from_cache(
        pa.table(columns), {**FAST, "steps": 3}, holdout_fraction=0.25, holdout_seed=0
    )
    assert len(history) == 3 and metrics["n_images"] == 6 and metrics["n_train_images"] == 18
    assert model.training_metadata["holdout"]["n_images"] == 6
    assert metrics["n_known"]["no_finding"] == 6 and metrics["n_known"]["fracture"] == 6


def test_masked_loss_ignores_unknown():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 16, generator=gen, requires_grad=True)
    targets = (torch.rand(6, 16, generator=gen) > 0.5).float()
    known = torch.rand(6, 16, generator=gen) > 0.4
    loss = masked_bce(logits, targets, known)
    flipped = torch.where(known, targets, 1 - targets)
    nan_targets = torch.where(known, targets, torch.full_like(targets, math.nan))
    assert torch.allclose(loss, masked_bce(logits, flipped, known))
    assert torch.allclose(loss, masked_bce(logits, nan_targets, known))
    loss.backward()
    assert bool((logits.grad[~known] == 0).all()) and bool((logits.grad[known] != 0).any())
    assert float(masked_bce(logits.detach(), targets, torch.zeros_like(known))) == 0.0


def test_classifier_learns_separable_attribute_and_is_deterministic():
    images, targets, known = _bright_dark()
    cfg = {**FAST, "steps": 40, "lr": 5e-3, "seed": 3}
    model, history = train_classifier(images, targets, known, cfg)
    assert len(history) == 40 and history[-1]["loss"] < history[0]["loss"]
    test_images, test_targets, test_known = _bright_dark(seed=1)
    result = evaluate_classifier(model, test_images, test_targets, test_known)
    assert result["auc"]["no_finding"] > 0.9
    assert result["n_auc"] == 1 and result["mean_auc"] == result["auc"]["no_finding"]
    again, _ = train_classifier(images, targets, known, ClassifierTrainConfig(**cfg))
    for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_evaluate_nan_for_single_class():
    n = 10
    probs = torch.linspace(0, 1, n)[:, None].expand(n, 16).contiguous()
    targets = torch.zeros(n, 16)
    targets[5:, 0] = 1  # attribute 0: both classes; attribute 1: only negatives
    targets[:, 2] = 1  # attribute 2: only positives
    known = torch.zeros(n, 16, dtype=torch.bool)
    known[:, :3] = True
    known[:5, 3] = True
    targets[:5, 3] = torch.tensor([0, 1, 0, 1, 0.0])
    targets[5:, 3] = 1  # unknown rows of attribute 3 must not count
    out = evaluate_probabilities(probs, targets, known)
    assert out["auc"]["no_finding"] == pytest.approx(1.0)
    assert math.isnan(out["auc"]["enlarged_cardiomediastinum"])
    assert math.isnan(out["auc"]["cardiomegaly"])
    assert out["n_known"]["lung_opacity"] == 5 and out["n_positive"]["lung_opacity"] == 2
    assert math.isnan(out["auc"]["male"]) and out["n_known"]["male"] == 0
    assert out["n_auc"] == 2 and out["n_auc_findings"] == 2
    assert out["mean_auc_findings"] == out["mean_auc"]
    assert out["mean_auc"] == pytest.approx((1.0 + out["auc"]["lung_opacity"]) / 2)


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = LabelClassifier(channels=(4, 8), input_size=16).eval()
    model.training_metadata = {"seed": 0}
    images = torch.randint(0, 256, (3, 1, 24, 24), dtype=torch.uint8)
    model.save_pretrained(tmp_path / "clf")
    loaded = LabelClassifier.from_pretrained(tmp_path / "clf")
    assert loaded.attributes == list(ATTRIBUTES) and loaded.training_metadata == {"seed": 0}
    with torch.no_grad():
        assert torch.equal(model(images), loaded(images))
        rgb = images.expand(-1, 3, -1, -1)
        assert torch.allclose(loaded(rgb), loaded(images), atol=1e-6)  # grey = mean of channels
    with pytest.raises(FileNotFoundError):
        LabelClassifier.from_pretrained(tmp_path / "missing")


def test_fidelity_tables():
    torch.manual_seed(0)
    model = LabelClassifier(channels=(4, 8), input_size=16).eval()
    prompts = {"p0": "frontal PA female 60s cardiomegaly", "p1": "lateral male 40s no finding"}
    ids = ["p0", "p0", "p1", "p1", "p1"]
    images = torch.randint(0, 256, (5, 1, 16, 16), dtype=torch.uint8)
    table = label_fidelity_table(model, images, ids, prompts)
    assert table.column("attribute").to_pylist() == list(ATTRIBUTES)
    assert table.column("n_known").to_pylist()[:14] == [5] * 14
    auc = dict(zip(table.column("attribute").to_pylist(), table.column("auc").to_pylist(), strict=True))
    assert not math.isnan(auc["cardiomegaly"]) and math.isnan(auc["fracture"])
    assert int(table.schema.metadata[b"mnemo.n_auc"]) == 4  # no_finding, cardiomegaly, view, sex
    per = per_prompt_accuracy(model, images, ids, [prompts[i] for i in ids])
    assert per.column("prompt_id").to_pylist() == ["p0", "p1"]
    assert per.column("n_samples").to_pylist() == [2, 3]
    assert per.column("n_known").to_pylist() == [32, 48]
    assert all(0.0 <= a <= 1.0 for a in per.column("accuracy").to_pylist())


def test_frechet_distance_features():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(400, 8, generator=gen)
    b = torch.randn(400, 8, generator=gen)
    assert abs(frechet_distance(a, a)) < 1e-6
    small, large = frechet_distance(a, b + 0.5), frechet_distance(a, b + 2.0)
    assert 0 < frechet_distance(a, b) < small < large
    assert small == pytest.approx(8 * 0.25, abs=0.5) and large == pytest.approx(8 * 4.0, abs=1.5)
    assert frechet_distance(a.numpy(), (2 * b).numpy()) > 4  # covariance differences count too


def test_frechet_distance_images_custom_extractor():
    torch.manual_seed(0)
    net = CopyDetectNet(channels=(4, 8), dim=8, input_size=16).eval()
    extractor = FeatureExtractor(net)
    assert extractor.num_features == 8 and extractor.feature_space.startswith("copydetect-trunk-8")
    gen = torch.Generator().manual_seed(1)
    real = torch.randint(0, 128, (24, 1, 16, 16), generator=gen, dtype=torch.uint8)
    fake = torch.randint(100, 256, (20, 1, 16, 16), generator=gen, dtype=torch.uint8)
    result = frechet_distance_images(net, real, fake, batch_size=7)
    assert (result.n_real, result.n_fake) == (24, 20) and float(result) > 0
    direct = frechet_distance(extractor(real), extractor(fake))
    assert result.distance == pytest.approx(direct, rel=1e-3)
    same = frechet_distance_images(extractor, real, real)
    assert abs(same.distance) < 1e-2 * result.distance
