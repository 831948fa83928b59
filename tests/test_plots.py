"""Every figure of the report: each plotting function writes a PNG of the expected size whose
content is not blank; the image grids put each image where they say (sample, its nearest
training image, the guidance users sample with)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from mnemo.data.images import encode_png
from mnemo.report import plots

DPI = 110  # plots._save


def _png(value: int, size: int = 8) -> bytes:
    return encode_png(np.full((1, size, size), value, dtype=np.uint8))


def _read(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _check(path, width: int, height: int) -> np.ndarray:
    pixels = _read(path)
    assert pixels.shape[:2] == (height, width)
    assert pixels.std() > 5, "blank figure"
    return pixels


PROMPTS = ["planted-000", "planted-001", "other-000", "other-001", "other-002", "heldout-000"]
GROUPS = {pid: pid.split("-")[0] for pid in PROMPTS}


def _scores():
    rng = np.random.default_rng(0)
    truth = [GROUPS[pid] == "planted" for pid in PROMPTS]
    columns = {"prompt_id": PROMPTS, "group": [GROUPS[p] for p in PROMPTS], "memorized_truth": truth}
    for i, detector in enumerate(("wen_first_n1", "wen_first_n4", "nemo_max_ssim")):
        columns[detector] = [float(t) * (1 + i) + rng.normal(0, 0.5) for t in truth]
    return pa.table(columns)


def _replication():
    own = {"planted-000": 0.9, "planted-001": 0.8, "other-000": 0.3, "other-001": 0.7, "other-002": 0.2}
    return {pid: {"max_similarity": own.get(pid, 0.4), "max_source_similarity": own.get(pid),
                  "replicated": own.get(pid, 0.4) > 0.6, "replicated_own": own.get(pid, 0.0) > 0.6}
            for pid in PROMPTS}


def _samples(guidance=(1.0, 3.0, 7.5), seeds=3):
    """Sample (prompt p, seed s, guidance g) is grey level 10 + 30 p + 5 s at guidance 3, 250 else."""
    rows = []
    for p, pid in enumerate(PROMPTS):
        for g in guidance:
            for s in range(seeds):
                rows.append({"sample_id": f"{pid}/g{g:g}/{s}", "prompt_id": pid, "guidance": g, "sample_index": s,
                             "image": _png(10 + 30 * p + 5 * s if g == 3.0 else 250)})
    return pa.Table.from_pylist(rows)


def _matches(samples):
    """Each sample's nearest training image: train-<prompt index>, similarity 0.9 for planted prompts."""
    rows = [{"sample_id": r["sample_id"], "nn_image_id": f"train-{PROMPTS.index(r['prompt_id'])}",
             "nn_similarity": 0.9 if r["prompt_id"].startswith("planted") else 0.3}
            for r in samples.select(["sample_id", "prompt_id"]).to_pylist()]
    return pa.Table.from_pylist(rows)


TRAINING = {f"train-{p}": _png(200 - 20 * p) for p in range(len(PROMPTS))}


def test_loss_curve(tmp_path):
    history = [{"step": s, "loss": 1.0 / (s + 1), "filtered_fraction": 0.1 * (s % 3)} for s in range(100)]
    plots.plot_loss_curve(history, tmp_path / "loss.png")
    _check(tmp_path / "loss.png", 6 * DPI, round(3.5 * DPI))


def test_neuron_histograms(tmp_path):
    layers = ["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v",
              "mid_block.attentions.0.transformer_blocks.0.attn2.to_v",
              "up_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v"]
    localized = [{"memorized": True, "refined_layers": [layers[0], layers[2]], "refined_count": 2, "initial_count": 5},
                 {"memorized": True, "refined_layers": [layers[1]], "refined_count": 1, "initial_count": 3},
                 {"memorized": False, "refined_layers": [], "refined_count": 0, "initial_count": 0}]
    plots.plot_neurons_per_layer(localized, layers, tmp_path / "layers.png")
    _check(tmp_path / "layers.png", 6 * DPI, round(3.5 * DPI))
    plots.plot_neuron_counts(localized, tmp_path / "counts.png")
    _check(tmp_path / "counts.png", 6 * DPI, round(3.5 * DPI))
    plots.plot_neuron_counts(localized[2:], tmp_path / "none.png")  # no prompt flagged: says so
    _check(tmp_path / "none.png", 6 * DPI, round(3.5 * DPI))


def test_detection_roc_has_a_panel_per_truth(tmp_path):
    scores = _scores()
    detectors = ["wen_first_n1", "wen_first_n4", "nemo_max_ssim"]
    plots.plot_detection_roc(scores, _replication(), detectors, tmp_path / "roc.png", title="cfg")
    _check(tmp_path / "roc.png", 3 * 5 * DPI, round(4.2 * DPI))  # planted, replicated, replicated_own
    plots.plot_detection_roc(scores, {}, detectors, tmp_path / "planted.png", title="sd")
    _check(tmp_path / "planted.png", 5 * DPI, round(4.2 * DPI))


