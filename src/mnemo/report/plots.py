"""Figures (matplotlib, PNG). Each function takes rows or arrays and a path; no computation of
metrics happens here, only drawing."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def _save(fig, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def running_mean(values: Sequence[float], window: int) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    window = max(1, min(window, len(values)))
    kernel = np.ones(window) / window
    return np.convolve(values, kernel, mode="valid")


def read_training_log(path: str | Path) -> list[dict[str, float]]:
    """The per-step training log (`training_log.csv`), numbers as numbers."""
    import csv

    with Path(path).open(newline="") as handle:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(handle)]


def plot_loss_curve(history: Sequence[dict], path: str | Path, title: str = "training loss") -> None:
    steps = np.array([r["step"] for r in history])
    loss = np.array([r["loss"] for r in history])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, loss, color="0.75", lw=0.6, label="per step")
    window = max(1, len(loss) // 50)
    smooth = running_mean(loss, window)
    ax.plot(steps[window - 1 :], smooth, color="C0", lw=1.5, label=f"mean of {window}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("noise MSE")
    ax.set_title(title)
    filtered = np.array([r.get("filtered_fraction", 0.0) for r in history])
    if filtered.any():
        twin = ax.twinx()
        twin.plot(steps[window - 1 :], running_mean(filtered, window), color="C3", lw=1, label="filtered")
        twin.set_ylabel("fraction filtered", color="C3")
        twin.set_ylim(0, 1)
    ax.legend(loc="upper right", fontsize=8)
    _save(fig, path)


def plot_neurons_per_layer(localized: Sequence[dict], layer_names: Sequence[str], path: str | Path) -> None:
    """Refined neurons of all prompts per value layer; rows of `neurons.parquet`, layers in UNet order.

    diffusers registers `up_blocks` before `mid_block`, so module order is not the data's path;
    the bars go down, mid, up.
    """
    part = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}
    layer_names = sorted(layer_names, key=lambda name: part.get(name.split(".")[0], 3))  # stable within a part
    counts = np.zeros(len(layer_names), dtype=int)
    position = {name: i for i, name in enumerate(layer_names)}
    for row in localized:
        for name in row["refined_layers"]:
            counts[position[name]] += 1
    fig, ax = plt.subplots(figsize=(6, 3.5))
    labels = [name.replace(".transformer_blocks.0.attn2.to_v", "").replace("attentions.", "a")
              for name in layer_names]
    ax.bar(range(len(layer_names)), counts, color="C0")
    ax.set_xticks(range(len(layer_names)), labels, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("neurons (all prompts)")
    ax.set_title("memorization neurons per value layer")
    _save(fig, path)


def plot_neuron_counts(localized: Sequence[dict], path: str | Path) -> None:
    """Initial and refined neurons per memorized prompt; rows of `neurons.parquet`."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    memorized = [row for row in localized if row["memorized"]]
    refined = [row["refined_count"] for row in memorized]
    initial = [row["initial_count"] for row in memorized]
    if refined:
        top = max(initial + refined + [1])
        bins = np.arange(0, top + 2) - 0.5 if top < 40 else 30
        ax.hist(initial, bins=bins, alpha=0.5, label="initial selection", color="C1")
        ax.hist(refined, bins=bins, alpha=0.8, label="refined", color="C0")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no prompt flagged", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("neurons per prompt")
    ax.set_ylabel("prompts")
    ax.set_title("memorization neurons per prompt")
    _save(fig, path)


GROUP_COLOURS = {"planted": "C3", "other": "C0", "heldout": "C2", "VM": "C3", "TM": "C1", "nonmemorized": "C0"}


