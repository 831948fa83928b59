"""The paper's constants and numerics can be reproduced: pinned tau, published activation
statistics, the layer order the search walks, no x_0 clipping for latent models."""

from __future__ import annotations

import pyarrow as pa
import pytest
import torch

from mnemo.detect.config import DetectConfig
from mnemo.detect.detector import detect_prompts
from mnemo.diffusion.sample import ddim_scheduler
from mnemo.nemo.blocking import value_layers
from mnemo.nemo.published import (
    compare_with_published,
    published_table,
    read_official,
    write_official,
)
from mnemo.nemo.selection import load_reference_stats, reference_statistics, selection_schedule
from tests.conftest import TINY_PROMPTS


def test_value_layers_come_in_forward_order_down_mid_up(tiny_model):
    names = [layer.name.split("_", 1)[0] for layer in value_layers(tiny_model.unet, ("up", "down", "mid"))]
    assert names == sorted(names, key=["down", "mid", "up"].index)
    assert names[0] == "down" and names[-1] == "up" and "mid" in names
    layers = value_layers(tiny_model.unet, ("down", "mid", "up"))
    assert [layer.offset for layer in layers] == [sum(x.width for x in layers[:i]) for i in range(len(layers))]


def test_the_official_schedule_ends_before_theta_one():
    schedule = selection_schedule(5.0, 0.25, 1.0, 0, 1280)
    assert schedule[0] == (5.0, 0) and schedule[-1] == (1.25, 15) and len(schedule) == 16
    assert selection_schedule(5.0, 0.25, 1.0, 0, 4)[-1] == (4.25, 3)   # k_max ends it first


def test_latent_models_never_clip_the_predicted_sample(tiny_model):
    assert ddim_scheduler(tiny_model, 5).config.clip_sample is True   # pixel model: its own setting
    tiny_model.vae = object()
    try:
        assert ddim_scheduler(tiny_model, 5).config.clip_sample is False
    finally:
        tiny_model.vae = None


def _prompt_table(reference: list[bool]) -> pa.Table:
    n = len(reference)
    return pa.table({"prompt_id": [f"p{i}" for i in range(n)], "prompt": TINY_PROMPTS[:n],
                     "group": ["other"] * n, "memorized_truth": [False] * n, "reference": reference})


def test_a_pinned_tau_is_used_and_the_computed_one_kept_beside_it(tiny_model):
    config = DetectConfig(steps=3, generations=2, wen_n=(1,), nemo_samples=3, token_significance=False,
                          nemo_steps=10, nemo_timestep=1)
    computed = detect_prompts(tiny_model, _prompt_table([True, True, False]), config, progress=False)
    assert not computed["threshold"]["pinned"] and computed["threshold"]["tau"] == computed["threshold"]["computed_tau"]
    config.nemo_tau = 2.0   # above any MS-SSIM: nothing flagged
    pinned = detect_prompts(tiny_model, _prompt_table([True, True, False]), config, progress=False)
    assert pinned["threshold"]["tau"] == 2.0 and pinned["threshold"]["pinned"]
    assert pinned["threshold"]["computed_tau"] == pytest.approx(computed["threshold"]["tau"])
    assert not any(pinned["scores"].column("nemo_flagged").to_pylist())
    # with tau pinned, no reference prompts are needed
    assert detect_prompts(tiny_model, _prompt_table([False, False]), config, progress=False)["threshold"]["tau"] == 2.0
    config.nemo_tau = None
    with pytest.raises(ValueError, match="detect.nemo_tau"):
        detect_prompts(tiny_model, _prompt_table([False, False]), config, progress=False)


def test_published_statistics_load_in_layer_order_and_wrong_shapes_name_the_key(tiny_model, tmp_path):
    layers = value_layers(tiny_model.unet, ("down", "mid"))
    computed = reference_statistics(tiny_model, layers, TINY_PROMPTS)
    means = [computed.mean[layer.offset:layer.offset + layer.width].float() for layer in layers]
    stds = [computed.std[layer.offset:layer.offset + layer.width].float() for layer in layers]
    path = tmp_path / "statistics.pt"
    torch.save((means, stds), path)
    loaded = load_reference_stats(str(path), layers)
    torch.testing.assert_close(loaded.mean, computed.mean.float().double())
    torch.testing.assert_close(loaded.std, computed.std.float().double())
    torch.save((means[:-1], stds[:-1]), path)
    with pytest.raises(ValueError, match="localize.reference_stats"):
        load_reference_stats(str(path), layers)
    path.write_text("not a tensor file")
    with pytest.raises(ValueError, match="localize.reference_stats"):
        load_reference_stats(str(path), layers)


def test_the_official_neuron_file_round_trips_and_compares_by_caption(tmp_path):
    widths = [4, 4, 8]
    rows = [{"prompt_id": "a", "memorized": True, "initial_neurons": [0, 5, 9, 15], "initial_score": 0.3,
             "refined_neurons": [5, 9], "refined_score": 0.35},
            {"prompt_id": "b", "memorized": False, "initial_neurons": [], "initial_score": float("nan"),
             "refined_neurons": [], "refined_score": float("nan")}]
    captions = {"a": 'The "Great Wave"; a print', "b": "an ordinary prompt"}
    path = tmp_path / "ours.csv"
    write_official(path, rows, captions, widths)
    read = read_official(path)
    assert read[captions["a"]] == {"initial": [[0], [1], [1, 7]], "refined": [[], [1], [1]]}
    assert read[captions["b"]]["refined"] == [[], [], []]
    published = {captions["a"]: {"initial": [], "refined": [[], [1], [2, 3]]}}
    (compared,) = compare_with_published(rows, captions, published, widths)
    assert (compared["ours"], compared["published"], compared["common"]) == (2, 3, 1)
    assert compared["jaccard"] == pytest.approx(1 / 4)
    assert published_table([compared]).num_rows == 1 and published_table([]).num_rows == 0
    bad = tmp_path / "bad.csv"
    bad.write_text("Caption;Initial Neurons;Refined Neurons\nx;[[1];[]\n")
    with pytest.raises(ValueError, match="line 2"):
        read_official(bad)
    bad.write_text("Caption;URL\nx;y\n")
    with pytest.raises(ValueError, match="missing column"):
        read_official(bad)
