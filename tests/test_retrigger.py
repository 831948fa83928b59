"""The re-trigger test (mnemo.mitigate.retrigger) on the tiny model: the optimisation moves the
prompt embedding toward the target image, the neurons stay blocked throughout, and the rows match
the schema the workflow writes. Also the other mitigation tables and Wen's reference target, which
the generate and retrigger scripts take from the library."""

from __future__ import annotations

import contextlib

import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F

import mnemo.mitigate.retrigger as retrigger_module
from mnemo.mitigate.neurons import MITIGATION_INFO_SCHEMA, mitigation_info_table
from mnemo.mitigate.retrigger import (
    RETRIGGER_SCHEMA,
    RetriggerConfig,
    optimize_embedding,
    retrigger,
    retrigger_table,
    run_retrigger,
)
from mnemo.mitigate.wen_embedding import reference_magnitude
from mnemo.nemo.blocking import block_neurons, locate, value_layers
from tests.conftest import TINY_PROMPTS

NEURONS = [0, 3, 17]
CONFIG = RetriggerConfig(steps=10, learning_rate=1.0, batch_size=4, samples=2, sampling_steps=2)
FAST = RetriggerConfig(steps=2, learning_rate=1.0, batch_size=2, samples=2, sampling_steps=2)  # structure only


def _diffusion_loss(model, layers, embedding, target, pairs=64):
    """The loss the optimisation minimises, on one fixed set of (noise, timestep) pairs."""
    generator = torch.Generator().manual_seed(123)
    x0 = target[None].expand(pairs, -1, -1, -1)
    noise = torch.randn(x0.shape, generator=generator)
    t = torch.randint(0, model.scheduler.config.num_train_timesteps, (pairs,), generator=generator)
    with torch.no_grad(), block_neurons(layers, NEURONS):
        prediction = model.unet(model.scheduler.add_noise(x0, noise, t), t,
                                encoder_hidden_states=embedding.expand(pairs, -1, -1)).sample
    return float(F.mse_loss(prediction, noise))


def test_the_optimisation_lowers_the_diffusion_loss_toward_the_target(tiny_model, tiny_images):
    layers = value_layers(tiny_model.unet)
    target = tiny_model.encode_images(tiny_images[:1])[0]
    weights = {k: v.clone() for k, v in tiny_model.unet.state_dict().items()}
    with torch.no_grad():
        start = tiny_model.encode_prompts([TINY_PROMPTS[0]])
    embedding, losses = optimize_embedding(tiny_model, layers, NEURONS, TINY_PROMPTS[0], target, CONFIG)
    assert embedding.shape == start.shape and not embedding.requires_grad
    assert len(losses) == CONFIG.steps and all(torch.isfinite(torch.tensor(losses)))
    before, after = (_diffusion_loss(tiny_model, layers, e, target) for e in (start, embedding))
    assert after < 0.95 * before, (before, after)
    assert all(torch.equal(v, weights[k]) for k, v in tiny_model.unet.state_dict().items())  # only the prompt moves


@contextlib.contextmanager
def _watched(calls):
    """block_neurons that also checks, after the blocker's own hooks, that every forward pass of a
    blocked layer outputs zeros in the blocked channels."""

    @contextlib.contextmanager
    def watching(layers, neurons, factor=0.0):
        channels = {}
        for neuron in neurons:
            index, channel = locate(layers, neuron)
            channels.setdefault(index, []).append(channel)

        def check(index):
            def hook(_module, _inputs, output):
                calls.append((index, bool((output[..., channels[index]] == 0).all())))
            return hook

        with block_neurons(layers, neurons, factor):
            handles = [layers[i].module.register_forward_hook(check(i)) for i in channels]
            try:
                yield
            finally:
                for handle in handles:
                    handle.remove()

    yield watching


