"""Training at real sizes, unit by unit on tiny models: gradient checkpointing changes memory, not
the result; a latent model trains on cached latents and refuses latents of other images; a VAE
trains, resumes to the same weights, and its latents round-trip; the config names bad VAE keys."""

from __future__ import annotations

import pytest
import torch

from mnemo.config import ConfigError, _check_trained_variants
from mnemo.diffusion.model import DiffusionModel, ModelConfig
from mnemo.diffusion.train import TrainConfig, train
from mnemo.diffusion.vae import (
    VAETrainConfig,
    encode_latents,
    load_latents,
    save_latents,
    train_vae,
)
from tests.conftest import TINY_MODEL, TINY_PROMPTS

VAE = {"steps": 4, "batch_size": 4, "checkpoint_every": 2, "log_every": 2,
       "model": {"block_out_channels": [8, 16], "latent_channels": 4, "norm_num_groups": 4}}


def _train(images, tmp_path, model_config=TINY_MODEL, **overrides):
    model = DiffusionModel.from_config(ModelConfig.from_dict(model_config), TINY_PROMPTS, seed=0)
    config = TrainConfig(steps=3, batch_size=4, warmup_steps=1, checkpoint_every=3, **overrides)
    result = train(model, images, TINY_PROMPTS * (len(images) // 4), config, tmp_path, progress=False,
                   log=lambda *_: None)
    return model, result


def test_gradient_checkpointing_gives_the_same_weights(tmp_path, tiny_images):
    plain, _ = _train(tiny_images, tmp_path / "a")
    checkpointed, _ = _train(tiny_images, tmp_path / "b", gradient_checkpointing=True)
    assert not checkpointed.unet.is_gradient_checkpointing  # switched off again for inference
    for (name, a), (_, b) in zip(plain.unet.state_dict().items(), checkpointed.unet.state_dict().items(),
                                 strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_a_frozen_text_encoder_is_left_unchanged(tmp_path, tiny_images):
    before = DiffusionModel.from_config(ModelConfig.from_dict(TINY_MODEL), TINY_PROMPTS, seed=0)
    tuned, _ = _train(tiny_images, tmp_path, train_text_encoder=False)
    for a, b in zip(before.text_encoder.parameters(), tuned.text_encoder.parameters(), strict=True):
        assert torch.equal(a, b)


def test_vae_trains_resumes_and_its_latents_train_a_unet(tmp_path, tiny_images):
    config = VAETrainConfig.from_dict(VAE)
    straight, _ = train_vae(tiny_images, config, tmp_path / "a", run_fingerprint="x", progress=False,
                            log=lambda *_: None)

    class Killed(Exception):
        pass

    def kill_at_2(step):
        if step == 2:
            raise Killed

    with pytest.raises(Killed):
        train_vae(tiny_images, config, tmp_path / "b", run_fingerprint="x", progress=False, log=lambda *_: None,
                  on_checkpoint=kill_at_2)
    resumed, history = train_vae(tiny_images, config, tmp_path / "b", run_fingerprint="x", progress=False,
                                 log=lambda *_: None)
    assert len(history) == 4
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    latents = encode_latents(straight, tiny_images, progress=False)
    assert latents.shape == (8, 4, 8, 8)
    assert latents.std().item() == pytest.approx(1.0, rel=0.05)  # the scaling factor was calibrated
    hashes = [f"h{i}" for i in range(len(latents))]
    save_latents(tmp_path / "latents.safetensors", latents, hashes)
    loaded, _ = load_latents(tmp_path / "latents.safetensors", hashes)
    assert torch.equal(loaded, latents)
    with pytest.raises(ValueError, match="other images"):
        load_latents(tmp_path / "latents.safetensors", hashes[::-1])
    latent_unet = {**TINY_MODEL, "unet": {**TINY_MODEL["unet"], "resolution": 8, "channels": 4}}
    model, result = _train(loaded, tmp_path / "unet", latent_unet)
    assert model.sample_shape == (4, 8, 8) and len(result.history) == 3


@pytest.mark.parametrize(("variants", "vaes", "key"), [
    ({"v": {"vae": "missing", "guidance": [1]}}, {}, "variants.v.vae"),
    ({"v": {"guidance": [1]}}, {"both": {"pretrained": "/x", "train": {}}}, "vaes.both"),
    ({"v": {"guidance": [1]}}, {"gone": {"pretrained": "/no/such/folder"}}, "vaes.gone.pretrained"),
])
def test_bad_vae_settings_name_their_key(variants, vaes, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        _check_trained_variants({"dataset": {"source": "phantoms"}, "variants": variants, "vaes": vaes})
