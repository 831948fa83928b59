"""Exact nearest-neighbour search by cosine similarity, in memory-bounded chunks.

Queries and keys are L2-normalised, so cosine = dot product; each query chunk scans the keys in
chunks and keeps a running top-k, so peak memory is chunk_queries x chunk_keys scores whatever
the sizes (224k training images x 100k samples included).
"""

from __future__ import annotations

import torch


def topk_cosine(queries: torch.Tensor, keys: torch.Tensor, k: int = 1, chunk_queries: int = 4096,
                chunk_keys: int = 65536, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(similarities, key indices), each (Q, k), best first."""
    if keys.shape[0] == 0:
        raise ValueError("no keys to search")
    k = min(k, keys.shape[0])
    device = torch.device(device)
    sims_out = torch.empty(queries.shape[0], k)
    idx_out = torch.empty(queries.shape[0], k, dtype=torch.long)
    key_chunks = [keys[b:b + chunk_keys].to(device) for b in range(0, keys.shape[0], chunk_keys)] \
        if device.type == "cuda" and keys.numel() * 4 < 8 * 2**30 else None
    for qb in range(0, queries.shape[0], chunk_queries):
        q = queries[qb:qb + chunk_queries].to(device)
        best_s = torch.full((len(q), k), -torch.inf, device=device)
        best_i = torch.zeros((len(q), k), dtype=torch.long, device=device)
        for i, kb in enumerate(range(0, keys.shape[0], chunk_keys)):
            block = key_chunks[i] if key_chunks is not None else keys[kb:kb + chunk_keys].to(device)
            scores = q @ block.T
            s, j = torch.topk(scores, min(k, scores.shape[1]), dim=1)
            merged_s = torch.cat([best_s, s], dim=1)
            merged_i = torch.cat([best_i, j + kb], dim=1)
            best_s, order = torch.topk(merged_s, k, dim=1)
            best_i = torch.gather(merged_i, 1, order)
        sims_out[qb:qb + len(q)] = best_s.cpu()
        idx_out[qb:qb + len(q)] = best_i.cpu()
    return sims_out, idx_out
