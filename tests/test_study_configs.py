"""The demo-model study's candidate overlays (config/study, docs/demo-model-study.md): each one,
and all together, is a valid config over config.yaml, and each candidate is what it says it is."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mnemo.cli import check_config
from mnemo.diffusion.model import ModelConfig, build_noise_scheduler, build_unet
from mnemo.nemo.blocking import neuron_count, value_layers

ROOT = Path(__file__).resolve().parents[1]
OVERLAYS = sorted((ROOT / "config" / "study").glob("*.yaml"))


def test_there_are_study_overlays():
    assert {p.stem for p in OVERLAYS} >= {"unet_sd_shaped", "schedule_sd", "text_encoder_frozen", "seeds_b"}


@pytest.mark.parametrize("files", [[p] for p in OVERLAYS] + [OVERLAYS], ids=lambda f: "+".join(p.stem for p in f))
def test_each_overlay_and_all_together_are_valid(files):
    check_config(files, ROOT)


def test_the_sd_shaped_unet_has_7_value_layers_and_over_1000_searched_neurons():
    config, _ = check_config([ROOT / "config/study/unet_sd_shaped.yaml"], ROOT)
    model = ModelConfig.from_dict(config["model"])
    unet = build_unet(model.unet, model.text_encoder.hidden_size)
    layers = value_layers(unet, config["localize"]["blocks"])
    assert [layer.name.split(".")[0] for layer in layers] == ["down_blocks"] * 6 + ["mid_block"]
    assert neuron_count(layers) == 2 * (96 + 160 + 192) + 192 >= 1000


def test_the_sd_schedule_overlay_gives_stable_diffusions_timesteps():
    config, _ = check_config([ROOT / "config/study/schedule_sd.yaml"], ROOT)
    from diffusers import DDIMScheduler

    scheduler = build_noise_scheduler(ModelConfig.from_dict(config["model"]).scheduler)
    assert float(scheduler.betas[0]) == pytest.approx(0.00085) and float(scheduler.betas[-1]) == pytest.approx(0.012)
    ddim = DDIMScheduler.from_config(scheduler.config)
    ddim.set_timesteps(50)
    assert ddim.timesteps[:2].tolist() == [981, 961] and ddim.timesteps[-1] == 1  # SD v1.4's 50 steps


def test_the_second_seed_set_changes_every_seed_and_keeps_localization_apart():
    base, _ = check_config([], ROOT)
    other, _ = check_config([ROOT / "config/study/seeds_b.yaml"], ROOT)
    for section in ("phantoms", "train", "prompts", "generate", "localize"):
        assert other[section]["seed"] != base[section]["seed"], section
    assert other["localize"]["seed"] != other["generate"]["seed"]


def test_the_one_variant_overlay_runs_cfg_alone_with_the_mitigations_the_regime_table_reads():
    config, _ = check_config([ROOT / "config/study/one_variant.yaml"], ROOT)
    assert list(config["variants"]) == ["cfg"]
    assert {"none", "nemo", "random"} <= set(config["variants"]["cfg"]["mitigations"])
    assert config["report"]["guidance"] in config["variants"]["cfg"]["guidance"]


def test_the_heldout_overlay_holds_out_as_many_patients_as_it_trains_on():
    config, _ = check_config([ROOT / "config/study/heldout_large.yaml"], ROOT)
    assert config["phantoms"]["valid_patients"] == config["phantoms"]["patients"]


def test_the_paper_signal_overlay_searches_as_the_paper_does():
    config, _ = check_config([ROOT / "config/study/one_variant.yaml", ROOT / "config/study/paper_signal.yaml"], ROOT)
    paper = yaml.safe_load((ROOT / "config/sd14.yaml").read_text())["localize"]   # the paper's settings
    for key in ("signal", "signal_step", "score", "theta", "theta_step", "theta_min", "k_max", "on_no_pass", "samples"):
        assert config["localize"][key] == paper[key], key
    assert not config["localize"]["sample_check"]["enabled"]
    assert "nemo_checked" not in config["variants"]["cfg"]["mitigations"]


def test_the_xray_signal_overlay_differs_from_the_paper_signal_overlay_in_the_signal_alone():
    def localize(*names):
        config, _ = check_config([ROOT / f"config/study/{n}.yaml" for n in ("one_variant", *names)], ROOT)
        return config

    xray, paper, demo = localize("xray_signal"), localize("paper_signal"), localize()
    for key in ("signal", "signal_step", "score"):
        assert xray["localize"][key] == demo["localize"][key] != paper["localize"][key], key
    assert {k: v for k, v in xray["localize"].items() if k not in ("signal", "signal_step", "score")} == {
        k: v for k, v in paper["localize"].items() if k not in ("signal", "signal_step", "score")
    }
    assert xray["variants"] == paper["variants"]


@pytest.mark.parametrize("unet", [[], ["unet_sd_shaped"]], ids=["demo_unet", "sd_shaped_unet"])
def test_the_latent_overlay_makes_every_variant_denoise_32px_latents_of_64px_images(unet):
    from mnemo.config import _vae_downsampling

    files = [ROOT / "config/study/latent_small_vae.yaml", *(ROOT / f"config/study/{n}.yaml" for n in unet)]
    config, _ = check_config(files, ROOT)
    for name, variant in config["variants"].items():
        vae = config["vaes"][variant["vae"]]
        assert config["dataset"]["resolution"] // _vae_downsampling(vae) == 32, name


def test_the_localize_planted_overlay_searches_the_planted_prompts_alone():
    config, _ = check_config([ROOT / "config/study/localize_planted.yaml"], ROOT)
    assert config["localize"]["prompts"] == "memorized"


def test_the_up_blocks_overlay_searches_every_value_layer_of_the_sd_shaped_unet():
    files = [ROOT / "config/study/unet_sd_shaped.yaml", ROOT / "config/study/search_up_blocks.yaml"]
    config, _ = check_config(files, ROOT)
    model = ModelConfig.from_dict(config["model"])
    unet = build_unet(model.unet, model.text_encoder.hidden_size)
    searched = value_layers(unet, config["localize"]["blocks"])
    assert {layer.name for layer in searched} == {name for name, _ in unet.named_modules() if name.endswith("attn2.to_v")}
    assert neuron_count(searched) == 2432   # 1,088 down + mid and 1,344 up


def test_the_short_vae_overlay_shortens_the_latent_candidates_vae_training_alone():
    latent = ROOT / "config/study/latent_small_vae.yaml"
    long, _ = check_config([latent], ROOT)
    short, _ = check_config([latent, ROOT / "config/study/vae_short.yaml"], ROOT)
    assert short["vaes"]["study_vae"]["train"].pop("steps") == 500
    assert long["vaes"]["study_vae"]["train"].pop("steps") == 2000
    assert short == long


def test_the_pretrained_text_encoder_overlay_trains_cfg_against_the_donors_encoder(tmp_path):
    """Planned, not run: cfg's training reads the donor's pipeline, so the donor trains first."""
    from tests.workflow import planned_jobs, snakemake

    overlay = ROOT / "config/study/text_encoder_pretrained.yaml"
    config, _ = check_config([ROOT / "config/study/one_variant.yaml", overlay], ROOT)
    assert config["variants"]["cfg"]["text_encoder"] == "donor" and set(config["variants"]) == {"cfg", "donor"}
    jobs = planned_jobs(snakemake(tmp_path, "-n", "--forceall",
                                  configfiles=(ROOT / "config" / "test.yaml", overlay)).stdout)
    trains = [job for job in jobs if job["rule"] == "train"]
    assert len(trains) == 2
    inputs = [p for job in trains for p in job["input"]]
    assert any(p.endswith("models/donor/pipeline") for p in inputs)
    assert not any(p.endswith("models/cfg/pipeline") for p in inputs)
