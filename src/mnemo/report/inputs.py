"""Reading what the report's figures show: training images by id, without loading the cache."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


def cache_image_ids(cache_dir: str | Path) -> list[str]:
    """Every image id of a training cache, in cache order."""
    from mnemo.data.dataset import read_cache

    return read_cache(cache_dir, columns=["image_id"]).column("image_id").to_pylist()


def training_images(cache_dir: str | Path, image_ids: Iterable[str]) -> dict[str, bytes]:
    """image id -> PNG bytes for the given ids only (a pushed-down filter over the cache's shards)."""
    import pyarrow.dataset as ds

    wanted = sorted(set(image_ids))
    if not wanted:
        return {}
    shards = sorted(str(p) for p in Path(cache_dir).glob("part-*.parquet"))
    table = ds.dataset(shards, format="parquet").to_table(
        columns=["image_id", "image"], filter=ds.field("image_id").isin(wanted))
    return dict(zip(table.column("image_id").to_pylist(), table.column("image").to_pylist(), strict=True))
