"""Model construction/save/load, training resume, CFG and seeded generation on a tiny model."""

from __future__ import annotations

import pytest
import torch

from mnemo.diffusion.model import DiffusionModel, ModelConfig
from mnemo.diffusion.sample import (
    denoise,
    generate,
    initial_noise,
    plan_requests,
    predict_noise,
    sample_seed,
)
from mnemo.diffusion.train import TrainConfig, filter_mask, train
from tests.conftest import TINY_MODEL, TINY_PROMPTS


def _fresh():
    return DiffusionModel.from_config(ModelConfig.from_dict(TINY_MODEL), TINY_PROMPTS, seed=0)


def test_save_load_round_trip(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "m")
    loaded = DiffusionModel.from_pretrained(tmp_path / "m")
    x = initial_noise([1, 2], tiny_model.sample_shape)
    with torch.no_grad():
        a = tiny_model.unet(x, 10, encoder_hidden_states=tiny_model.encode_prompts(TINY_PROMPTS[:2])).sample
        b = loaded.unet(x, 10, encoder_hidden_states=loaded.encode_prompts(TINY_PROMPTS[:2])).sample
    assert torch.equal(a, b)
    assert torch.equal(tiny_model.token_ids(TINY_PROMPTS), loaded.token_ids(TINY_PROMPTS))
    assert (tmp_path / "m" / "model_index.json").is_file()


def test_tokenizer_covers_schema_words(tiny_model):
    ids = tiny_model.token_ids(["frontal PA female 90s fracture lung lesion"])[0]
    assert tiny_model.tokenizer.unk_token_id not in ids.tolist()
    empty = tiny_model.token_ids([""])[0].tolist()
    assert empty[:2] == [tiny_model.tokenizer.bos_token_id, tiny_model.tokenizer.eos_token_id]


def test_unknown_resolution_multiple_is_rejected():
    bad = dict(TINY_MODEL, unet=dict(TINY_MODEL["unet"], resolution=15))
    with pytest.raises(ValueError, match="resolution"):
        ModelConfig.from_dict(bad)


def _train(steps, ckpt, images, on_checkpoint=None, **overrides):
    model = _fresh()
    config = TrainConfig(steps=steps, batch_size=4, checkpoint_every=2, log_every=100, warmup_steps=1, **overrides)
    result = train(model, images, TINY_PROMPTS * 2, config, ckpt, run_fingerprint="x",
                   on_checkpoint=on_checkpoint, progress=False, log=lambda *_: None)
    return model, result


class _Killed(Exception):
    pass


def test_resume_after_kill_gives_identical_weights(tmp_path, tiny_images):
    straight, _ = _train(6, tmp_path / "a", tiny_images)

    def kill_at_4(step):
        if step == 4:
            raise _Killed  # the process dies right after the step-4 checkpoint is on disk

    with pytest.raises(_Killed):
        _train(6, tmp_path / "b", tiny_images, on_checkpoint=kill_at_4)
    resumed, result = _train(6, tmp_path / "b", tiny_images)
    assert result.resumed_from_step == 4
    for (name, a), (_, b) in zip(straight.unet.state_dict().items(), resumed.unet.state_dict().items(),
                                 strict=True):
        assert torch.equal(a, b), name
    for a, b in zip(straight.text_encoder.parameters(), resumed.text_encoder.parameters(), strict=True):
        assert torch.equal(a, b)
    assert [r["loss"] for r in result.history] == [r["loss"] for r in _train(6, tmp_path / "c", tiny_images)[1].history]


def test_checkpoint_of_other_recipe_is_not_resumed(tmp_path, tiny_images):
    _train(4, tmp_path / "a", tiny_images)
    model = _fresh()
    config = TrainConfig(steps=4, batch_size=4, checkpoint_every=2, warmup_steps=1)
    result = train(model, tiny_images, TINY_PROMPTS * 2, config, tmp_path / "a", run_fingerprint="other",
                   progress=False, log=lambda *_: None)
    assert result.resumed_from_step == 0


def test_training_reduces_loss(tiny_images):
    import tempfile

    with tempfile.TemporaryDirectory() as ckpt:
        _, result = _train(40, ckpt, tiny_images[:2], learning_rate=3e-3)
    first = sum(r["loss"] for r in result.history[:8]) / 8
    last = sum(r["loss"] for r in result.history[-8:]) / 8
    assert last < first


def test_filter_drops_exactly_samples_at_or_above_threshold():
    magnitude = torch.tensor([0.5, 2.0, 1.0, 3.0])
    assert filter_mask(magnitude, 2.0).tolist() == [True, False, True, False]


