"""k nearest training images of each generated image, by Inception features and by pixel L2 (SPEC §8).

Distances are computed in chunks of queries x references with a running top-k, so 60k training images
never need a 60k x 60k matrix: memory is O(query_chunk x reference_chunk).
"""

from __future__ import annotations

import numpy as np
import torch


def nearest_neighbours(
    queries: np.ndarray, references: np.ndarray, k: int, *, query_chunk: int = 1024, reference_chunk: int = 8192
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (N, k) into ``references`` and Euclidean distances (N, k), nearest first."""
    queries = np.asarray(queries).reshape(len(queries), -1)
    references = np.asarray(references).reshape(len(references), -1)
    if queries.shape[1] != references.shape[1]:
        raise ValueError(f"queries have {queries.shape[1]} dimensions, references {references.shape[1]}")
    if not 1 <= k <= len(references):
        raise ValueError(f"k={k} must be between 1 and the number of references ({len(references)})")
    indices = np.empty((len(queries), k), dtype=np.int64)
    distances = np.empty((len(queries), k), dtype=np.float32)
    for q0 in range(0, len(queries), query_chunk):
        q = torch.from_numpy(queries[q0 : q0 + query_chunk].astype(np.float32))
        best_d = torch.full((len(q), 0), float("inf"))
        best_i = torch.empty((len(q), 0), dtype=torch.int64)
        for r0 in range(0, len(references), reference_chunk):
            r = torch.from_numpy(references[r0 : r0 + reference_chunk].astype(np.float32))
            d = torch.cdist(q.double(), r.double()).float()
            all_d = torch.cat([best_d, d], dim=1)
            all_i = torch.cat([best_i, torch.arange(r0, r0 + len(r)).expand(len(q), -1)], dim=1)
            best_d, order = all_d.topk(min(k, all_d.shape[1]), dim=1, largest=False)
            best_i = all_i.gather(1, order)
        indices[q0 : q0 + len(q)] = best_i.numpy()
        distances[q0 : q0 + len(q)] = best_d.numpy()
    return indices, distances