def plot_detection_roc(scores, replication: dict, detectors, path: str | Path, title: str = "") -> None:
    from mnemo.detect.validation import measures_own_images, roc_points

    rows = scores.select(["prompt_id", "memorized_truth"]).to_pylist()
    truths = {"memorized (ground truth)": {r["prompt_id"]: bool(r["memorized_truth"]) for r in rows}}
    if replication:
        truths["replicates a training image"] = {pid: v["replicated"] for pid, v in replication.items()}
    if measures_own_images(replication):
        truths["replicates its own training image"] = {pid: v["replicated_own"] for pid, v in replication.items()}
    fig, axes = plt.subplots(1, len(truths), figsize=(5 * len(truths), 4.2), sharey=True, squeeze=False)
    axes = axes[0]
    for ax, (name, labels) in zip(axes, truths.items(), strict=True):
        for i, detector in enumerate(d for d in detectors if d in scores.column_names):
            fpr, tpr = roc_points(scores, labels, detector)
            if fpr:
                ax.plot(fpr, tpr, label=detector, color=f"C{i}", lw=1.3)
        ax.plot([0, 1], [0, 1], color="0.8", ls=":")
        positives = sum(labels.values())
        if positives in (0, len(labels)):
            ax.text(0.5, 0.5, f"all {len(labels)} prompts {'positive' if positives else 'negative'}:\nno ROC",
                    ha="center", va="center", transform=ax.transAxes, color="0.4")
        ax.set_title(f"{title}: vs {name} ({positives} of {len(labels)} positive)", fontsize=9)
        ax.set_xlabel("false-positive rate")
        ax.set_xscale("symlog", linthresh=0.01)
        ax.set_xlim(0, 1)
    axes[0].set_ylabel("true-positive rate")
    axes[-1].legend(fontsize=7, loc="lower right")
    _save(fig, path)


def plot_score_vs_similarity(scores, replication: dict, detector: str, threshold: float | None,
                             path: str | Path) -> None:
    rows = [r for r in scores.select(["prompt_id", "group", detector]).to_pylist() if r["prompt_id"] in replication]
    fig, ax = plt.subplots(figsize=(6, 4.2))
    if not rows:
        ax.text(0.5, 0.5, "no reference images: replication not measured", ha="center", va="center",
                transform=ax.transAxes)
        _save(fig, path)
        return
    for group in sorted({r["group"] for r in rows}):
        chosen = [r for r in rows if r["group"] == group]
        ax.scatter([r[detector] for r in chosen], [replication[r["prompt_id"]]["max_similarity"] for r in chosen],
                   label=group, s=18, color=GROUP_COLOURS.get(group), alpha=0.8)
    ax.axhline(threshold, color="0.4", ls="--", lw=1, label="calibrated threshold")
    ax.set_xlabel(detector)
    ax.set_ylabel("max similarity to nearest training image")
    ax.legend(fontsize=8)
    _save(fig, path)


def top_bottom_grid(scores, samples, matches, cache, detector: str, count: int, path: str | Path,
                    per_prompt: int = 4) -> None:
    """Rows: top and bottom prompts by score; cells: sample, its nearest training image, ..."""
    from mnemo.data.images import contact_sheet, decode_png

    ranked = sorted(scores.select(["prompt_id", detector]).to_pylist(), key=lambda r: -r[detector])
    chosen = ranked[:count] + ranked[-count:] if len(ranked) > 2 * count else ranked
    images = {} if cache is None else dict(zip(cache.column("image_id").to_pylist(),
                                               cache.column("image").to_pylist(), strict=True))
    by_sample = {} if matches is None else {
        r["sample_id"]: r for r in matches.select(["sample_id", "nn_image_id", "nn_similarity"]).to_pylist()}
    by_prompt: dict[str, list] = {}
    top_guidance = max(samples.column("guidance").to_pylist())
    for r in samples.select(["sample_id", "prompt_id", "guidance", "image"]).to_pylist():
        if r["guidance"] == top_guidance:
            by_prompt.setdefault(r["prompt_id"], []).append(r)
    rows, titles, captions = [], [], []
    for entry in chosen:
        cells, caps = [], []
        for sample in by_prompt.get(entry["prompt_id"], [])[:per_prompt]:
            cells.append(decode_png(sample["image"]))
            caps.append(f"g={sample['guidance']:g}")
            match = by_sample.get(sample["sample_id"])
            if match is not None:
                cells.append(decode_png(images[match["nn_image_id"]]))
                caps.append(f"nn {match['nn_similarity']:.2f}")
        rows.append(cells)
        captions.append(caps)
        titles.append(f"{entry['prompt_id']} {entry[detector]:.2f}")
    contact_sheet(rows, titles, cell=56, title_width=150, cell_captions=captions).save(path)
