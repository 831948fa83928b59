"""NeMo's per-prompt neuron file, read and written: researchers compare row by row with the
published `memorization_statistics_v1_4.csv` (Caption; URL; Initial Neurons; Initial SSIM;
Refined Neurons; Refined SSIM, neurons as one list of channel indices per searched layer)."""

from __future__ import annotations

import ast
import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HEADER = ["Caption", "URL", "Initial Neurons", "Initial SSIM", "Refined Neurons", "Refined SSIM"]


def per_layer(neurons: Sequence[int], widths: Sequence[int]) -> list[list[int]]:
    """Global neuron indices -> one list of channel indices per layer (the official file's form)."""
    out: list[list[int]] = [[] for _ in widths]
    bounds = [sum(widths[:i]) for i in range(len(widths) + 1)]
    for n in neurons:
        layer = next(i for i in range(len(widths)) if bounds[i] <= n < bounds[i + 1])
        out[layer].append(int(n) - bounds[layer])
    return out


def write_official(path: str | Path, rows: Sequence[dict[str, Any]], captions: dict[str, str],
                   widths: Sequence[int]) -> None:
    """The search's rows (one per prompt, as in neurons.parquet) in the official file's layout.
    Prompts that were not memorized get empty lists and scores 0, as the official script writes them."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter=";")
        writer.writerow(HEADER)
        for row in rows:
            memorized = bool(row["memorized"])
            writer.writerow([
                captions[row["prompt_id"]], "",
                str(per_layer(row["initial_neurons"], widths) if memorized else [[] for _ in widths]),
                row["initial_score"] if memorized else 0,
                str(per_layer(row["refined_neurons"], widths) if memorized else [[] for _ in widths]),
                row["refined_score"] if memorized else 0,
            ])


def read_official(path: str | Path) -> dict[str, dict[str, list[list[int]]]]:
    """Caption -> {'initial': per-layer lists, 'refined': per-layer lists} from an official-format file."""
    out = {}
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle, delimiter=";")
        missing = {"Caption", "Initial Neurons", "Refined Neurons"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: not a NeMo neuron file, missing column(s) {', '.join(sorted(missing))}")
        for line, row in enumerate(reader, start=2):
            try:
                out[row["Caption"].strip()] = {"initial": ast.literal_eval(row["Initial Neurons"]),
                                               "refined": ast.literal_eval(row["Refined Neurons"])}
            except (ValueError, SyntaxError) as error:
                raise ValueError(f"{path}, line {line}: neuron lists are not Python lists ({error})") from None
    return out


def compare_with_published(rows: Sequence[dict[str, Any]], captions: dict[str, str], published: dict,
                           widths: Sequence[int]) -> list[dict[str, Any]]:
    """Per prompt found in both: our and their refined neurons, the neurons in common and the Jaccard
    index (layer, channel pairs), so that a reader sees where the search agrees with the paper's."""
    out = []
    for row in rows:
        caption = captions[row["prompt_id"]].strip()
        if caption not in published or not row["memorized"]:
            continue
        ours = {(layer, c) for layer, chans in enumerate(per_layer(row["refined_neurons"], widths)) for c in chans}
        theirs = {(layer, c) for layer, chans in enumerate(published[caption]["refined"]) for c in chans}
        union = ours | theirs
        out.append({"prompt_id": row["prompt_id"], "ours": len(ours), "published": len(theirs),
                    "common": len(ours & theirs), "jaccard": len(ours & theirs) / len(union) if union else 1.0})
    return out


def published_table(compared: Sequence[dict[str, Any]]):
    """`compare_with_published`'s rows as an Arrow table (empty, with its columns, when no file is named)."""
    import pyarrow as pa

    schema = pa.schema([("prompt_id", pa.string()), ("ours", pa.int32()), ("published", pa.int32()),
                        ("common", pa.int32()), ("jaccard", pa.float64())])
    return pa.Table.from_pylist(list(compared), schema=schema)