def test_score_vs_similarity(tmp_path):
    plots.plot_score_vs_similarity(_scores(), _replication(), "wen_first_n1", 0.6, tmp_path / "scatter.png")
    _check(tmp_path / "scatter.png", 6 * DPI, round(4.2 * DPI))
    plots.plot_score_vs_similarity(_scores(), {}, "wen_first_n1", None, tmp_path / "unmeasured.png")
    _check(tmp_path / "unmeasured.png", 6 * DPI, round(4.2 * DPI))


@pytest.mark.parametrize("wanted, shown", [(3.0, 3.0), (2.0, 1.0), (2.5, 3.0), (100.0, 7.5)])
def test_nearest_guidance(wanted, shown):
    assert plots.nearest_guidance([7.5, 1.0, 3.0, 3.0], wanted) == shown


def test_top_bottom_grid_shows_guidance_3(tmp_path):
    samples = _samples()
    cache = pa.table({"image_id": list(TRAINING), "image": list(TRAINING.values())})
    path = tmp_path / "grid.png"
    plots.top_bottom_grid(_scores(), samples, _matches(samples), cache, "wen_first_n4", 2, path, per_prompt=2)
    cell, title = 56, 150  # top_bottom_grid's layout: 4 prompts (top 2, bottom 2), 2 x (sample, nearest)
    pixels = _check(path, title + 4 * (cell + 2), 4 * (cell + 2 + 12))
    first = pixels[cell // 2, title + cell // 2]
    assert first[0] != 250 and (first[0] - 10) % 5 == 0, "a guidance-3 sample comes first"


def test_contact_sheet_is_prompts_by_seeds_with_nearest_training_images(tmp_path):
    samples = _samples()
    path = tmp_path / "sheet.png"
    cell = 48
    width, height = plots.sample_sheet(samples, path, _matches(samples), TRAINING, threshold=0.6, groups=GROUPS,
                                       guidance=3.0, max_prompts=4, max_seeds=2, cell=cell, title="cfg / none")
    pixels = _check(path, width, height)
    top, row_h, label, pad, gap = 40, cell + 16, 120, 2, 8  # plots.image_grid's layout
    assert height == top + 4 * row_h  # 4 of 6 prompts, in turn from each group
    assert width >= label + 2 * 2 * (cell + pad) + gap
    chosen = ["planted-000", "other-000", "heldout-000", "planted-001"]  # in prompt order below
    for row, pid in enumerate(sorted(chosen, key=PROMPTS.index)):
        p = PROMPTS.index(pid)
        y = top + row * row_h + cell // 2
        for seed in range(2):
            x = label + seed * (2 * (cell + pad) + gap)
            assert pixels[y, x + cell // 2, 0] == 10 + 30 * p + 5 * seed, (pid, seed)  # the guidance-3 sample
            assert pixels[y, x + cell + pad + cell // 2, 0] == 200 - 20 * p  # then its nearest training image
        frame = pixels[top + row * row_h - 1, label + cell + pad + cell // 2]  # above the nearest image
        assert (tuple(frame) == (200, 0, 0)) == pid.startswith("planted"), pid  # red above the threshold


def test_contact_sheet_without_training_images_shows_samples(tmp_path):
    path = tmp_path / "sheet.png"
    cell = 32
    width, height = plots.sample_sheet(_samples(guidance=(7.5,)), path, guidance=3.0, max_seeds=3, cell=cell)
    pixels = _check(path, width, height)
    assert height == 40 + len(PROMPTS) * (cell + 16)
    # only 7.5 was sampled: shown; the samples side by side, no gaps for nearest images
    assert pixels[40 + cell // 2, 120 + 2 * (cell + 2) + cell // 2, 0] == 250


def test_data_preview(tmp_path):
    prompts = pa.Table.from_pylist([
        {"prompt_id": pid, "group": GROUPS[pid], "memorized_truth": pid.startswith("planted"),
         "source_image_ids": [f"train-{p}", "missing"]} for p, pid in enumerate(PROMPTS)])
    ids = [f"img-{i}" for i in range(20)] + list(TRAINING)
    listed, others = plots.preview_image_ids(prompts, ids, per_row=4, others=6)
    assert [ids for _, ids in listed] == [["train-0"], ["train-1"]]
    assert len(others) == 6 and not {"train-0", "train-1"} & set(others)
    images = {**{f"img-{i}": _png(5 * i) for i in range(20)}, **TRAINING}
    path = tmp_path / "preview.png"
    width, height = plots.data_preview(prompts, ids, images, path, {"images_cached": 26, "patients": 4},
                                       per_row=4, others=6)
    pixels = _check(path, width, height)
    assert height == 2 * 12 + 4 + 4 * (48 + 16)  # 2 planted rows, 6 others in 2 rows of 4
    assert pixels[28 + 24, 120 + 24, 0] == 200  # planted-000's training image
