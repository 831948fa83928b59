"""NeMo neuron blocking and search on tiny models."""

from __future__ import annotations

import math
import re
import time

import pytest
import torch

from mnemo.diffusion.sample import initial_noise
from mnemo.nemo.blocking import (
    NeuronBlocker,
    block_neurons,
    neuron_count,
    value_activations,
    value_layers,
)
from mnemo.nemo.localize import LocalizeConfig, Localizer
from mnemo.nemo.refinement import (
    TIE_TOLERANCE,
    Refinement,
    SearchCost,
    _PromptState,
    speculation_tree,
)
from mnemo.nemo.sample_check import SampleCheckConfig
from mnemo.nemo.selection import ReferenceStats, reference_statistics
from mnemo.nemo.signal import projection
from tests.conftest import TINY_PROMPTS


def _capture_to_v(model, layers, embeds, x, blocker=None):
    """Outputs of every to_v layer during one UNet call."""
    seen = {}
    handles = [layer.module.register_forward_hook(lambda m, i, o, n=layer.name: seen.__setitem__(n, o.clone()))
               for layer in layers]
    try:
        with torch.no_grad():
            if blocker is None:
                out = model.unet(x, 10, encoder_hidden_states=embeds).sample
            else:
                with blocker:
                    out = model.unet(x, 10, encoder_hidden_states=embeds).sample
    finally:
        for h in handles:
            h.remove()
    return seen, out


def test_value_layers_default_blocks(tiny_model):
    layers = value_layers(tiny_model.unet)
    names = [layer.name for layer in layers]
    assert all(n.endswith("attn2.to_v") for n in names)
    assert any(n.startswith("down_blocks") for n in names) and names[-1].startswith("mid_block")
    assert not any(n.startswith("up_blocks") for n in names)
    assert neuron_count(layers) == sum(layer.width for layer in layers)


def test_hook_zeroes_exactly_the_chosen_channels(tiny_model):
    layers = value_layers(tiny_model.unet)
    x = initial_noise([1, 2], tiny_model.sample_shape)
    embeds = tiny_model.encode_prompts(TINY_PROMPTS[:2])
    chosen = [1, layers[1].offset + 3]
    # hooks registered after the blocker's hook see its output: register the blocker first
    with block_neurons(layers, chosen):
        seen, _ = _capture_to_v(tiny_model, layers, embeds, x)
    clean, _ = _capture_to_v(tiny_model, layers, embeds, x)
    layer0, layer1 = layers[0].name, layers[1].name
    assert torch.all(seen[layer0][..., 1] == 0) and torch.all(seen[layer1][..., 3] == 0)
    keep0 = [c for c in range(layers[0].width) if c != 1]
    assert torch.equal(seen[layer0][..., keep0], clean[layer0][..., keep0])
    keep1 = [c for c in range(layers[1].width) if c != 3]
    assert torch.equal(seen[layer1][..., keep1], clean[layer1][..., keep1])
    for layer in layers[2:]:
        assert torch.equal(seen[layer.name], clean[layer.name])


def test_factor_one_changes_nothing_and_hooks_are_removed(tiny_model):
    layers = value_layers(tiny_model.unet)
    x = initial_noise([5], tiny_model.sample_shape)
    embeds = tiny_model.encode_prompts(TINY_PROMPTS[:1])
    _, reference = _capture_to_v(tiny_model, layers, embeds, x)
    _, same = _capture_to_v(tiny_model, layers, embeds, x, block_neurons(layers, range(neuron_count(layers)), 1.0))
    assert torch.equal(reference, same)
    _, blocked = _capture_to_v(tiny_model, layers, embeds, x, block_neurons(layers, range(8)))
    assert not torch.equal(reference, blocked)
    _, after = _capture_to_v(tiny_model, layers, embeds, x)
    assert torch.equal(reference, after)