def test_blocked_neurons_stay_blocked_and_the_result_has_its_structure(tiny_model, tiny_images, monkeypatch):
    layers = value_layers(tiny_model.unet)
    assert NEURONS[0] < layers[0].width  # the first value layer has a blocked neuron
    calls: list[tuple[int, bool]] = []
    passes: list[int] = []  # every forward pass of the first value layer, blocked or not
    handles = [layers[0].module.register_forward_hook(lambda *_: passes.append(1))]
    with _watched(calls) as watching:
        monkeypatch.setattr(retrigger_module, "block_neurons", watching)
        result = retrigger(tiny_model, layers, NEURONS, TINY_PROMPTS[0], tiny_images[0], "key", FAST)
    for handle in handles:
        handle.remove()
    assert set(result) == {"before", "after", "losses", "seconds"}
    for images in (result["before"], result["after"]):
        assert images.dtype == torch.uint8 and images.shape == (FAST.samples, 1, 16, 16)
    assert len(result["losses"]) == FAST.steps and result["seconds"] > 0
    assert calls and all(ok for _, ok in calls)  # every pass of a blocked layer had its channels zeroed
    # the first value layer runs once per UNet call, optimisation and both sample sets: all were blocked
    assert len(passes) == sum(1 for index, _ in calls if index == 0) == FAST.steps + 2 * FAST.sampling_steps
    assert sum(1 for layer in layers for _ in layer.module._forward_hooks.values()) == 0  # blocking is undone


class _PixelDescriptor:
    """Unit-norm flattened pixels: a stand-in copy descriptor."""

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(images.float().flatten(1), dim=1)


def test_run_retrigger_rows_have_the_memorized_and_control_arms_and_the_schema(tiny_model, tiny_images):
    layers = value_layers(tiny_model.unet)
    prompts = pa.Table.from_pylist([
        {"prompt_id": "m", "prompt": TINY_PROMPTS[0], "group": "planted", "source_image_ids": ["i0"],
         "train_image_ids": ["i0"]},
        {"prompt_id": "o", "prompt": TINY_PROMPTS[1], "group": "other", "source_image_ids": [],
         "train_image_ids": ["i1"]},
    ])
    localized = [{"prompt_id": "m", "memorized": True, "success": True, "refined_neurons": NEURONS,
                  "initial_neurons": NEURONS + [20]}]
    images = {"i0": tiny_images[0], "i1": tiny_images[1]}
    rows = run_retrigger(tiny_model, layers, localized, prompts, images, _PixelDescriptor(), 0.9, FAST,
                         max_prompts=1, log=lambda _: None)
    assert [(r["prompt_id"], r["arm"], r["target_prompt_id"]) for r in rows] == [("m", "memorized", "m"),
                                                                                 ("m", "control", "o")]
    for row in rows:
        assert row["blocked_neurons"] == len(NEURONS) and row["optimisation_steps"] == FAST.steps
        assert -1 <= row["similarity_before"] <= 1 and -1 <= row["similarity_after"] <= 1
        assert row["replicated_after"] == (row["similarity_after"] > 0.9)
    table = retrigger_table(rows)
    assert table.schema == RETRIGGER_SCHEMA and table.num_rows == 2
    assert retrigger_table([]).schema == RETRIGGER_SCHEMA
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError, KeyError, TypeError)):
        retrigger_table([{**rows[0], "similarity_after": "high"}])


def test_mitigation_info_and_wen_reference_target_from_the_library():
    neurons = mitigation_info_table("cfg", "nemo", [{"prompt_id": "a", "blocked_neurons": 3}])
    wen = mitigation_info_table("cfg", "wen", [{"prompt_id": "a", "iterations": 2, "initial_loss": 1.0,
                                                "final_loss": 0.5, "target_loss": 0.6, "seconds": 0.1}])
    none = mitigation_info_table("cfg", "none", [])
    assert neurons.schema == wen.schema == none.schema == MITIGATION_INFO_SCHEMA and none.num_rows == 0
    assert neurons.to_pylist()[0]["iterations"] is None and wen.to_pylist()[0]["blocked_neurons"] is None
    with pytest.raises(ValueError, match="surprise"):
        mitigation_info_table("cfg", "nemo", [{"prompt_id": "a", "surprise": 1}])
    scores = [{"prompt_id": p, "reference": ref, "wen_first_n2": v, "wen_first_n4": 10 * v, "wen_all_n2": 0.0}
              for p, ref, v in [("a", True, 3.0), ("b", True, 1.0), ("c", True, 2.0), ("m", False, 99.0)]]
    assert reference_magnitude(scores) == 2.0  # the reference prompts' median of the smallest n, first step
    assert reference_magnitude(scores, "wen_first_n4") == 20.0
    assert reference_magnitude(scores[:2]) == 3.0  # an even count takes the upper median
    with pytest.raises(ValueError, match="reference"):
        reference_magnitude(scores[3:])

