"""Dataset cache throughput: images/s for CheXpert-layout DICOM studies -> Parquet shards.

Why: the cache is the only stage that touches every raw image (224k for CheXpert), so its speed
and its use of both cores decide how long a new dataset takes to become usable.

    python benchmarks/cache_throughput.py                     # 2,000 phantom images at 256 px
    python benchmarks/cache_throughput.py --size 512 --patients 150
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from mnemo.data.dataset import CacheConfig, build_cache
from mnemo.phantoms import generate_phantom_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=700, help="train patients (about 2.9 images each)")
    parser.add_argument("--size", type=int, default=256, help="DICOM matrix size")
    parser.add_argument("--resolution", type=int, default=32, help="cache resolution")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tick = time.perf_counter()
        summary = generate_phantom_dataset(root / "phantoms", {"patients": args.patients, "valid_patients": 0,
                                                              "size": args.size}, workers=2)
        print(f"phantoms: {summary.train_images} DICOM images of {args.size}x{args.size} written in "
              f"{time.perf_counter() - tick:.1f} s")
        for workers in args.workers:
            config = CacheConfig(resolution=args.resolution, workers=workers)
            result = build_cache(root / "phantoms" / "train.csv", root, root / f"cache{workers}", config,
                                 b"benchmark-salt-0123456789", progress=False)
            print(f"cache {args.size}px -> {args.resolution}px, {workers} worker(s): {result.images_cached} images "
                  f"in {result.seconds:.1f} s = {result.images_per_second:.0f} images/s")


if __name__ == "__main__":
    main()