def test_per_sample_masks_equal_separate_calls_and_repeat_under_cfg(tiny_model):
    layers = value_layers(tiny_model.unet)
    total = neuron_count(layers)
    masks = torch.zeros(3, total, dtype=torch.bool)
    masks[0, :4] = True
    masks[2, 10:20] = True
    x = initial_noise([7] * 3, tiny_model.sample_shape)
    embeds = tiny_model.encode_prompts([TINY_PROMPTS[0]] * 3)
    with torch.no_grad(), NeuronBlocker(layers, masks):
        batched = tiny_model.unet(x, 10, encoder_hidden_states=embeds).sample
        doubled = tiny_model.unet(torch.cat([x, x]), 10, encoder_hidden_states=torch.cat([embeds, embeds])).sample
    for i in range(3):
        with torch.no_grad(), NeuronBlocker(layers, masks[i]):
            alone = tiny_model.unet(x[i:i + 1], 10, encoder_hidden_states=embeds[i:i + 1]).sample
        torch.testing.assert_close(batched[i:i + 1], alone, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(doubled[:3], batched, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(doubled[3:], batched, rtol=1e-5, atol=1e-6)


def test_value_activations_need_no_unet(tiny_model):
    layers = value_layers(tiny_model.unet)
    embeds = tiny_model.encode_prompts(TINY_PROMPTS)
    acts = value_activations(layers, embeds)
    assert acts.shape == (len(TINY_PROMPTS), neuron_count(layers))
    manual = layers[0].module(embeds).abs().mean(dim=1)
    torch.testing.assert_close(acts[:, : layers[0].width], manual)


def test_fused_projections_are_refused(tiny_model):
    tiny_model.unet.fuse_qkv_projections()
    with pytest.raises(RuntimeError, match="fused"):
        value_layers(tiny_model.unet)


# --- the search logic against an oracle ---------------------------------------------------------

class _Oracle:
    """Memorization stays (score 1) while any essential neuron is active; counts score calls."""

    def __init__(self, essential):
        self.essential = torch.tensor(essential, dtype=torch.long)
        self.sets_scored = 0

    def __call__(self, state, sets):
        self.sets_scored += len(sets)
        return torch.tensor([0.0 if bool(s[self.essential].all()) else 1.0 for s in sets])


def _search(tiny_model, mode, essential, monkeypatch, sample_check=None, theta=0.0, witness_first=True,
            log=lambda message: None):
    layers = value_layers(tiny_model.unet)
    total = neuron_count(layers)
    stats = ReferenceStats(torch.zeros(total, dtype=torch.float64), torch.ones(total, dtype=torch.float64), 1)
    localizer = Localizer(tiny_model, layers, stats, tau=0.5,
                          config=LocalizeConfig(mode=mode, samples=4, steps=3, batch_size=64, theta=theta,
                                                witness_first=witness_first),
                          sample_check=sample_check, log=log)
    oracle = _Oracle(essential)
    calls, rows = [], []

    def sample_scores_many(requests):   # every sample scores what the set scores
        calls.append(sum(len(sets) for _, sets in requests))
        rows.append(sum(len(sets) * len(state.latents) for state, sets in requests))
        return [oracle(state, sets)[:, None].expand(-1, len(state.latents)) for state, sets in requests]

    monkeypatch.setattr(localizer.refinement, "sample_scores_many", sample_scores_many)
    monkeypatch.setattr(localizer, "tau", 0.5)
    # memorized by construction: every unblocked sample is above tau
    monkeypatch.setattr("mnemo.nemo.signal.per_sample_max", lambda p, pairs, n: torch.ones(1, n))
    return localizer.localize("p", TINY_PROMPTS[0]), calls, rows


def test_each_search_logs_its_selection_and_the_tests_its_neuron_pass_has_left(tiny_model, monkeypatch):
    messages = []
    result, _, _ = _search(tiny_model, "lockstep", [2, 17, 35], monkeypatch, log=messages.append)
    assert len(messages) == 2, messages
    selection, layer_pass = messages
    assert selection.startswith(f"p: selection at theta {result.theta:g}")
    assert f": {len(result.initial_neurons)} neurons, blocked score {result.initial_score:.3f}" in selection
    kept = int(re.search(r"layer pass kept (\d+) neurons; (\d+) single-neuron tests", layer_pass).group(1))
    assert len(result.refined_neurons) == 3 <= kept <= len(result.initial_neurons)


@pytest.mark.parametrize("essential", [[2, 17, 35],                                   # a few neurons
                                       [n for n in range(4, 40) if n % 5 != 0]])   # most of them
def test_greedy_pruning_finds_the_essential_neurons_in_every_mode(tiny_model, monkeypatch, essential):
    sequential, seq_calls, seq_rows = _search(tiny_model, "sequential", essential, monkeypatch)
    speculative, spec_calls, _ = _search(tiny_model, "speculative", essential, monkeypatch)
    lockstep, lock_calls, _ = _search(tiny_model, "lockstep", essential, monkeypatch, witness_first=False)
    witness, witness_calls, witness_rows = _search(tiny_model, "lockstep", essential, monkeypatch)
    assert (sequential.refined_neurons == speculative.refined_neurons == lockstep.refined_neurons
            == witness.refined_neurons == essential)
    assert sequential.initial_neurons == speculative.initial_neurons == lockstep.initial_neurons == witness.initial_neurons
    assert sequential.success and speculative.success and lockstep.success and witness.success
    assert all(n == 1 for n in seq_calls)           # one candidate set per call
    assert lock_calls == seq_calls                  # one prompt: the same tests, nothing speculative
    assert len(spec_calls) * 4 <= len(seq_calls)    # speculation needs far fewer calls
    # witness first: a failing test costs one row, a passing one its 4 rows in two calls
    failing = sum(1 for n in essential if n in sequential.initial_neurons) + 1   # essential neurons, the first layer
    assert sum(witness_rows) < sum(seq_rows) and len(witness_calls) > len(seq_calls)
    assert sum(witness_rows) <= sum(seq_rows) - 3 * failing


def test_lockstep_progress_keeps_counting_rounds_after_a_prompt_has_finished(monkeypatch, capfd):
    """A search of 8 prompts once showed 1/8 and then nothing for the hour its other prompts took."""
    monkeypatch.setattr("mnemo.nemo.refinement.PROGRESS_INTERVAL", 0.01)
    refinement = Refinement(signal=None, mode="lockstep")

    def sample_scores_many(requests):
        time.sleep(0.03)   # a round outlasts the refresh interval
        return [torch.zeros(len(sets), len(state.latents)) for state, sets in requests]

    def search(tests):
        state = _PromptState(torch.zeros(2, 1), torch.zeros(1, 1, 1), torch.zeros(2, 1))
        for _ in range(tests):
            yield state, [torch.zeros(4, dtype=torch.bool)]
        return tests

    monkeypatch.setattr(refinement, "sample_scores_many", sample_scores_many)
    assert refinement.run_lockstep([search(1), search(6)], [SearchCost(), SearchCost()]) == [1, 6]
    shown = capfd.readouterr().err
    assert re.search(r"1/2 .*rounds=4, rows=10\]", shown), shown


def test_batched_modes_settle_near_ties_in_the_one_by_one_batch_shape(tiny_model, monkeypatch, capfd):
    """Float noise from the batch shape must not decide: one neuron's removal scores just above the
    drop edge when its set is scored alone (as one by one does) and just below it in a bigger batch."""
    essential, borderline = [2, 17, 35], 9
    edge = 0.5 - TIE_TOLERANCE

    def score(sets_in_call, s):
        if not bool(s[essential].all()):
            return 1.0
        if not bool(s[borderline]):
            return edge + 1e-6 - (2e-6 if sets_in_call > 1 else 0.0)   # alone: kept; batched: "dropped"
        return 0.0

    layers = value_layers(tiny_model.unet)
    total = neuron_count(layers)
    stats = ReferenceStats(torch.zeros(total, dtype=torch.float64), torch.ones(total, dtype=torch.float64), 1)
    found = {}
    for mode in ("sequential", "lockstep", "speculative"):
        localizer = Localizer(tiny_model, layers, stats, tau=0.5,
                              config=LocalizeConfig(mode=mode, samples=4, steps=3, batch_size=64, theta=0.0))

        def sample_scores_many(requests):
            sets_in_call = sum(len(sets) for _, sets in requests)
            return [torch.tensor([[score(sets_in_call, s)] * len(state.latents) for s in sets])
                    for state, sets in requests]

        monkeypatch.setattr(localizer.refinement, "sample_scores_many", sample_scores_many)
        monkeypatch.setattr("mnemo.nemo.signal.per_sample_max", lambda p, pairs, n: torch.ones(1, n))
        found[mode] = [r.refined_neurons for r in localizer.localize_many([("p", TINY_PROMPTS[0]),
                                                                           ("q", TINY_PROMPTS[1])])]
    assert found["sequential"] == [sorted(essential + [borderline])] * 2
    assert found["lockstep"] == found["speculative"] == found["sequential"]
    assert re.search(r"lockstep search: 100%.* 2/2 .*rounds=\d+, rows=\d+", capfd.readouterr().err)


class _SampleCheckStub:
    """Samples keep copying while fewer than `needed` neurons are blocked; records the sets drawn."""

    threshold = 0.5

    def __init__(self, needed, agreement=1.0, per_call=1):
        self.config = SampleCheckConfig(samples=2)
        self.needed, self.agree, self.drawn, self.per_call = needed, agreement, [], per_call

    def embed(self, latents, cond):
        return torch.zeros(len(latents), 4)

    def agreement(self, unblocked):
        return self.agree

    def replicas(self, unblocked):
        return unblocked[:1]

    def replica_similarity(self, latents, cond, replicas, sets):
        self.drawn.append([int(s.sum()) for s in sets])
        return [1.0 if int(s.sum()) < self.needed else 0.0 for s in sets]

    def sets_per_call(self):
        return self.per_call


@pytest.mark.parametrize(("mode", "per_call"), [("sequential", 1), ("speculative", 8)])
def test_sample_check_widens_the_refined_set_back_along_the_pruning_chain(tiny_model, monkeypatch, mode, per_call):
    essential = [2, 17, 35]
    check = _SampleCheckStub(needed=10, per_call=per_call)
    result, _, _ = _search(tiny_model, mode, essential, monkeypatch, check)
    initial = set(result.initial_neurons)
    assert result.refined_neurons == essential                # NeMo's refinement alone, reported as such
    assert len(result.checked_neurons) == 10                  # the neuron pass drops one at a time
    assert set(essential) <= set(result.checked_neurons) <= initial
    assert result.checked_success and result.sample_similarity == 0.0
    assert check.drawn[0][0] == 3                             # the refined set is drawn first
    assert len(check.drawn) <= 1 + 2 + math.ceil(math.log2(len(initial)))
    assert result.unet_calls > 0 and result.sample_checks == len(check.drawn) + 1

    # samples that do not show one image: nothing to check, no checked set
    result, _, _ = _search(tiny_model, mode, essential, monkeypatch, _SampleCheckStub(needed=10, agreement=0.2))
    assert result.refined_neurons == essential and result.checked_neurons == [] and result.sample_checks == 1

    # the initial selection leaves the samples copying: wider selections of the schedule come next
    loose = dict(essential=[], theta=1.5)    # every set removes the signal; the schedule has two wider ones
    result, _, _ = _search(tiny_model, mode, monkeypatch=monkeypatch, **loose,
                        sample_check=_SampleCheckStub(needed=0))
    initial = set(result.initial_neurons)
    result, _, _ = _search(tiny_model, mode, monkeypatch=monkeypatch, **loose,
                        sample_check=_SampleCheckStub(needed=len(initial) + 1))
    assert set(result.checked_neurons) > initial and result.checked_success and result.checked_score == 0.0
    result, _, _ = _search(tiny_model, mode, monkeypatch=monkeypatch, **loose, sample_check=_SampleCheckStub(needed=10_000))
    assert set(result.checked_neurons) > initial and not result.checked_success   # none passes: the widest, failed


def _groups(n, total=8):
    out = []
    for i in range(n):
        group = torch.zeros(total, dtype=torch.bool)
        group[i] = True
        out.append(group)
    return out


def test_speculation_tree_follows_the_likely_decisions():
    current, groups = torch.ones(8, dtype=torch.bool), _groups(6)
    assert list(speculation_tree(current, groups, 0.5, 1)) == [()]      # sequential: the next test only
    # groups usually kept: the tests are "each group left out alone"
    keeps = speculation_tree(current, groups, 0.95, 4)
    assert list(keeps) == [(), (False,), (False, False), (False, False, False)]
    for i, tested in enumerate(keeps.values()):
        assert torch.equal(tested, ~groups[i] & current)
    # groups usually dropped: cumulative removals, the chain the old speculation scored
    drops = speculation_tree(current, groups, 0.05, 4)
    assert list(drops) == [(), (True,), (True, True), (True, True, True)]
    assert [int(tested.sum()) for tested in drops.values()] == [7, 6, 5, 4]
    # undecided: both branches, most likely first, every test's parent present
    both = speculation_tree(current, groups, 0.5, 7)
    assert set(both) == {(), (True,), (False,), (True, True), (True, False), (False, True), (False, False)}
    assert all(key[:-1] in both for key in both if key)
    assert speculation_tree(current, groups[:2], 0.5, 100).keys() == {(), (True,), (False,)}  # no tests past the end


@pytest.mark.parametrize(("signal", "step", "score"), [("noise_difference", 0, "ms_ssim"),
                                                       ("guidance_direction", 0, "ms_ssim"),
                                                       ("guidance_direction", 2, "ms_ssim"),
                                                       ("guidance_direction", 2, "projection")])
def test_lockstep_speculative_and_one_by_one_scores_agree(tiny_model, signal, step, score):
    layers = value_layers(tiny_model.unet)
    x = initial_noise([1, 2, 3], tiny_model.sample_shape)
    embeds = tiny_model.encode_prompts(TINY_PROMPTS[:1])
    stats = reference_statistics(tiny_model, layers, TINY_PROMPTS)
    total = neuron_count(layers)
    sets = [torch.zeros(total, dtype=torch.bool) for _ in range(4)]
    sets[1][:5] = True
    sets[2][20:40] = True
    sets[3][::3] = True
    from mnemo.nemo.refinement import _PromptState

    def score_all(mode):
        localizer = Localizer(tiny_model, layers, stats, tau=0.5,
                              config=LocalizeConfig(mode=mode, steps=3, signal=signal, signal_step=step,
                                                    score=score, batch_size=8), reference_prompts=TINY_PROMPTS[1:])
        state = _PromptState(x, embeds, localizer.signal.prepare(localizer.raw_signal(x, embeds, None)))
        if mode == "speculative":
            return localizer.scores(state, sets)
        if mode == "lockstep":  # another prompt's request in the same call changes nothing
            other_embeds = tiny_model.encode_prompts(TINY_PROMPTS[1:2])
            other = _PromptState(x[:2], other_embeds,
                                 localizer.signal.prepare(localizer.raw_signal(x[:2], other_embeds, None)))
            mine, theirs = localizer.refinement.scores_many([(other, sets[:2]), (state, sets)])
            torch.testing.assert_close(mine, localizer.scores(other, sets[:2]), rtol=1e-4, atol=1e-5)
            return theirs
        return torch.cat([localizer.scores(state, [s]) for s in sets])

    one_by_one = score_all("sequential")
    torch.testing.assert_close(score_all("speculative"), one_by_one, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(score_all("lockstep"), one_by_one, rtol=1e-4, atol=1e-5)


def test_guidance_direction_vanishes_when_every_value_neuron_is_blocked(tiny_model):
    """The search signal the demo uses must be able to reach 'no prompt influence'; the paper's cannot."""
    layers = value_layers(tiny_model.unet, ("down", "mid", "up"))
    every_to_v = [name for name, _ in tiny_model.unet.named_modules() if name.endswith("attn2.to_v")]
    assert sorted(layer.name for layer in layers) == sorted(every_to_v)
    stats = reference_statistics(tiny_model, layers, TINY_PROMPTS)
    x = initial_noise([1, 2], tiny_model.sample_shape)
    embeds = tiny_model.encode_prompts(TINY_PROMPTS[:1])
    everything = torch.ones(2, neuron_count(layers), dtype=torch.bool)
    guided = Localizer(tiny_model, layers, stats, tau=0.5, config=LocalizeConfig(steps=3, signal="guidance_direction"))
    assert guided.signal_maps(x, embeds, None).amax() > 0.99              # min-max normalised, not constant
    assert guided.signal_maps(x, embeds, everything).abs().max() == 0     # eps_cond == eps_uncond exactly
    paper = Localizer(tiny_model, layers, stats, tau=0.5, config=LocalizeConfig(steps=3))
    assert paper.signal_maps(x, embeds, everything).amax() > 0.99         # noise difference stays


@pytest.mark.parametrize("signal", ["noise_difference", "guidance_direction"])
def test_signal_at_a_later_step_follows_the_sampler(tiny_model, signal):
    """signal_step k reads the signal where mnemo.diffusion.sample.denoise is after k steps, blocking on the way."""
    from mnemo.diffusion.sample import denoise
    from mnemo.nemo.signal import normalize_maps

    layers = value_layers(tiny_model.unet)
    stats = reference_statistics(tiny_model, layers, TINY_PROMPTS)
    x = initial_noise([3, 4], tiny_model.sample_shape)
    embeds = tiny_model.encode_prompts(TINY_PROMPTS[:1]).expand(2, -1, -1)
    empty = tiny_model.encode_prompts([""]).expand(2, -1, -1)
    mask = torch.zeros(neuron_count(layers), dtype=torch.bool)
    mask[::4] = True
    seen = {}

    def record(i, _t, x_t, eps_uncond, eps_cond):
        seen[i] = eps_cond - (eps_uncond if signal == "guidance_direction" else x_t)

    with NeuronBlocker(layers, mask):
        denoise(tiny_model, x, embeds, 1.0, 4, empty, callback=record)
    localizer = Localizer(tiny_model, layers, stats, tau=0.5,
                          config=LocalizeConfig(steps=4, signal=signal, signal_step=2))
    maps = localizer.signal_maps(x, embeds[:1], mask[None].expand(2, -1))
    torch.testing.assert_close(maps, normalize_maps(seen[2]), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(maps, normalize_maps(seen[0]), atol=1e-3)
    with pytest.raises(ValueError, match="localize.signal_step"):
        Localizer(tiny_model, layers, stats, tau=0.5, config=LocalizeConfig(steps=4, signal_step=4))


def test_signal_threshold_of_the_paper_signal_is_the_detection_tau(tiny_model):
    from mnemo.detect.detector import DetectConfig
    from mnemo.detect.nemo import nemo_detection
    from mnemo.nemo.signal import memorization_threshold

    ids, prompts = ["r0", "r1", "r2"], TINY_PROMPTS[:3]
    detection = nemo_detection(tiny_model, ids, prompts, DetectConfig(steps=3, nemo_samples=4, seed=7))
    layers = value_layers(tiny_model.unet)
    stats = reference_statistics(tiny_model, layers, TINY_PROMPTS)
    localizer = Localizer(tiny_model, layers, stats, tau=0.5, config=LocalizeConfig(steps=3, samples=4, seed=7))
    assert localizer.signal_threshold(ids, prompts) == pytest.approx(memorization_threshold(detection.pairwise),
                                                                        abs=1e-5)
    with pytest.raises(ValueError, match="localize.signal"):
        LocalizeConfig(signal="attention")


def test_projection_sees_magnitude_and_blocking():
    unblocked = torch.randn(3, 4, 8, 8)
    other = torch.randn(3, 4, 8, 8)
    other -= projection(other, unblocked).view(3, 1, 1, 1) * unblocked   # orthogonal to each sample
    torch.testing.assert_close(projection(unblocked, unblocked), torch.ones(3))
    torch.testing.assert_close(projection(0.5 * unblocked + other, unblocked), torch.full((3,), 0.5))
    assert projection(torch.zeros_like(unblocked), unblocked).abs().max() == 0


def test_projection_score_and_its_per_prompt_threshold(tiny_model):
    """Blocking every value neuron leaves none of the guidance direction (score 0), factor 1 all of it;
    tau is mean + 1 std of the reference prompts' projections from the same latents."""
    from mnemo.nemo.refinement import _PromptState
    from mnemo.nemo.signal import memorization_threshold

    layers = value_layers(tiny_model.unet, ("down", "mid", "up"))
    total = neuron_count(layers)
    stats = reference_statistics(tiny_model, layers, TINY_PROMPTS)
    x = initial_noise([5, 6, 7], tiny_model.sample_shape)
    embeds = tiny_model.encode_prompts(TINY_PROMPTS[:1])
    reference = TINY_PROMPTS[1:4]

    def localizer(factor=0.0):
        config = LocalizeConfig(steps=3, signal="guidance_direction", signal_step=1, score="projection",
                                factor=factor, batch_size=4)
        return Localizer(tiny_model, layers, stats, 0.5, config, reference_prompts=reference)

    search = localizer()
    unblocked = search.raw_signal(x, embeds, None)
    state = _PromptState(x, embeds, unblocked)
    nothing, everything = torch.zeros(total, dtype=torch.bool), torch.ones(total, dtype=torch.bool)
    scores = search.scores(state, [nothing, everything])
    torch.testing.assert_close(scores[0], torch.tensor(1.0), rtol=1e-4, atol=1e-4)
    assert scores[1] == 0
    assert localizer(factor=1.0).scores(state, [everything])[0] == pytest.approx(1.0, abs=1e-4)
    by_hand = torch.cat([projection(search.raw_signal(x, tiny_model.encode_prompts([p]), None), unblocked)
                         for p in reference])
    assert search.projection_threshold(x, unblocked) == pytest.approx(memorization_threshold(by_hand), abs=1e-4)
    with pytest.raises(ValueError, match="localize.score"):
        Localizer(tiny_model, layers, stats, 0.5, LocalizeConfig(steps=3, score="projection"))


@pytest.mark.parametrize(("signal", "score"), [("noise_difference", "ms_ssim"), ("guidance_direction", "ms_ssim"),
                                               ("guidance_direction", "projection")])
def test_localization_runs_end_to_end_on_a_tiny_model(tiny_model, signal, score):
    layers = value_layers(tiny_model.unet)
    stats = reference_statistics(tiny_model, layers, TINY_PROMPTS[1:])
    config = LocalizeConfig(samples=4, steps=3, theta=2.0, seed=0)   # seeds on which a selection passes
    probe = Localizer(tiny_model, layers, stats, tau=-1.0, config=config).localize("p", TINY_PROMPTS[0])
    assert probe.memorized and probe.kept_samples == 4
    # a threshold just under the unblocked score: memorized, and removable by blocking
    tau = probe.unblocked_score - 1e-3
    results = {mode: Localizer(tiny_model, layers, stats, tau,
                               LocalizeConfig(samples=4, steps=3, theta=2.0, seed=0, mode=mode, signal=signal,
                                              score=score),
                               reference_prompts=TINY_PROMPTS[1:]).localize("p", TINY_PROMPTS[0])
               for mode in ("speculative", "sequential", "lockstep")}
    for result in results.values():
        assert result.memorized
        assert result.unet_calls > 0 and result.seconds > 0
        if score == "ms_ssim":
            assert result.score_tau == tau
        else:  # per prompt, from the reference prompts
            assert math.isfinite(result.score_tau) and result.score_tau != tau
        if result.success:
            assert set(result.refined_neurons) <= set(result.initial_neurons)
            assert result.refined_score <= result.score_tau
    assert results["speculative"].refined_neurons == results["sequential"].refined_neurons
    assert results["lockstep"].refined_neurons == results["sequential"].refined_neurons
    assert results["speculative"].unet_calls <= results["sequential"].unet_calls


# --- Wen et al.'s inference-time mitigation ------------------------------------------------------

def test_prompt_embedding_optimisation_lowers_the_magnitude(tiny_model):
    from mnemo.diffusion.sample import sample_seed
    from mnemo.mitigate.neurons import build_mitigation
    from mnemo.mitigate.wen_embedding import WenEmbeddingConfig, optimize_prompt_embeddings

    seeds = [[sample_seed(p, i) for i in range(3)] for p in ("a", "b")]
    config = WenEmbeddingConfig(learning_rate=0.05, iterations=5)
    results = optimize_prompt_embeddings(tiny_model, TINY_PROMPTS[:2], seeds, steps=3, config=config, target=0.0)
    for r in results:
        assert r["iterations"] == 5
        assert r["final_loss"] < r["initial_loss"]
    original = tiny_model.encode_prompts(TINY_PROMPTS[:2])
    assert torch.equal(results[0]["embedding"][0], original[0, 0])  # start token untouched
    assert not torch.equal(results[0]["embedding"], original[0])
    # a prompt already under the target is left exactly as it was
    done = optimize_prompt_embeddings(tiny_model, TINY_PROMPTS[:1], seeds[:1], 3, config, target=1e9)
    assert done[0]["iterations"] == 0 and torch.equal(done[0]["embedding"], original[0])
    # only_flagged: prompts the detector did not flag are sampled with their own embedding
    mitigation, info = build_mitigation("w", {"kind": "wen_embedding", "iterations": 2, "only_flagged": True},
                                        tiny_model, prompt_ids=["a", "b"], prompts=TINY_PROMPTS[:2], seeds=seeds,
                                        flagged={"b"}, reference_magnitude=0.0, steps=3)
    assert [r["prompt_id"] for r in info] == ["b"] and set(mitigation.embeddings) == {"b"}


def test_random_control_matches_counts_per_layer(tiny_model):
    from mnemo.mitigate.neurons import random_like
    from mnemo.nemo.blocking import locate

    layers = value_layers(tiny_model.unet)
    neurons = [1, 2, layers[1].offset + 5, layers[2].offset + 1]
    control = random_like(layers, neurons, "seed")
    per_layer = lambda ns: sorted(locate(layers, n)[0] for n in ns)  # noqa: E731
    assert per_layer(control) == per_layer(neurons)
    assert control == random_like(layers, neurons, "seed")


def test_neuron_mitigations_block_found_neurons_and_global_takes_only_successful_searches(tiny_model):
    from mnemo.mitigate.neurons import build_mitigation

    localized = [
        {"prompt_id": "a", "memorized": True, "success": True, "refined_neurons": [1, 4], "initial_neurons": [1, 2, 4]},
        {"prompt_id": "b", "memorized": True, "success": False, "refined_neurons": [], "initial_neurons": [7, 8, 9]},
        {"prompt_id": "c", "memorized": False, "success": False, "refined_neurons": [], "initial_neurons": []},
    ]
    ids = ["a", "b", "c"]

    def blocked(kind, **settings):
        mitigation, _ = build_mitigation(kind, {"kind": kind, **settings}, tiny_model, localized=localized,
                                         prompt_ids=ids)
        return {pid: torch.nonzero(mask).flatten().tolist() for pid, mask in mitigation.masks.items()}

    # per prompt: the refined set, or the widest selection where the search did not succeed
    assert blocked("nemo") == {"a": [1, 4], "b": [7, 8, 9]}
    # global: the union of what the search found, for every prompt
    assert blocked("nemo_global") == {"a": [1, 4], "b": [1, 4], "c": [1, 4]}
    # the initial selections instead: what refinement pruned from
    assert blocked("nemo", neurons="initial") == {"a": [1, 2, 4], "b": [7, 8, 9]}
    assert blocked("nemo_global", neurons="initial") == {"a": [1, 2, 4], "b": [1, 2, 4], "c": [1, 2, 4]}


def test_frequent_neurons_keep_those_shared_by_a_share_of_the_prompts():
    from mnemo.mitigate.neurons import frequent_neurons

    found = [[1, 2, 5], [2, 3, 5], [2, 4], [2, 5, 6]]
    assert frequent_neurons(found) == [1, 2, 3, 4, 5, 6]          # 0: the union
    assert frequent_neurons(found, 0.5) == [2, 5]                 # in 2 of 4 sets or more
    assert frequent_neurons(found, 0.6) == [2, 5]                 # in 3 of 4 (2.4 rounds up)
    assert frequent_neurons(found, 0.8) == [2]                   # in all 4 (3.2 rounds up)
    assert frequent_neurons(found, 1.0) == [2]
    assert frequent_neurons([]) == []
