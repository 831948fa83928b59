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


def nearest_guidance(available: Sequence[float], wanted: float) -> float:
    """The sampled guidance scale closest to `wanted` (the lower one of a tie)."""
    return min(set(available), key=lambda g: (abs(g - wanted), g))


def top_bottom_grid(scores, samples, matches, cache, detector: str, count: int, path: str | Path,
                    per_prompt: int = 4, guidance: float = 3.0) -> None:
    """Rows: top and bottom prompts by score; cells: sample, its nearest training image, ... at the
    sampled guidance nearest `guidance` (users sample near 3; at 7.5 samples saturate)."""
    from mnemo.data.images import contact_sheet, decode_png

    ranked = sorted(scores.select(["prompt_id", detector]).to_pylist(), key=lambda r: -r[detector])
    chosen = ranked[:count] + ranked[-count:] if len(ranked) > 2 * count else ranked
    images = {} if cache is None else dict(zip(cache.column("image_id").to_pylist(),
                                               cache.column("image").to_pylist(), strict=True))
    by_sample = {} if matches is None else {
        r["sample_id"]: r for r in matches.select(["sample_id", "nn_image_id", "nn_similarity"]).to_pylist()}
    by_prompt: dict[str, list] = {}
    shown = nearest_guidance(samples.column("guidance").to_pylist(), guidance)
    for r in samples.select(["sample_id", "prompt_id", "guidance", "image"]).to_pylist():
        if r["guidance"] == shown:
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


# ---------------------------------------------------------------------------------------------
# Image grids drawn with PIL: a tile per image at a fixed cell size, labels left, captions under
# ---------------------------------------------------------------------------------------------

Tile = dict  # {"image": uint8 (C, H, W) or PNG bytes, "caption": str, "border": colour or None}; None = gap


def _tile_image(image, cell: int):
    from PIL import Image

    from mnemo.data.images import decode_png

    array = decode_png(image) if isinstance(image, bytes | bytearray) else np.asarray(image)
    array = np.moveaxis(array, 0, -1)
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    tile = Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8))
    upscale = tile.width <= cell
    return tile.resize((cell, cell), Image.NEAREST if upscale else Image.LANCZOS)


