"""Measured replication: each sample's nearest training image, and per-prompt summaries.

On X-rays memorization is about patients as much as pixels, so next to the similarity of the
nearest training image we record whether that image belongs to one of the patients behind the
prompt's own training images (patient-level leakage), and the similarity to the prompt's own
source images (for planted prompts: the planted study).

In a dense training set a fixed copy threshold calls almost any sample a copy of *some* image.
The held-out baseline asks instead whether the nearest training image is closer than what
patients the model never saw give (Somepalli et al., Carlini et al.): a sample counts as a copy
beyond held-out when its training similarity minus its held-out similarity exceeds a margin that
real held-out images exceed only at the calibration's false-positive rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import duckdb
import pyarrow as pa
import torch

from mnemo.copydetect.embeddings import Embeddings
from mnemo.copydetect.neighbours import topk_cosine


@dataclass
class MatchConfig:
    top_k: int = 5
    thresholds: tuple[float, ...] = (0.5, 0.7)
    chunk_queries: int = 4096
    chunk_keys: int = 65536


@dataclass
class HeldoutBaseline:
    """What images of patients the model never saw give: the samples' nearest held-out similarity
    and the training-minus-held-out margin that real held-out images exceed at rate `fpr`."""

    sample_similarity: torch.Tensor  # (samples,)
    margin: float
    fpr: float
    images: int
    patients: int


def _nearest_other_patient(vectors: torch.Tensor, patients: list[str], chunk: int = 4096) -> torch.Tensor:
    """Each image's highest similarity to an image of another patient in the same set."""
    codes = {p: i for i, p in enumerate(sorted(set(patients)))}
    patient = torch.tensor([codes[p] for p in patients])
    best = torch.empty(len(patients))
    for start in range(0, len(patients), chunk):
        scores = vectors[start:start + chunk] @ vectors.T
        scores[patient[start:start + chunk, None] == patient[None, :]] = -torch.inf
        best[start:start + chunk] = scores.max(dim=1).values
    return best


def heldout_baseline(samples: Embeddings, train: Embeddings, heldout: Embeddings, heldout_patients: dict[str, str],
                     fpr: float, config: MatchConfig, device: str | torch.device = "cpu") -> HeldoutBaseline:
    """Margin from the held-out images themselves: for each, its nearest training image against its
    nearest image of another held-out patient; the (1 - fpr) quantile of that gap is the margin."""
    patients = [heldout_patients[i] for i in heldout.ids]
    if len(set(patients)) < 2:
        raise ValueError(f"the held-out baseline needs images of at least 2 patients ({len(set(patients))} given)")
    sample_similarity = topk_cosine(samples.vectors, heldout.vectors, 1, config.chunk_queries, config.chunk_keys,
                                    device)[0][:, 0]
    to_train = topk_cosine(heldout.vectors, train.vectors, 1, config.chunk_queries, config.chunk_keys, device)[0][:, 0]
    gap = to_train - _nearest_other_patient(heldout.vectors, patients)
    margin = float(torch.quantile(gap, 1 - fpr))
    return HeldoutBaseline(sample_similarity, margin, fpr, len(patients), len(set(patients)))


def match_samples(samples: Embeddings, sample_rows: pa.Table, train: Embeddings, train_patients: dict[str, str],
                  prompts: pa.Table, config: MatchConfig, device: str | torch.device = "cpu",
                  baseline: HeldoutBaseline | None = None) -> pa.Table:
    """One row per sample: nearest training image, similarity, leakage flag, source similarity and,
    with a held-out `baseline`, the nearest held-out similarity and whether the sample copies beyond it."""
    sims, idx = topk_cosine(samples.vectors, train.vectors, config.top_k, config.chunk_queries,
                            config.chunk_keys, device)
    prompt_of = dict(zip(sample_rows.column("sample_id").to_pylist(), sample_rows.column("prompt_id").to_pylist(),
                         strict=True))
    guidance_of = dict(zip(sample_rows.column("sample_id").to_pylist(),
                           sample_rows.column("guidance").to_pylist(), strict=True))
    info = {r["prompt_id"]: r for r in prompts.select(
        ["prompt_id", "group", "train_patient_ids", "source_image_ids"]).to_pylist()}
    train_index = {image_id: i for i, image_id in enumerate(train.ids)}

    # similarity of each sample to its prompt's own source images, batched per prompt
    source_sim = torch.full((len(samples.ids),), float("nan"))
    rows_of_prompt: dict[str, list[int]] = {}
    for row, sample_id in enumerate(samples.ids):
        rows_of_prompt.setdefault(prompt_of[sample_id], []).append(row)
    for prompt_id, rows in rows_of_prompt.items():
        sources = [train_index[i] for i in info[prompt_id]["source_image_ids"] if i in train_index]
        if sources:
            block = samples.vectors[rows] @ train.vectors[sources].T
            source_sim[rows] = block.max(dim=1).values

    out = []
    for row, sample_id in enumerate(samples.ids):
        prompt_id = prompt_of[sample_id]
        nn_ids = [train.ids[j] for j in idx[row].tolist()]
        nn_patient = train_patients[nn_ids[0]]
        source = float(source_sim[row])
        heldout = None if baseline is None else float(baseline.sample_similarity[row])
        out.append({
            "sample_id": sample_id,
            "prompt_id": prompt_id,
            "group": info[prompt_id]["group"],
            "guidance": guidance_of[sample_id],
            "nn_image_id": nn_ids[0],
            "nn_similarity": float(sims[row, 0]),
            "nn_same_patient": nn_patient in set(info[prompt_id]["train_patient_ids"]),
            "source_similarity": None if source != source else source,
            "topk_image_ids": nn_ids,
            "topk_similarities": sims[row].tolist(),
            "heldout_similarity": heldout,
            "beyond_heldout": None if heldout is None else float(sims[row, 0]) - heldout > baseline.margin,
            "heldout_margin": None if baseline is None else baseline.margin,
            "descriptor": samples.descriptor,
            "recipe": samples.recipe,
        })
    return pa.Table.from_pylist(out, schema=match_schema())


