"""Exact nearest-neighbour search: chunked top-k vs one torch matmul of the same size.

Why: matching every sample against every training image is the one quadratic step; the chunked
search must cost about what a single matmul costs while keeping memory bounded (a single matmul
of 224k training images x 100k samples would need 90 GB of scores).

    python benchmarks/nearest_neighbours.py --train 50000 --samples 10000 --dim 128
"""

from __future__ import annotations

import argparse
import time

import torch

from mnemo.copydetect.neighbours import topk_cosine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=50_000)
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--chunk-queries", type=int, default=4096)
    parser.add_argument("--chunk-keys", type=int, default=65536)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    keys = torch.nn.functional.normalize(torch.randn(args.train, args.dim, generator=generator), dim=1)
    queries = torch.nn.functional.normalize(torch.randn(args.samples, args.dim, generator=generator), dim=1)
    device = torch.device(args.device)

    tick = time.perf_counter()
    _sims, idx = topk_cosine(queries, keys, args.k, args.chunk_queries, args.chunk_keys, device)
    chunked = time.perf_counter() - tick

    tick = time.perf_counter()
    q, k = queries.to(device), keys.to(device)
    scores = q @ k.T
    if device.type == "cuda":
        torch.cuda.synchronize()
    matmul = time.perf_counter() - tick
    _best, best_idx = torch.topk(scores, args.k, dim=1)
    full = time.perf_counter() - tick
    assert torch.equal(idx, best_idx.cpu()), "chunked search disagrees with the full matmul"

    peak_chunk = args.chunk_queries * min(args.chunk_keys, args.train) * 4 / 2**20
    print(f"{args.samples} samples x {args.train} training images, dim {args.dim}, top-{args.k}, {device}")
    print(f"  chunked top-k search : {chunked:7.2f} s   (score memory <= {peak_chunk:.0f} MiB per chunk)")
    print(f"  single matmul        : {matmul:7.2f} s   (+ top-k: {full:.2f} s; {scores.numel() * 4 / 2**20:.0f} MiB)")
    print(f"  ratio chunked / matmul+topk: {chunked / full:.2f}; identical neighbours")
    rate = args.samples * args.train / chunked
    print(f"  extrapolated 100k samples x 224k images: {100_000 * 224_316 / rate / 60:.1f} min at this rate")


if __name__ == "__main__":
    main()