def image_grid(rows: Sequence[Sequence[Tile | None]], labels: Sequence[Sequence[str]], path: str | Path,
               header: Sequence[str] = (), column_titles: Sequence[tuple[int, str]] = (), cell: int = 48,
               label_width: int = 120, gap: int = 8) -> tuple[int, int]:
    """Rows of tiles (None = a gap), each row with its label lines at the left, header lines on top
    and column titles at given x offsets (in tiles) over the first row; returns the PNG's size."""
    from PIL import Image, ImageDraw

    line, caption_h, pad = 12, 12, 2
    def width_of(row):
        return sum(gap if tile is None else cell + pad for tile in row)

    top = len(header) * line + (line if column_titles else 0) + 4
    row_h = cell + caption_h + 4
    width = label_width + max([width_of(r) for r in rows] + [cell]) + 4
    width = max(width, 8 + 6 * max([len(h) for h in header] + [0]))
    height = top + max(1, len(rows)) * row_h
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    for i, text in enumerate(header):
        draw.text((4, 2 + i * line), text, fill="black")
    x_of = {}
    for row in rows[:1]:
        x = label_width
        for position, tile in enumerate(row):
            x_of[position] = x
            x += gap if tile is None else cell + pad
    for position, text in column_titles:
        if position in x_of:
            draw.text((x_of[position] + 2, top - line), text, fill=(80, 80, 80))
    for r, row in enumerate(rows):
        y = top + r * row_h
        for i, text in enumerate(labels[r] if r < len(labels) else []):
            draw.text((4, y + 2 + i * line), str(text)[: label_width // 6], fill="black")
        x = label_width
        for tile in row:
            if tile is None:
                x += gap
                continue
            if tile.get("image") is not None:
                sheet.paste(_tile_image(tile["image"], cell), (x, y))
            else:
                draw.rectangle([x, y, x + cell - 1, y + cell - 1], outline=(200, 200, 200))
            if tile.get("border"):
                draw.rectangle([x - 1, y - 1, x + cell, y + cell], outline=tile["border"], width=2)
            if tile.get("caption"):
                draw.text((x + 1, y + cell + 1), tile["caption"][: cell // 6 + 1], fill=tile.get("border") or "black")
            x += cell + pad
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return sheet.size


def _balanced(prompt_ids: Sequence[str], groups: dict[str, str], count: int) -> list[str]:
    """At most `count` prompts, taken in turn from each group (in order of first appearance)."""
    if len(prompt_ids) <= count:
        return list(prompt_ids)
    queues: dict[str, list[str]] = {}
    for pid in prompt_ids:
        queues.setdefault(groups.get(pid, ""), []).append(pid)
    chosen: list[str] = []
    while len(chosen) < count:
        for queue in queues.values():
            if queue and len(chosen) < count:
                chosen.append(queue.pop(0))
    return [pid for pid in prompt_ids if pid in set(chosen)]


def sheet_layout(rows: Sequence[dict], groups: dict[str, str], guidance: float = 3.0, max_prompts: int = 32,
                 max_seeds: int = 8) -> tuple[float, dict[str, dict[int, dict]]]:
    """What a contact sheet shows of a sample set (rows with prompt_id, guidance, sample_index):
    the sampled guidance nearest `guidance`, and per prompt (at most `max_prompts`, in turn from
    each group) its first `max_seeds` samples by index."""
    if not rows:
        return guidance, {}
    shown = nearest_guidance([r["guidance"] for r in rows], guidance)
    by_prompt: dict[str, dict[int, dict]] = {}
    for r in rows:
        if r["guidance"] == shown and r["sample_index"] < max_seeds:
            by_prompt.setdefault(r["prompt_id"], {})[r["sample_index"]] = r
    chosen = _balanced(list(by_prompt), groups, max_prompts)
    return shown, {pid: by_prompt[pid] for pid in chosen}


def sample_sheet(samples, path: str | Path, matches=None, training: dict[str, bytes] | None = None,
                 threshold: float | None = None, groups: dict[str, str] | None = None, guidance: float = 3.0,
                 max_prompts: int = 32, max_seeds: int = 8, cell: int = 48, title: str = "") -> tuple[int, int]:
    """Contact sheet of one sample set: a row per prompt, a column per seed (sample index), at the
    sampled guidance nearest `guidance`; each sample followed by its nearest training image (from
    `matches`: sample_id, nn_image_id, nn_similarity; `training`: image id -> PNG), captioned with
    their similarity, framed red above `threshold`. Without matches: the samples alone. Returns
    the PNG's size."""
    groups = groups or {}
    rows_of = samples.select(["sample_id", "prompt_id", "guidance", "sample_index", "image"]).to_pylist()
    shown, by_prompt = sheet_layout(rows_of, groups, guidance, max_prompts, max_seeds)
    nearest = {} if matches is None else {
        m["sample_id"]: m for m in matches.select(["sample_id", "nn_image_id", "nn_similarity"]).to_pylist()}
    paired = matches is not None and training is not None
    seeds = sorted({i for cells in by_prompt.values() for i in cells})
    rows, labels = [], []
    for pid, cells in by_prompt.items():
        row: list[Tile | None] = []
        for seed in seeds:
            sample = cells.get(seed)
            if row and paired:
                row.append(None)
            row.append({"image": sample["image"] if sample else None, "caption": "" if sample else "missing"})
            if paired:
                match = nearest.get(sample["sample_id"]) if sample else None
                if match is None:
                    row.append({"image": None, "caption": "n/a"})
                    continue
                above = threshold is not None and match["nn_similarity"] > threshold
                row.append({"image": training.get(match["nn_image_id"]), "caption": f"nn {match['nn_similarity']:.2f}",
                            "border": (200, 0, 0) if above else None})
        rows.append(row)
        labels.append([pid, groups.get(pid, "")])
    if paired:
        above = f" (red: above the calibrated threshold {threshold:.2f})" if threshold is not None else ""
        what = f"; each sample, then its nearest training image and their similarity{above}"
    else:
        what = "; no training images to match against"
    header = [title or "samples", f"guidance {shown:g}; a row per prompt, a column per seed{what}"]
    titles = [(i * (3 if paired else 1), f"seed #{seed}") for i, seed in enumerate(seeds)]
    return image_grid(rows, labels, path, header=header, column_titles=titles, cell=cell)


def preview_image_ids(prompts, image_ids: Sequence[str], max_prompts: int = 8, per_row: int = 8,
                      others: int = 16, seed: int = 0) -> tuple[list[tuple[dict, list[str]]], list[str]]:
    """Which training images `data_preview` draws: (prompt row, its image ids) per prompt listed
    as memorized, and other images drawn at random (seeded), in cache order."""
    present = set(image_ids)
    listed = [r for r in prompts.select(["prompt_id", "group", "memorized_truth", "source_image_ids"]).to_pylist()
              if r["memorized_truth"]][:max_prompts]
    rows = [(r, [i for i in r["source_image_ids"] if i in present][:per_row]) for r in listed]
    shown = {i for _, ids in rows for i in ids}
    rest = [i for i in image_ids if i not in shown]
    chosen = sorted(np.random.default_rng(seed).permutation(len(rest))[:others].tolist())
    return rows, [rest[i] for i in chosen]


def data_preview(prompts, image_ids: Sequence[str], training: dict[str, bytes], path: str | Path,
                 summary: dict | None = None, max_prompts: int = 8, per_row: int = 8, others: int = 16,
                 seed: int = 0, cell: int = 48) -> tuple[int, int]:
    """What the model trains on: a row per prompt listed as memorized (planted, or the prompt
    files' memorized ones) with its training images, then rows of other training images (drawn at
    random, seeded). `image_ids`: every cached image; `training`: image id -> PNG of at least those
    `preview_image_ids` names; `summary`: the cache summary (counts)."""
    listed, chosen = preview_image_ids(prompts, image_ids, max_prompts, per_row, others, seed)
    rows, labels = [], []
    for r, ids in listed:
        rows.append([{"image": training[i]} for i in ids] or [{"image": None, "caption": "none"}])
        n = len(r["source_image_ids"])
        labels.append([r["prompt_id"], f"{r['group']}, {n} image{'' if n == 1 else 's'}"])
    for begin in range(0, len(chosen), per_row):
        rows.append([{"image": training[i]} for i in chosen[begin : begin + per_row]])
        labels.append(["other images" if begin == 0 else ""])
    header = ["training data: the images of the prompts listed as memorized, then other images at random"]
    if summary:
        header.append(", ".join(f"{key.replace('_', ' ')} {summary[key]}" for key in
                                ("images_cached", "images_rejected", "patients", "resolution") if key in summary))
    return image_grid(rows, labels, path, header=header, cell=cell)
