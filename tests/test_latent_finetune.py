"""Latent and fine-tuned variants end to end on tiny random components: a UNet trained in the
latent space of a VAE the workflow trains, and a tiny SD-shaped pipeline fine-tuned on the X-ray
cache, each go train -> generate -> detect -> localize; a killed latent training resumes.

One workflow run (its own small config over config/test.yaml: these two variants only are asked
for, one descriptor, no sample check) is shared by the tests below."""

from __future__ import annotations

import json
import os
import re
import shutil

import pyarrow.parquet as pq
import pytest

from mnemo.diffusion.model import DiffusionModel
from tests import tiny_sd
from tests.workflow import REPO, snakemake, write_config

TEST_CONFIG = REPO / "config" / "test.yaml"
VARIANTS = ("latent", "finetuned")


def _targets(variant):
    return [f"results/samples/{variant}/none.parquet", f"results/detect/{variant}/scores.parquet",
            f"results/localize/{variant}/neurons.parquet"]


@pytest.fixture(scope="session")
def latent_runs(tmp_path_factory):
    """The latent variant's training killed after its step-3 checkpoint, then both variants run
    to localization (a few minutes on 2 cores)."""
    root = tmp_path_factory.mktemp("latent")
    configfile = write_config(root / "latent.yaml", tiny_sd.latent_variants_config(root))
    work = root / "work"
    work.mkdir()
    configs = (TEST_CONFIG, configfile)
    killed = snakemake(work, "--cores", "2", "results/models/latent/pipeline", configfiles=configs, check=False,
                       env=dict(os.environ, MNEMO_FAULT="train:3"))
    snakemake(work, "--cores", "2", *[t for v in VARIANTS for t in _targets(v)], configfiles=configs)
    return work, killed, configs


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_goes_train_generate_detect_localize(latent_runs, variant):
    work, *_ = latent_runs
    results = work / "results"
    model = DiffusionModel.from_pretrained(results / "models" / variant / "pipeline")
    assert model.vae is not None and model.sample_shape == (4, 16, 16)
    samples = pq.read_table(results / "samples" / variant / "none.parquet")
    assert samples.num_rows > 0
    from mnemo.data.images import decode_png

    assert decode_png(samples.column("image")[0].as_py()).shape == (1, 32, 32)  # grey, at the cache's size
    assert pq.read_table(results / "detect" / variant / "scores.parquet").num_rows > 0
    assert (results / "localize" / variant / "neurons.parquet").is_file()


@pytest.mark.slow
def test_latents_are_encoded_once_per_vae_and_the_vae_is_trained_in_its_own_job(latent_runs):
    work, *_ = latent_runs
    results = work / "results"
    assert (results / "vaes" / "tiny_vae" / "model" / "config.json").is_file()
    assert sorted(p.parent.name for p in (results / "latents").glob("*/train_32px.safetensors")) == [
        "pipeline-finetuned", "tiny_vae"]
    scaling = json.loads((results / "vaes" / "tiny_vae" / "model" / "config.json").read_text())["scaling_factor"]
    assert scaling != 0.18215  # calibrated on the cache's latents, not diffusers' default


@pytest.mark.slow
@pytest.mark.reliability
def test_killed_latent_training_resumes_from_its_checkpoint(latent_runs):
    work, killed, _ = latent_runs
    assert killed.returncode != 0, "the injected kill did not stop the run"
    log = (work / "results" / "logs" / "train" / "latent.log").read_text()
    assert "resumed from checkpoint" in log and "at step 3" in log


@pytest.mark.slow
def test_finetuning_keeps_the_pipelines_tokenizer_and_frozen_text_encoder(latent_runs, tmp_path):
    work, *_ = latent_runs
    tuned = DiffusionModel.from_pretrained(work / "results" / "models" / "finetuned" / "pipeline")
    pipeline = next(work.parent.glob("sd"))
    base = DiffusionModel.from_pretrained(pipeline)
    assert tuned.tokenizer.get_vocab() == base.tokenizer.get_vocab()
    for (name, a), (_, b) in zip(tuned.text_encoder.state_dict().items(), base.text_encoder.state_dict().items(),
                                 strict=True):
        assert a.equal(b), name
    assert any(not a.equal(b) for a, b in zip(tuned.unet.state_dict().values(), base.unet.state_dict().values(),
                                                strict=True))
    summary = json.loads((work / "results" / "models" / "finetuned" / "train_summary.json").read_text())
    assert summary["filter_threshold"] is not None and summary["filtered_fraction_mean"] > 0


@pytest.mark.slow
def test_a_train_job_given_two_gpus_trains_in_two_torchrun_processes(latent_runs, tmp_path):
    """The train rule's gpu resource above 1 starts torchrun (here 2 CPU processes on gloo)."""
    work, _, configs = latent_runs
    copy = tmp_path / "work"
    shutil.copytree(work, copy, symlinks=True)
    for done in ("checkpoints/latent", "models/latent/pipeline"):  # this model alone is trained again
        shutil.rmtree(copy / "results" / done)
    snakemake(copy, "--cores", "2", "results/models/latent/pipeline", "--allowed-rules", "train",
              "--resources", "gpu=2", "--set-resources", "train:gpu=2", configfiles=configs)
    log = (copy / "results" / "logs" / "train" / "latent.log").read_text()
    ranks = dict(re.findall(r"rank (\d): 6 steps, weights ([0-9a-f]{16})", log))
    assert set(ranks) == {"0", "1"} and ranks["0"] == ranks["1"], log[-3000:]
