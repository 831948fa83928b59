"""The sample check: blocked samples against unblocked ones, and the search along the pruning chain."""

from __future__ import annotations

import math

import pytest
import torch

from mnemo.copydetect.descriptors import PixelDescriptor
from mnemo.diffusion.sample import initial_noise
from mnemo.nemo.blocking import neuron_count, value_layers
from mnemo.nemo.sample_check import SampleCheck, SampleCheckConfig, smallest_passing
from tests.conftest import TINY_PROMPTS


@pytest.mark.parametrize("per_call", [1, 3, 16])
def test_smallest_passing_finds_the_boundary_in_few_rounds(per_call):
    for length in (1, 2, 5, 40, 153):
        for boundary in range(-1, length):          # sets 0..boundary pass; -1: none does
            rounds = []

            def passes(indices, boundary=boundary, rounds=rounds):
                assert len(indices) <= max(per_call, 1)
                rounds.append(indices)
                return [i <= boundary for i in indices]

            found = smallest_passing(length, passes, per_call)
            assert found == (None if boundary < 0 else boundary)
            tested = [i for r in rounds for i in r]
            assert len(tested) == len(set(tested))   # no set is drawn twice
            if boundary == length - 1:
                assert len(rounds) == 1              # the refined set passes: one round
            if per_call == 1:
                assert len(rounds) <= 2 + math.ceil(math.log2(max(length, 2)))
            if per_call == 16:
                assert len(rounds) <= 3


def test_smallest_passing_returns_a_passing_set_next_to_a_failing_one_without_monotony():
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        verdict = (torch.rand(30, generator=generator) < 0.5).tolist()
        verdict[0] = True
        found = smallest_passing(30, lambda indices, v=verdict: [v[i] for i in indices], 4)
        assert verdict[found] and (found == 29 or not verdict[found + 1])


@pytest.fixture
def check(tiny_model):
    layers = value_layers(tiny_model.unet)
    return SampleCheck(tiny_model, layers, PixelDescriptor(size=8), threshold=0.9,
                       config=SampleCheckConfig(samples=3, guidance=3.0, steps=3, batch_size=4))


def test_replica_similarity_unblocked_is_the_samples_own_and_drops_when_neurons_are_blocked(tiny_model, check):
    total = neuron_count(check.layers)
    latents = initial_noise([1, 2, 3], tiny_model.sample_shape)
    cond = tiny_model.encode_prompts([TINY_PROMPTS[0]])
    unblocked = check.embed(latents, cond)
    nothing, everything, half = (torch.zeros(total, dtype=torch.bool), torch.ones(total, dtype=torch.bool),
                                 torch.arange(total) % 2 == 0)
    replicas = check.replicas(unblocked)                        # no training descriptors: the consensus
    consensus = torch.nn.functional.normalize(unblocked.mean(0), dim=0)
    assert replicas.shape == (1, unblocked.shape[1]) and torch.allclose(replicas[0], consensus)
    together = check.replica_similarity(latents, cond, replicas, [nothing, everything, half])
    own = (unblocked @ consensus).sort().values                 # unblocked samples: their own similarities
    assert together[0] == pytest.approx(float(own[1]), abs=1e-5)   # 0.75 of 3 samples: the 2nd ("lower")
    assert together[1] < together[0] - 0.01
    # several sets in one batch (split over batches of 4 samples) give what each gives alone
    alone = [check.replica_similarity(latents, cond, replicas, [s])[0] for s in (nothing, everything, half)]
    assert together == pytest.approx(alone, abs=1e-4)
    assert check.agreement(torch.nn.functional.normalize(torch.ones(3, 4), dim=1)) == pytest.approx(1.0)
    assert check.sets_per_call() == 1     # batches of 4 samples, 3 per set


def test_replicas_are_the_training_images_the_unblocked_samples_copy(tiny_model):
    layers = value_layers(tiny_model.unet)
    unit = torch.eye(4)
    copied, near_copy, elsewhere = unit[0], torch.nn.functional.normalize(unit[0] + 0.2 * unit[1], dim=0), unit[2]
    training = torch.stack([elsewhere, 3.0 * copied, unit[3], near_copy])   # rows need not be normalised
    check = SampleCheck(tiny_model, layers, PixelDescriptor(size=8), threshold=0.9,
                        config=SampleCheckConfig(samples=3), training=training)
    unblocked = torch.nn.functional.normalize(torch.stack([unit[0] + 0.1 * unit[3], unit[0], unit[0] - 0.1 * unit[2]]),
                                              dim=1)
    replicas = check.replicas(unblocked)
    assert torch.allclose(replicas, torch.stack([copied, near_copy]))       # every copy of the image, only those
    # a blocked sample is scored by its best match among them: drifting to another copy still copies
    assert float((near_copy[None] @ replicas.T).max()) == pytest.approx(1.0)
    # samples that match no training image are compared with their consensus
    ordinary = torch.nn.functional.normalize(torch.stack([unit[1], unit[1] + 0.1 * unit[3]]), dim=1)
    assert torch.allclose(check.replicas(ordinary)[0], torch.nn.functional.normalize(ordinary.mean(0), dim=0))
