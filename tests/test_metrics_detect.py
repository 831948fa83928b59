"""Detector and metric definitions on hand-computable cases and a tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from mnemo.detect import metrics
from mnemo.detect.detector import DetectConfig
from mnemo.detect.nemo import nemo_detection
from mnemo.detect.wen import summarize_wen, token_significance, wen_magnitudes
from mnemo.nemo.signal import (
    memorization_threshold,
    normalize_maps,
    pairwise_ms_ssim,
    per_sample_max,
    ssim_kernel_size,
)
from tests.conftest import TINY_PROMPTS


def test_auc_of_perfect_and_reversed_separator():
    assert metrics.roc_auc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert metrics.roc_auc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert math.isnan(metrics.roc_auc([0.1, 0.2], [1, 1]))


def test_tpr_at_fpr_counts_only_allowed_false_positives():
    # 100 negatives at 0..0.99, positives at 0.985 (above 98 negatives) and 0.5
    negatives = [i / 100 for i in range(100)]
    scores = negatives + [0.985, 0.5]
    labels = [0] * 100 + [1, 1]
    assert metrics.tpr_at_fpr(scores, labels, 0.01) == 0.5  # one FP (0.99) allowed: 0.985 caught
    assert metrics.tpr_at_fpr(scores, labels, 0.0) == 0.0


def test_threshold_at_fpr():
    negatives = [i / 100 for i in range(100)]
    threshold = metrics.threshold_at_fpr(negatives + [1.0], [0] * 100 + [1], 0.01)
    fp = sum(n >= threshold for n in negatives)
    assert fp <= 1 and threshold <= 0.99


def test_spearman_and_median_mad():
    assert metrics.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert metrics.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert metrics.median_mad([1, 2, 3, 4, 100]) == (3.0, 1.0)


def test_duplicate_maps_score_one_and_threshold_is_mean_plus_std():
    maps = torch.rand(2, 3, 1, 32, 32)
    maps[0, 1] = maps[0, 0]  # a duplicated noise difference
    pairwise, pairs = pairwise_ms_ssim(normalize_maps(maps), ssim_kernel_size(32, (0.33,) * 3), (0.33,) * 3)
    assert pairwise.shape == (2, 3)
    assert pairwise[0, 0] == pytest.approx(1.0, abs=1e-5)
    best = per_sample_max(pairwise, pairs, 3)
    assert best[0, 0] == pytest.approx(1.0, abs=1e-5) and best[0, 1] == pytest.approx(1.0, abs=1e-5)
    values = torch.tensor([0.1, 0.2, 0.3])
    assert memorization_threshold(values) == pytest.approx(0.2 + 0.1)


def test_kernel_size_auto_and_explicit():
    assert ssim_kernel_size(64, (0.33,) * 3) == 11
    assert ssim_kernel_size(32, (0.33,) * 3) == 7
    assert ssim_kernel_size(16, (0.33,) * 3) == 3
    with pytest.raises(ValueError, match="detect.kernel_size"):
        ssim_kernel_size(32, (0.33,) * 3, 11)


def test_normalize_maps_range():
    x = torch.randn(2, 4, 3, 8, 8) * 5
    y = normalize_maps(x)
    assert torch.allclose(y.flatten(-2).min(-1).values, torch.zeros(2, 4, 3))
    assert torch.allclose(y.flatten(-2).max(-1).values, torch.ones(2, 4, 3))


def test_wen_magnitude_matches_direct_computation(tiny_model):
    from mnemo.diffusion.sample import ddim_scheduler, initial_noise, sample_seed

    config = DetectConfig(guidance=3.0, steps=3, generations=2, wen_n=(1, 2), batch_size=3)
    magnitudes = wen_magnitudes(tiny_model, ["a", "b"], TINY_PROMPTS[:2], config, progress=False)
    assert magnitudes.shape == (2, 2, 3)
    x = initial_noise([sample_seed("b", 1)], tiny_model.sample_shape)
    t1 = ddim_scheduler(tiny_model, 3).timesteps[0]
    with torch.no_grad():
        cond = tiny_model.unet(x, t1, encoder_hidden_states=tiny_model.encode_prompts([TINY_PROMPTS[1]])).sample
        uncond = tiny_model.unet(x, t1, encoder_hidden_states=tiny_model.encode_prompts([""])).sample
    assert magnitudes[1, 1, 0] == pytest.approx(float((cond - uncond).norm()), rel=1e-4)
    summary = summarize_wen(magnitudes, (1, 2))
    assert summary["wen_first_n1"][1] == magnitudes[1, 0, 0]
    assert summary["wen_all_n2"][0] == pytest.approx(float(magnitudes[0].mean()))


def test_nemo_detection_and_token_significance_run(tiny_model, monkeypatch):
    import pyarrow as pa

    import mnemo.detect.nemo
    from mnemo.detect.detector import detect_prompts

    config = DetectConfig(steps=3, nemo_samples=4, generations=2, wen_n=(1, 2))
    result = nemo_detection(tiny_model, ["a", "b"], TINY_PROMPTS[:2], config)
    assert result.pairwise.shape == (2, 6) and result.sample_max.shape == (2, 4)
    assert result.kernel_size == 3
    assert torch.isfinite(result.pairwise).all() and (result.pairwise <= 1 + 1e-5).all()
    pairs = torch.combinations(torch.arange(4), r=2)
    for sample in range(4):  # each sample's max is the max over the pairs it is in
        mine = (pairs == sample).any(dim=1)
        assert torch.equal(result.sample_max[:, sample], result.pairwise[:, mine].max(dim=1).values)

    maps = normalize_maps(torch.randn(1, 3, 1, 16, 16, generator=torch.Generator().manual_seed(0)))
    maps[0, 1] = maps[0, 0]  # samples 0 and 1 identical: pair 0 scores 1
    forward, _ = pairwise_ms_ssim(maps, 3, config.betas)
    backward, _ = pairwise_ms_ssim(maps.flip(1), 3, config.betas)  # pairs (2,1), (2,0), (1,0)
    assert forward[0, 0] == pytest.approx(1.0, abs=1e-5) and forward[0, 1:].max() < 0.99
    assert torch.allclose(forward[0], backward[0].flip(0), atol=1e-6)  # MS-SSIM(a, b) = MS-SSIM(b, a)

    # A prompt whose seeds are all the same has identical noise differences: NeMo flags it
    # against tau from the reference prompts, whose samples differ.
    seeds_per_prompt = mnemo.detect.nemo.seeds_per_prompt
    monkeypatch.setattr(mnemo.detect.nemo, "seeds_per_prompt", lambda ids, n, base: [
        [row[0]] * n if pid == "copy" else row for pid, row in zip(ids, seeds_per_prompt(ids, n, base), strict=True)])
    prompts = pa.table({"prompt_id": ["copy", "r0", "r1", "r2"], "prompt": TINY_PROMPTS,
                        "group": ["planted", "other", "other", "other"],
                        "memorized_truth": [True, False, False, False], "reference": [False, True, True, True]})
    detected = detect_prompts(tiny_model, prompts, DetectConfig(steps=3, nemo_samples=4, generations=2,
                                                                wen_n=(1, 2), token_significance=False), False)
    scores = {r["prompt_id"]: r for r in detected["scores"].to_pylist()}
    assert scores["copy"]["nemo_mean_ssim"] == pytest.approx(1.0, abs=1e-5)
    assert scores["copy"]["nemo_flagged"] and scores["copy"]["nemo_samples_above_tau"] == 4
    assert max(scores[p]["nemo_max_ssim"] for p in ("r0", "r1", "r2")) < 0.99

    short, long = token_significance(tiny_model, ["a", "b"], ["frontal", TINY_PROMPTS[0]], config)
    assert [t for t, _ in short] == ["<bos>", "frontal", "<eos>"]  # the padding has no entry
    assert [t for t, _ in long][1:-1] == TINY_PROMPTS[0].split()
    values = torch.tensor([v for _, v in short + long])
    assert torch.isfinite(values).all() and (values >= 0).all() and (values > 0).any()


def test_detection_is_validated_against_planted_any_and_own_replication():
    import pyarrow as pa

    from mnemo.detect.validation import detection_metrics, replication_by_prompt

    # p0, p1 planted and reproducing their own image; p2 copies *some* training image (not its
    # own); p3 is a held-out prompt with no training image of its own. Two guidance rows each.
    matches = pa.Table.from_pylist([
        {"prompt_id": p, "max_similarity": top, "max_source_similarity": own}
        for p, top, own in [("p0", 0.97, 0.97), ("p0", 0.80, 0.80), ("p1", 0.60, 0.60), ("p1", 0.92, 0.91),
                            ("p2", 0.95, 0.40), ("p2", 0.70, 0.30), ("p3", 0.88, None), ("p3", 0.50, None)]
    ])
    replication = replication_by_prompt(matches, threshold=0.85)
    assert replication["p1"]["max_source_similarity"] == pytest.approx(0.91)
    assert [replication[p]["replicated"] for p in ("p0", "p1", "p2", "p3")] == [True, True, True, True]
    assert [replication[p]["replicated_own"] for p in ("p0", "p1", "p2", "p3")] == [True, True, False, False]
    scores = pa.Table.from_pylist([
        {"prompt_id": p, "memorized_truth": m, "wen_first_n1": s}
        for p, m, s in [("p0", True, 3.0), ("p1", True, 2.0), ("p2", False, 1.0), ("p3", False, 0.5)]
    ])
    rows = {r["truth"]: r for r in detection_metrics(scores, replication, "cfg", ["wen_first_n1"]).to_pylist()}
    assert set(rows) == {"planted", "replicated", "replicated_own"}
    assert rows["planted"]["auc"] == 1.0 and rows["replicated_own"]["auc"] == 1.0
    assert (rows["replicated_own"]["positives"], rows["replicated_own"]["negatives"]) == (2, 2)
    assert math.isnan(rows["replicated"]["auc"])  # every prompt copies something: no negatives
    no_sources = replication_by_prompt(matches.set_column(2, "max_source_similarity",
                                                          pa.array([None] * 8, pa.float64())), 0.85)
    truths = {r["truth"] for r in detection_metrics(scores, no_sources, "cfg", ["wen_first_n1"]).to_pylist()}
    assert truths == {"planted", "replicated"}


def test_validation_reports_every_n_of_wen_n():
    import pyarrow as pa

    from mnemo.detect.names import detector_names, wen_n_of, wen_reference_detector
    from mnemo.detect.validation import detection_metrics, replication_by_prompt

    wen_n = (1, 2, 3)
    magnitudes = torch.rand(6, 3, 5, generator=torch.Generator().manual_seed(0))
    columns = {name: values.tolist() for name, values in summarize_wen(magnitudes, wen_n).items()}
    ids = [f"p{i}" for i in range(6)]
    scores = pa.table({"prompt_id": ids, "memorized_truth": [True, True, False, False, False, True],
                       **columns, "nemo_max_ssim": [0.1 * i for i in range(6)],
                       "nemo_mean_ssim": [0.05 * i for i in range(6)]})
    assert wen_n_of(scores.column_names) == wen_n
    assert set(scores.column_names) - {"prompt_id", "memorized_truth"} == set(detector_names(wen_n))
    assert wen_reference_detector(wen_n) == "wen_first_n1" and wen_reference_detector([4, 2]) == "wen_first_n2"
    matches = pa.Table.from_pylist([{"prompt_id": p, "max_similarity": 0.5 + 0.08 * i, "max_source_similarity": None}
                                    for i, p in enumerate(ids)])
    rows = detection_metrics(scores, replication_by_prompt(matches, 0.8), "cfg").to_pylist()
    assert {r["detector"] for r in rows} == set(detector_names(wen_n))
    assert {(r["n"], r["steps"]) for r in rows if r["detector"].startswith("wen_")} == {
        (n, steps) for n in wen_n for steps in ("first", "all")}
