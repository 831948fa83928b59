"""Exact nearest-neighbour search and replication measures on hand-made embeddings."""

from __future__ import annotations

import pyarrow as pa
import pytest
import torch

from mnemo.copydetect.embeddings import Embeddings, read_embeddings, write_embeddings
from mnemo.copydetect.neighbours import topk_cosine
from mnemo.copydetect.replication import (
    MatchConfig,
    _nearest_other_patient,
    diversity,
    heldout_baseline,
    match_samples,
    per_prompt,
    threshold_names,
)


def _unit(x):
    return torch.nn.functional.normalize(x, dim=1)


def test_chunked_topk_equals_brute_force():
    generator = torch.Generator().manual_seed(0)
    keys = _unit(torch.randn(1000, 16, generator=generator))
    queries = _unit(torch.randn(77, 16, generator=generator))
    sims, idx = topk_cosine(queries, keys, k=5, chunk_queries=10, chunk_keys=64)
    full = queries @ keys.T
    expected_s, expected_i = torch.topk(full, 5, dim=1)
    torch.testing.assert_close(sims, expected_s)
    assert torch.equal(idx, expected_i)


def test_duplicate_is_its_own_nearest_neighbour_with_similarity_one():
    keys = _unit(torch.randn(50, 8))
    sims, idx = topk_cosine(keys[[3, 17]], keys, k=1, chunk_keys=7)
    assert idx.flatten().tolist() == [3, 17]
    assert sims.flatten().tolist() == pytest.approx([1.0, 1.0], abs=1e-6)


def test_embeddings_round_trip(tmp_path):
    vectors = _unit(torch.randn(4, 6))
    write_embeddings(Embeddings(["a", "b", "c", "d"], vectors, "pixel", "pixel:16x16:zscore"), tmp_path / "e.parquet")
    back = read_embeddings(tmp_path / "e.parquet")
    assert back.ids == ["a", "b", "c", "d"] and back.recipe == "pixel:16x16:zscore"
    torch.testing.assert_close(back.vectors, vectors)


def _fixture():
    """Two training patients; prompt p0's training image is t0 (patient A); p1 is held out."""
    train = Embeddings(["t0", "t1", "t2"], torch.eye(3), "d", "recipe")
    samples = Embeddings(["p0/g1/0", "p0/g1/1", "p1/g1/0", "p1/g1/1"],
                         _unit(torch.tensor([[1.0, 0, 0], [0.6, 0.8, 0], [0, 0, 1.0], [0, 0.1, 1.0]])),
                         "d", "recipe")
    rows = pa.table({"sample_id": samples.ids, "prompt_id": ["p0", "p0", "p1", "p1"], "guidance": [1.0] * 4})
    prompts = pa.table({
        "prompt_id": ["p0", "p1"], "group": ["planted", "heldout"],
        "train_patient_ids": [["A"], []], "source_image_ids": [["t0"], []],
    })
    patients = {"t0": "A", "t1": "B", "t2": "A"}
    return samples, rows, train, patients, prompts


def test_match_samples_leakage_and_source_similarity():
    samples, rows, train, patients, prompts = _fixture()
    table = match_samples(samples, rows, train, patients, prompts, MatchConfig(top_k=2)).to_pylist()
    assert [r["nn_image_id"] for r in table] == ["t0", "t1", "t2", "t2"]
    assert table[0]["nn_similarity"] == pytest.approx(1.0)
    assert [r["nn_same_patient"] for r in table] == [True, False, False, False]  # p1 has no patients
    assert table[1]["source_similarity"] == pytest.approx(0.6)
    assert table[2]["source_similarity"] is None