def test_fully_filtered_batch_makes_no_update(tmp_path, tiny_images):
    """After warm-up the threshold is the lowest magnitude seen, so batches get fully filtered;
    the weights after such a step equal those before it."""
    config = TrainConfig.from_dict({"steps": 8, "batch_size": 4, "checkpoint_every": 1, "warmup_steps": 0,
                                    "condition_dropout": 0.0, "filter": {"warmup_steps": 2, "percentile": 1e-6}})
    model = _fresh()
    seen = {}

    def record(step):
        seen[step] = [p.detach().clone() for p in model.unet.parameters()]

    result = train(model, tiny_images, TINY_PROMPTS * 2, config, tmp_path, on_checkpoint=record,
                   progress=False, log=lambda *_: None)
    assert result.filter_threshold is not None
    fully_filtered = [r["step"] for r in result.history if r["filtered_fraction"] == 1.0]
    assert fully_filtered, "expected at least one fully filtered batch"
    for step in fully_filtered:
        assert all(torch.equal(a, b) for a, b in zip(seen[step - 1], seen[step], strict=True))
    updated = [r["step"] for r in result.history if r["filtered_fraction"] < 1.0 and r["step"] > 1]
    for step in updated:  # and a step that kept samples did move the weights
        assert not all(torch.equal(a, b) for a, b in zip(seen[step - 1], seen[step], strict=True))


