"""Embedding files: Parquet with an id column and a FixedSizeList<float32> vector per row.

The descriptor's name and preprocessing recipe travel in the file's metadata and in a column, so
every similarity computed from it can say which recipe it came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch


@dataclass
class Embeddings:
    ids: list[str]
    vectors: torch.Tensor   # (N, D) float32, rows L2-normalised
    descriptor: str
    recipe: str


def to_table(embeddings: Embeddings) -> pa.Table:
    vectors = embeddings.vectors.detach().cpu().float().contiguous().numpy()
    dim = vectors.shape[1] if vectors.ndim == 2 else 0
    values = pa.array(vectors.reshape(-1), type=pa.float32())
    column = pa.FixedSizeListArray.from_arrays(values, dim)
    table = pa.table({
        "id": pa.array(embeddings.ids, type=pa.string()),
        "embedding": column,
    })
    return table.replace_schema_metadata({
        "mnemo.descriptor": embeddings.descriptor,
        "mnemo.recipe": embeddings.recipe,
        "mnemo.dim": str(dim),
    })


def write_embeddings(embeddings: Embeddings, path: str | Path) -> None:
    from mnemo.workflow import write_parquet

    write_parquet(to_table(embeddings), path)


def read_embeddings(path: str | Path) -> Embeddings:
    table = pq.read_table(path)
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    dim = int(meta.get("mnemo.dim", 0))
    flat = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    vectors = torch.from_numpy(np.array(flat, dtype=np.float32).reshape(len(table), dim))   # a writable copy
    return Embeddings(table.column("id").to_pylist(), vectors, meta.get("mnemo.descriptor", ""),
                      meta.get("mnemo.recipe", ""))


def embed_in_chunks(descriptor, images: torch.Tensor, chunk: int = 1024, on_chunk=None) -> torch.Tensor:
    """descriptor.embed over chunks of images, calling `on_chunk(i)` after each (progress, tests)."""
    parts = []
    for i, begin in enumerate(range(0, len(images), chunk), start=1):
        parts.append(descriptor.embed(images[begin:begin + chunk]))
        if on_chunk is not None:
            on_chunk(i)
    return torch.cat(parts) if parts else torch.empty(0, descriptor.dim)
