"""Config validation: a wrong key or value stops the run naming the key."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from mnemo.config import ConfigError, validate

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "config.schema.yaml"


@pytest.fixture
def config():
    return yaml.safe_load((ROOT / "config.yaml").read_text())


def test_default_config_is_valid_and_defaults_fill_in(config):
    del config["prompts"]
    validated = validate(config, SCHEMA)
    assert {key: validated["prompts"][key] for key in ("other", "heldout", "seed")} == {
        "other": 16, "heldout": 8, "seed": 0}
    assert validated["prompts"]["originals"] is None
    assert validated["resources"]["gpu"] == 0


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda c: c.update(unknown_top=1), "unknown_top"),
        (lambda c: c["train"].update(stepz=3), "train.stepz"),
        (lambda c: c["train"].update(steps=-5), "train.steps"),
        (lambda c: c["train"].update(steps="many"), "train.steps"),
        (lambda c: c["generate"].update(steps=0), "generate.steps"),
        (lambda c: c["variants"]["cfg"].update(guidance=[]), "variants.cfg.guidance"),
        (lambda c: c["dataset"].update(uncertainty="maybe"), "dataset.uncertainty"),
        (lambda c: c["dataset"].update(resolution=30), "dataset.resolution"),
        (lambda c: (c["model"]["unet"].update(resolution=32), c["dataset"].update(resolution=64)),
         "dataset.resolution"),  # set in both places, the two must agree
        (lambda c: c["model"]["unet"].update(norm_num_groups=7), "model.unet.norm_num_groups"),
        (lambda c: c["variants"]["cfg"].update(mitigations=["none", "nope"]), "variants.cfg.mitigations"),
        (lambda c: c["descriptors"].update(sscd={"kind": "sscd", "weights": "/missing/sscd.pt"}),
         "descriptors.sscd.weights"),
        (lambda c: c["dataset"].update(source="chexpert", csv="/missing/train.csv", image_root="/tmp"),
         "dataset.csv"),
        (lambda c: c["match"].update(primary="sscd"), "match.primary"),
        (lambda c: c["localize"].update(signal="attention"), "localize.signal"),
        (lambda c: c["localize"].update(score="cosine"), "localize.score"),
        (lambda c: c["localize"].update(signal_step=25), "localize.signal_step"),  # detect.steps is 25
        (lambda c: c["localize"].update(seed=c["generate"]["seed"]), "localize.seed"),  # evaluation's seeds
        (lambda c: c["localize"].update(on_no_pass="widest"), "localize.on_no_pass"),
        (lambda c: c["detect"].update(nemo_timestep=50), "detect.nemo_timestep"),  # nemo_steps is 50
        (lambda c: c["detect"].update(nemo_tau="high"), "detect.nemo_tau"),
        (lambda c: c["localize"].update(reference_stats="/missing/stats.pt"), "localize.reference_stats"),
        (lambda c: c["report"].update(grid_detector="wen_first_n2"), "report.grid_detector"),  # wen_n [1, 4]
    ],
)
def test_bad_values_name_the_key(config, edit, key):
    bad = copy.deepcopy(config)
    edit(bad)
    with pytest.raises(ConfigError) as info:
        validate(bad, SCHEMA)
    assert key in str(info.value), str(info.value)


def test_detector_names_follow_wen_n(config):
    config["detect"].update(wen_n=[1, 2, 3], generations=3)
    config["report"].update(grid_detector="wen_all_n3")
    validate(config, SCHEMA)
    config["report"].update(grid_detector="wen_first_n4")
    with pytest.raises(ConfigError, match="report.grid_detector"):
        validate(config, SCHEMA)


def test_mitigation_kinds_of_schema_and_library_agree(config):
    from mnemo.mitigate.kinds import MITIGATION_KINDS, NEURON_MITIGATIONS

    schema = yaml.safe_load(SCHEMA.read_text())
    branches = schema["properties"]["mitigations"]["additionalProperties"]["oneOf"]
    assert tuple(b["properties"]["kind"]["const"] for b in branches) == MITIGATION_KINDS
    assert set(NEURON_MITIGATIONS) < set(MITIGATION_KINDS)
    # a kind the schema would accept but the library does not implement stops the run too
    schema["properties"]["mitigations"]["additionalProperties"]["oneOf"].append(
        {"properties": {"kind": {"const": "novel"}}, "additionalProperties": False})
    config["mitigations"]["novel"] = {"kind": "novel"}
    with pytest.raises(ConfigError, match="mitigations.novel.kind"):
        validate(config, schema)


def test_latent_and_fine_tuned_resolutions_are_checked_before_any_job(config, tmp_path):
    """dataset.resolution / the VAE's downsampling must be what the variant's UNet denoises."""
    from tests import tiny_sd

    extra = tiny_sd.latent_variants_config(tmp_path)  # tiny SD pipeline: 16x16 latents, VAE x2 -> 32 px
    config.update(vaes=extra["vaes"], variants=extra["variants"])
    config["dataset"]["resolution"] = 32
    validate(copy.deepcopy(config), SCHEMA)
    fine_tuned_at_64 = copy.deepcopy(config)
    fine_tuned_at_64["dataset"]["resolution"] = 64
    with pytest.raises(ConfigError, match=r"'dataset.resolution': 64, but variant 'finetuned'.*trains at 32 px"):
        validate(fine_tuned_at_64, SCHEMA)
    latent_only = copy.deepcopy(config)
    del latent_only["variants"]["finetuned"]
    latent_only["dataset"]["resolution"] = 36  # 18x18 latents; the 3-level UNet needs a multiple of 4
    with pytest.raises(ConfigError, match=r"'dataset.resolution': 36 px under VAE 'tiny_vae'.*'latent'"):
        validate(latent_only, SCHEMA)


def test_a_given_text_encoder_is_checked_before_any_job(config, tmp_path):
    """variants.<name>.text_encoder: another variant (run too) or a pipeline folder with text_encoder/ and
    tokenizer/, not beside pretrained."""
    (tmp_path / "pipe" / "text_encoder").mkdir(parents=True)
    (tmp_path / "pipe" / "text_encoder" / "config.json").write_text("{}")
    (tmp_path / "pipe" / "tokenizer").mkdir()
    config["variants"]["cfg"]["text_encoder"] = str(tmp_path / "pipe")
    validate(copy.deepcopy(config), SCHEMA)
    missing = copy.deepcopy(config)
    missing["variants"]["cfg"]["text_encoder"] = str(tmp_path / "nothing")
    with pytest.raises(ConfigError, match=r"'variants.cfg.text_encoder': .*nothing is neither a variant nor a folder"):
        validate(missing, SCHEMA)
    from_variant = copy.deepcopy(config)
    from_variant["variants"]["cfg"]["text_encoder"] = "nocfg"
    validate(copy.deepcopy(from_variant), SCHEMA)
    from_variant["run_variants"] = ["cfg"]
    with pytest.raises(ConfigError, match=r"'run_variants': variant 'cfg' takes the text encoder of 'nocfg'"):
        validate(copy.deepcopy(from_variant), SCHEMA)
    from_variant["variants"]["cfg"]["text_encoder"] = "cfg"
    with pytest.raises(ConfigError, match=r"'variants.cfg.text_encoder': 'cfg' must be another variant"):
        validate(from_variant, SCHEMA)
    both = copy.deepcopy(config)
    both["variants"]["cfg"]["pretrained"] = str(tmp_path / "pipe")
    with pytest.raises(ConfigError, match=r"'variants.cfg.text_encoder': .*pretrained or text_encoder, not both"):
        validate(both, SCHEMA)


def test_text_column_must_be_in_the_csv_header(config, tmp_path):
    from tests import radiograph_files as rf

    csv_path = rf.chexpert_csv(tmp_path / "train.csv", ["train/patient00001/study1/view1_frontal.jpg"],
                               texts=["small left effusion"])
    config["dataset"].update(source="chexpert", csv=str(csv_path), image_root=str(tmp_path), text_column="Report")
    validate(copy.deepcopy(config), SCHEMA)
    config["dataset"]["text_column"] = "Impression"
    with pytest.raises(ConfigError, match=r"'dataset.text_column'.*no column 'Impression'.*Report"):
        validate(copy.deepcopy(config), SCHEMA)
    config["dataset"].update(source="phantoms", text_column="Report")
    with pytest.raises(ConfigError, match=r"'dataset.text_column': only a chexpert CSV"):
        validate(config, SCHEMA)


def test_heldout_csv_must_be_another_existing_chexpert_csv(config, tmp_path):
    from tests import radiograph_files as rf

    train_csv = rf.chexpert_csv(tmp_path / "train.csv", ["train/patient00001/study1/view1_frontal.jpg"])
    valid_csv = rf.chexpert_csv(tmp_path / "valid.csv", ["valid/patient64541/study1/view1_frontal.jpg"])
    config["dataset"].update(source="chexpert", csv=str(train_csv), image_root=str(tmp_path),
                             heldout_csv=str(valid_csv))
    validate(copy.deepcopy(config), SCHEMA)
    for heldout, message in ((tmp_path / "missing.csv", "does not exist"), (train_csv, "the training CSV itself")):
        config["dataset"]["heldout_csv"] = str(heldout)
        with pytest.raises(ConfigError, match=rf"'dataset.heldout_csv'.*{message}"):
            validate(copy.deepcopy(config), SCHEMA)
    config["dataset"].update(source="phantoms", heldout_csv=str(valid_csv))
    with pytest.raises(ConfigError, match=r"'dataset.heldout_csv': only for dataset.source chexpert"):
        validate(config, SCHEMA)


def test_a_filter_takes_a_threshold_or_a_percentile(config):
    config["variants"]["filtered"]["train"]["filter"] = {"threshold": 2.0, "percentile": 95}
    with pytest.raises(ConfigError, match=r"'variants.filtered.train.filter'.*not both"):
        validate(config, SCHEMA)


def test_run_variants_keeps_the_named_variants_and_names_an_unknown_one(config):
    config["run_variants"] = ["cfg"]
    assert list(validate(copy.deepcopy(config), SCHEMA)["variants"]) == ["cfg"]
    config["run_variants"] = ["cfg", "nocgf"]
    with pytest.raises(ConfigError, match=r"'run_variants': 'nocgf' not defined under 'variants'"):
        validate(config, SCHEMA)
