"""Does the detector find what is really replicated? Detector scores against two ground truths.

(a) the planted prompts (memorized by construction), (b) measured replication: a prompt whose
samples' nearest training image is more similar than the descriptor's calibrated threshold, and
(c) `replicated_own`: a prompt whose samples reproduce one of *its own* training images (Webster's
and NeMo's sense of a memorized prompt). (b) alone says little for a model that copies training
images for every prompt; (c) is only measured where prompts know their training images.
ROC AUC and TPR at 1% FPR as Wen et al. report them, and Spearman correlation with the measured
similarity, which needs no threshold at all.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from mnemo.detect import metrics
from mnemo.detect.names import detector_names, wen_n_of


def detectors_of(scores: pa.Table) -> tuple[str, ...]:
    """The detectors a scores table was written with (every n of its detect.wen_n, and NeMo's)."""
    return tuple(d for d in detector_names(wen_n_of(scores.column_names)) if d in scores.column_names)


def replication_by_prompt(prompt_rows: pa.Table, threshold: float) -> dict[str, dict]:
    """Per prompt over all guidance scales: max similarity to any training image and to the
    prompt's own training images (None where it has none), and the replicated flags."""
    out: dict[str, dict] = {}
    for row in prompt_rows.select(["prompt_id", "max_similarity", "max_source_similarity"]).to_pylist():
        entry = out.setdefault(row["prompt_id"], {"max_similarity": -1.0, "max_source_similarity": None})
        entry["max_similarity"] = max(entry["max_similarity"], row["max_similarity"])
        if row["max_source_similarity"] is not None:
            entry["max_source_similarity"] = max(entry["max_source_similarity"] or -1.0, row["max_source_similarity"])
    for entry in out.values():
        entry["replicated"] = entry["max_similarity"] > threshold
        own = entry["max_source_similarity"]
        entry["replicated_own"] = own is not None and own > threshold
    return out


def measures_own_images(replication: dict[str, dict]) -> bool:
    """Whether any prompt knows its training images (so `replicated_own` is a measurement)."""
    return any(entry["max_source_similarity"] is not None for entry in replication.values())


def detection_metrics(scores: pa.Table, replication: dict[str, dict], variant: str,
                      detectors: Sequence[str] | None = None, fpr: float = 0.01) -> pa.Table:
    """One row per (detector, ground truth); by default for every detector the scores were
    written with (Wen's for each n of the detect.wen_n they were computed for, and NeMo's).
    Without measured replication (no reference images) only the `planted` truth is reported; a
    truth with one class has AUC and TPR nan (n/a), never an error."""
    if detectors is None:
        detectors = detectors_of(scores)
    rows = scores.to_pylist()
    present = [d for d in detectors if d in scores.column_names]
    measured = [r for r in rows if r["prompt_id"] in replication]
    out = []
    for detector in present:
        truths = {"planted": ([r[detector] for r in rows], [bool(r["memorized_truth"]) for r in rows])}
        if measured:
            truths["replicated"] = ([r[detector] for r in measured],
                                    [replication[r["prompt_id"]]["replicated"] for r in measured])
        if measures_own_images(replication):
            truths["replicated_own"] = ([r[detector] for r in measured],
                                        [replication[r["prompt_id"]]["replicated_own"] for r in measured])
        similarity = [replication[r["prompt_id"]]["max_similarity"] for r in measured]
        for truth, (values, labels) in truths.items():
            out.append({
                "variant": variant,
                "detector": detector,
                "n": int(detector.split("_n")[-1]) if "_n" in detector else None,
                "steps": "first" if "_first_" in detector else ("all" if "_all_" in detector else "first"),
                "truth": truth,
                "positives": sum(labels),
                "negatives": len(labels) - sum(labels),
                "auc": metrics.roc_auc(values, labels),
                "tpr_at_1pct_fpr": metrics.tpr_at_fpr(values, labels, fpr),
                "spearman_vs_similarity": metrics.spearman([r[detector] for r in measured], similarity),
            })
    return pa.Table.from_pylist(out)


def roc_points(scores: pa.Table, labels_of: dict[str, bool], detector: str) -> tuple[list[float], list[float]]:
    rows = [r for r in scores.select(["prompt_id", detector]).to_pylist() if r["prompt_id"] in labels_of]
    labels = [labels_of[r["prompt_id"]] for r in rows]
    if len(set(labels)) < 2:
        return [], []
    fpr, tpr, _ = metrics.roc_curve([r[detector] for r in rows], labels)
    return fpr.tolist(), tpr.tolist()