def test_filter_calibrates_on_conditioned_unique_images_only(tmp_path, tiny_images):
    """Condition-dropped samples (magnitude 0) and duplicated images never set the threshold: with
    75% of samples on the empty prompt, the median over every sample would be 0."""
    config = TrainConfig.from_dict({"steps": 5, "batch_size": 8, "checkpoint_every": 10, "warmup_steps": 0,
                                    "condition_dropout": 0.75, "seed": 3,
                                    "filter": {"warmup_steps": 3, "percentile": 50}})
    duplicated = torch.tensor([True, False] * (len(tiny_images) // 2))
    result = train(_fresh(), tiny_images, TINY_PROMPTS * 2, config, tmp_path, progress=False,
                   log=lambda *_: None, duplicated=duplicated)
    assert result.filter_threshold > 0
    counts = result.filter_counts
    assert counts["duplicated_dropped"] <= counts["duplicated_seen"] and counts["unique_dropped"] <= counts["unique_seen"]
    dropped = round(sum(r["filtered_fraction"] for r in result.history[3:]) * 8)
    conditioned = counts["duplicated_seen"] + counts["unique_seen"]  # after the warm-up: 2 steps of 8
    assert dropped == counts["duplicated_dropped"] + counts["unique_dropped"] <= conditioned < 2 * 8
    everything_duplicated = torch.ones(len(tiny_images), dtype=torch.bool)
    with pytest.raises(ValueError, match="no unique conditioned sample"):
        train(_fresh(), tiny_images, TINY_PROMPTS * 2, config, tmp_path / "all", progress=False,
              log=lambda *_: None, duplicated=everything_duplicated)


def test_fixed_filter_threshold_applies_from_the_first_step(tmp_path, tiny_images):
    """Wen et al.'s code: a fixed cut, no warm-up; a tiny one drops every conditioned sample."""
    config = TrainConfig.from_dict({"steps": 3, "batch_size": 4, "checkpoint_every": 10, "warmup_steps": 0,
                                    "condition_dropout": 0.0, "filter": {"threshold": 1e-9}})
    result = train(_fresh(), tiny_images, TINY_PROMPTS * 2, config, tmp_path, progress=False, log=lambda *_: None)
    assert result.filter_threshold == 1e-9
    assert [r["filtered_fraction"] for r in result.history] == [1.0, 1.0, 1.0]
    assert result.filter_counts["unique_dropped"] == result.filter_counts["unique_seen"] == 12
    with pytest.raises(ValueError, match="not both"):
        TrainConfig.from_dict({"filter": {"threshold": 2.0, "percentile": 90}})


def test_cfg_scale_one_equals_conditional_prediction(tiny_model):
    x = initial_noise([3, 4], tiny_model.sample_shape)
    cond = tiny_model.encode_prompts(TINY_PROMPTS[:2])
    uncond = tiny_model.encode_prompts(["", ""])
    with torch.no_grad():
        eps_u, eps_c = predict_noise(tiny_model, x, torch.tensor(50), cond, uncond)
        guided = eps_u + 1.0 * (eps_c - eps_u)
        _, direct = predict_noise(tiny_model, x, torch.tensor(50), cond, None)
    torch.testing.assert_close(guided, direct, rtol=1e-5, atol=1e-6)
    a = denoise(tiny_model, x, cond, 1.0, 5)
    b = denoise(tiny_model, x, cond, 1.0, 5, uncond)  # guidance 1 ignores the unconditional branch
    torch.testing.assert_close(a, b)


def test_generation_reproducible_per_seed(tiny_model):
    requests = plan_requests(["p0", "p1"], TINY_PROMPTS[:2], 3, [1.0, 2.0])
    images, _ = generate(tiny_model, requests, steps=4, batch_size=5, progress=False)
    again, _ = generate(tiny_model, requests, steps=4, batch_size=5, progress=False)
    assert torch.equal(images, again)
    # any one sample regenerated alone matches its batched twin
    position = 7
    alone, _ = generate(tiny_model, [requests[position]], steps=4, batch_size=1, progress=False)
    assert (alone[0].int() - images[position].int()).abs().max() <= 1
    # seeds depend on prompt and index, not on guidance: the twins share noise
    assert requests[0].seed == requests[6].seed == sample_seed("p0", 0)
    assert len({r.seed for r in requests}) == 6


def test_stable_diffusion_schedule_is_a_config_value():
    """model.scheduler can be SD v1.4's: scaled_linear 0.00085-0.012, leading spacing, steps_offset 1;
    its 50-step DDIM timesteps then start 981, 961 (NeMo reads the second)."""
    from types import SimpleNamespace

    from mnemo.diffusion.model import SchedulerConfig, build_noise_scheduler
    from mnemo.diffusion.sample import ddim_scheduler

    sd = SchedulerConfig(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                         timestep_spacing="leading", steps_offset=1)
    noise_scheduler = build_noise_scheduler(sd)
    expected_betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float32) ** 2
    assert torch.allclose(noise_scheduler.betas, expected_betas)
    ddim = ddim_scheduler(SimpleNamespace(scheduler=noise_scheduler, vae=None, device="cpu"), 50)
    assert ddim.timesteps[:2].tolist() == [981, 961] and ddim.timesteps[-1].item() == 1


def test_unet_trains_against_a_given_frozen_text_encoder(tmp_path, tiny_images):
    """`variants.<name>.text_encoder`: SD's setup, a new UNet trained against a pipeline's text
    encoder, which stays as it was; the saved pipeline carries that encoder and its tokenizer."""
    from mnemo.diffusion.training_job import TrainingJob, run_training_job
    from tests.test_distributed_training import write_tiny_cache

    wide = dict(TINY_MODEL, text_encoder=dict(TINY_MODEL["text_encoder"], hidden_size=24))
    given = DiffusionModel.from_config(ModelConfig.from_dict(wide), TINY_PROMPTS, seed=3)
    given.save_pretrained(tmp_path / "given")
    before = {k: v.clone() for k, v in given.text_encoder.state_dict().items()}
    job = TrainingJob(
        cache=str(write_tiny_cache(tmp_path / "cache", tiny_images, TINY_PROMPTS)),
        model_dir=str(tmp_path / "pipeline"), history=str(tmp_path / "log.csv"),
        summary=str(tmp_path / "summary.json"), checkpoint_dir=str(tmp_path / "checkpoints"),
        model=TINY_MODEL, train={"steps": 2, "batch_size": 4, "warmup_steps": 1, "checkpoint_every": 2},
        text_encoder=str(tmp_path / "given"),
    )
    logged: list[str] = []
    run_training_job(job, log=logged.append)
    trained = DiffusionModel.from_pretrained(tmp_path / "pipeline")
    assert trained.unet.config.cross_attention_dim == 24  # the given encoder's width, not model.text_encoder's 16
    after = trained.text_encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(trained.token_ids(TINY_PROMPTS), given.token_ids(TINY_PROMPTS))
    initial = DiffusionModel.from_config(ModelConfig.from_dict(TINY_MODEL), TINY_PROMPTS, seed=0,
                                         text_encoder_from=tmp_path / "given").unet.state_dict()
    assert any(not torch.equal(initial[k], v) for k, v in trained.unet.state_dict().items())  # the UNet learned
    # another encoder in the same folder (a donor retrained in place) is another recipe: no resume
    DiffusionModel.from_config(ModelConfig.from_dict(wide), TINY_PROMPTS, seed=4).save_pretrained(tmp_path / "given")
    run_training_job(job, log=logged.append)
    fingerprints = [line.rsplit(" ", 1)[-1] for line in logged if "fingerprint" in line]
    assert len(fingerprints) == 2 and fingerprints[0] != fingerprints[1]