def test_per_prompt_rates_and_diversity():
    samples, rows, train, patients, prompts = _fixture()
    matches = match_samples(samples, rows, train, patients, prompts, MatchConfig(top_k=1))
    names = threshold_names([0.5, 0.9], calibrated=0.99)
    table = {r["prompt_id"]: r for r in per_prompt(matches, diversity(samples, rows), names).to_pylist()}
    assert table["p0"]["replication_rate_0_5"] == 1.0
    assert table["p0"]["replication_rate_0_9"] == 0.5
    assert table["p0"]["replication_rate_calibrated"] == 0.5
    assert table["p0"]["max_similarity"] == pytest.approx(1.0)
    assert table["p0"]["same_patient_rate"] == 0.5
    assert table["p0"]["diversity"] == pytest.approx(0.6)
    assert table["p0"]["threshold_calibrated"] == pytest.approx(0.99)


def _dense_world(generator, count, prototypes, spread=0.08):
    """Images near a few prototypes: every one is similar to many others, as phantoms are."""
    choice = torch.randint(len(prototypes), (count,), generator=generator)
    return _unit(prototypes[choice] + spread * torch.randn(count, prototypes.shape[1], generator=generator))


def test_heldout_baseline_separates_copies_from_typical_samples_in_a_dense_set():
    """In a dense set a fixed threshold calls almost every sample a copy; beating held-out patients
    by the calibrated margin calls the near-exact copies copies and few typical samples."""
    generator = torch.Generator().manual_seed(0)
    prototypes = _unit(torch.randn(3, 32, generator=generator))
    train = Embeddings([f"t{i}" for i in range(300)], _dense_world(generator, 300, prototypes), "d", "r")
    heldout = Embeddings([f"h{i}" for i in range(300)], _dense_world(generator, 300, prototypes), "d", "r")
    held_patients = {f"h{i}": f"H{i // 2}" for i in range(300)}
    typical = _dense_world(generator, 200, prototypes)
    copies = _unit(train.vectors[:20] + 0.02 * torch.randn(20, 32, generator=generator))
    samples = Embeddings([f"s{i}" for i in range(220)], torch.cat([typical, copies]), "d", "r")
    rows = pa.table({"sample_id": samples.ids, "prompt_id": ["typical"] * 200 + ["copy"] * 20,
                     "guidance": [1.0] * 220})
    prompts = pa.table({"prompt_id": ["typical", "copy"], "group": ["other", "planted"],
                        "train_patient_ids": [[], []], "source_image_ids": [[], []]})
    train_patients = {f"t{i}": f"T{i}" for i in range(300)}
    baseline = heldout_baseline(samples, train, heldout, held_patients, 0.01, MatchConfig())
    assert (baseline.images, baseline.patients) == (300, 150) and baseline.margin > 0
    table = match_samples(samples, rows, train, train_patients, prompts, MatchConfig(), baseline=baseline).to_pylist()
    beyond = torch.tensor([r["beyond_heldout"] for r in table], dtype=torch.float)
    above_fixed = torch.tensor([r["nn_similarity"] > 0.8 for r in table], dtype=torch.float)
    assert above_fixed[:200].mean() > 0.9  # a fixed threshold: nearly every typical sample "copies"
    assert beyond[200:].mean() == 1.0 and beyond[:200].mean() <= 0.05
    # the held-out images' own comparison leaves their patient out: a second image of the same
    # patient never stands in for "another held-out patient"
    twin_vectors = torch.zeros(3, 32)
    twin_vectors[0, 0], twin_vectors[1, :2], twin_vectors[2, 1] = 1.0, torch.tensor([1.0, 0.01]), 1.0
    twin = Embeddings(["a0", "a1", "b0"], _unit(twin_vectors), "d", "r")
    assert _nearest_other_patient(twin.vectors, ["A", "A", "B"]).tolist() == pytest.approx([0.0, 0.01, 0.01], abs=1e-4)
    assert heldout_baseline(samples, train, twin, {"a0": "A", "a1": "A", "b0": "B"}, 0.5, MatchConfig()).patients == 2
    with pytest.raises(ValueError, match="at least 2 patients"):
        heldout_baseline(samples, train, twin, {"a0": "A", "a1": "A", "b0": "A"}, 0.5, MatchConfig())