def match_schema() -> pa.Schema:
    return pa.schema([
        pa.field("sample_id", pa.string()),
        pa.field("prompt_id", pa.string()),
        pa.field("group", pa.string()),
        pa.field("guidance", pa.float32()),
        pa.field("nn_image_id", pa.string()),
        pa.field("nn_similarity", pa.float32()),
        pa.field("nn_same_patient", pa.bool_()),
        pa.field("source_similarity", pa.float32()),
        pa.field("topk_image_ids", pa.list_(pa.string())),
        pa.field("topk_similarities", pa.list_(pa.float32())),
        pa.field("heldout_similarity", pa.float32()),
        pa.field("beyond_heldout", pa.bool_()),
        pa.field("heldout_margin", pa.float32()),
        pa.field("descriptor", pa.string()),
        pa.field("recipe", pa.string()),
    ])


def diversity(samples: Embeddings, sample_rows: pa.Table) -> pa.Table:
    """Median pairwise similarity among each (prompt, guidance)'s samples (lower = more diverse)."""
    keys = {}
    for sample_id, prompt_id, guidance in zip(sample_rows.column("sample_id").to_pylist(),
                                              sample_rows.column("prompt_id").to_pylist(),
                                              sample_rows.column("guidance").to_pylist(), strict=True):
        keys[sample_id] = (prompt_id, guidance)
    groups: dict[tuple[str, float], list[int]] = {}
    for row, sample_id in enumerate(samples.ids):
        groups.setdefault(keys[sample_id], []).append(row)
    out = []
    for (prompt_id, guidance), rows in sorted(groups.items()):
        if len(rows) < 2:
            value = None
        else:
            v = samples.vectors[rows]
            upper = torch.triu_indices(len(rows), len(rows), offset=1)
            value = float((v @ v.T)[upper[0], upper[1]].quantile(0.5))
        out.append({"prompt_id": prompt_id, "guidance": guidance, "diversity": value})
    return pa.Table.from_pylist(out, schema=pa.schema([
        pa.field("prompt_id", pa.string()), pa.field("guidance", pa.float32()), pa.field("diversity", pa.float32()),
    ]))


def threshold_names(thresholds: Sequence[float], calibrated: float | None) -> dict[str, float]:
    """Column suffix -> threshold: '0_5' for 0.5, ..., 'calibrated' for the descriptor's own."""
    names = {str(t).replace(".", "_"): float(t) for t in thresholds}
    if calibrated is not None:
        names["calibrated"] = float(calibrated)
    return names


def per_prompt(matches: pa.Table, diversity_table: pa.Table, thresholds: dict[str, float]) -> pa.Table:
    """Per (prompt, guidance): max/median similarity, replication rates, leakage, diversity."""
    rates = ",\n".join(
        f"avg(CAST(m.nn_similarity > CAST({value!r} AS DOUBLE) AS DOUBLE)) AS replication_rate_{name}"
        for name, value in thresholds.items()
    )
    con = duckdb.connect()
    con.register("matches", matches)
    con.register("diversity", diversity_table)
    table = con.sql(f"""
        SELECT m.prompt_id, any_value(m.group) AS "group", m.guidance,
               count(*) AS samples,
               max(m.nn_similarity) AS max_similarity,
               median(m.nn_similarity) AS median_similarity,
               max(m.source_similarity) AS max_source_similarity,
               median(m.source_similarity) AS median_source_similarity,
               {rates},
               {", ".join(f"CAST({value!r} AS DOUBLE) AS threshold_{name}" for name, value in thresholds.items())},
               avg(CAST(m.beyond_heldout AS DOUBLE)) AS replication_rate_beyond_heldout,
               any_value(m.heldout_margin) AS heldout_margin,
               median(m.heldout_similarity) AS median_heldout_similarity,
               avg(CAST(m.nn_same_patient AS DOUBLE)) AS same_patient_rate,
               any_value(d.diversity) AS diversity,
               any_value(m.descriptor) AS descriptor,
               any_value(m.recipe) AS recipe
        FROM matches m LEFT JOIN diversity d USING (prompt_id, guidance)
        GROUP BY m.prompt_id, m.guidance
        ORDER BY m.prompt_id, m.guidance
    """).to_arrow_table()
    con.close()
    return table
