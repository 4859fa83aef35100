"""Resharding data-parallel shards (pure NumPy).

ZeRO-style training splits a flat buffer (optimizer state, sometimes parameters)
evenly over the data-parallel ranks, padding the end. When a job restarts with a
different DP size, every new rank needs its slice of the same logical buffer: join
the old shards, drop the padding, split again.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from slurmkit.ckpt.store import CheckpointError


def shard_bounds(length: int, world: int, rank: int) -> tuple[int, int]:
    """[start, stop) of ``rank``'s slice of a flat buffer of ``length`` elements split
    over ``world`` ranks (equal slices of ceil(length / world); the last may be short)."""
    if world < 1 or not 0 <= rank < world:
        raise CheckpointError(f"rank {rank} is not in a world of {world}")
    size = -(-length // world)
    start = min(rank * size, length)
    return start, min(start + size, length)


def shard(buffer: np.ndarray, world: int, rank: int) -> np.ndarray:
    start, stop = shard_bounds(buffer.size, world, rank)
    return buffer.reshape(-1)[start:stop]


def reshard(shards: Sequence[np.ndarray], length: int, new_world: int, rank: int) -> np.ndarray:
    """``rank``'s slice for ``new_world`` ranks, from the ``len(shards)`` old slices of
    a buffer of ``length`` elements."""
    if sum(part.size for part in shards) != length:
        raise CheckpointError(f"shards hold {sum(part.size for part in shards)} elements, "
                              f"the buffer has {length}: a shard is missing or damaged")
    full = np.concatenate([np.asarray(part).reshape(-1) for part in shards])
    return shard(full, new_world, rank).copy()
