"""Parallel layout planning (pure): TP x PP x DP and gradient accumulation for the
GPUs a run got, with the global batch unchanged.

When a job restarts on fewer nodes (1000 GPUs -> 900), the model-parallel degree
(TP x PP) is what the model needs to fit; data parallelism takes what is left, and
gradient accumulation makes up the difference so that every optimizer step still
sees ``global_batch`` samples:

    global_batch = dp x micro_batch x grad_accum

TP stays inside a node (NVLink), PP stages are spread over nodes; ``rank_order``
lays ranks out so that each pipeline group sits under as few leaf switches as possible.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from slurmkit.errors import UserInputError

#: Bounds on every size that reaches a loop: far above any cluster (10 million GPUs,
#: a 1024-GPU node, a billion-sample batch), far below what would hang the planner.
MAX_GPUS = 10_000_000
MAX_GPUS_PER_NODE = 1024
MAX_BATCH = 1_000_000_000
MAX_PP = 1024
MAX_LAYERS = 1_000_000


@dataclass(frozen=True)
class Layout:
    gpus: int  # GPUs the run has
    tp: int
    pp: int
    dp: int
    micro_batch: int
    grad_accum: int
    global_batch: int

    @property
    def gpus_used(self) -> int:
        return self.tp * self.pp * self.dp

    @property
    def model_parallel(self) -> int:
        return self.tp * self.pp

    def to_dict(self) -> dict:
        return {**asdict(self), "gpus_used": self.gpus_used}


def _divisors(number: int) -> list[int]:
    """Sorted divisors, in O(sqrt(number))."""
    small, large = [], []
    d = 1
    while d * d <= number:
        if number % d == 0:
            small.append(d)
            if d * d != number:
                large.append(number // d)
        d += 1
    return small + large[::-1]


def plan(gpus: int, *, gpus_per_node: int, model_gb: float, gpu_memory_gb: float,
         global_batch: int, micro_batch: int, memory_reserve: float = 0.25,
         max_tp: int | None = None, max_pp: int = 8, layers: int | None = None) -> Layout:
    """The layout for ``gpus`` GPUs. Model states (weights, gradients, optimizer:
    ``model_gb`` in total) are split over TP x PP; ``memory_reserve`` of each GPU is
    kept for activations. Raises UserInputError when the model cannot fit or the
    global batch cannot be kept."""
    problems = []
    for name, value, high in (("gpus", gpus, MAX_GPUS),
                              ("gpus_per_node", gpus_per_node, MAX_GPUS_PER_NODE),
                              ("global_batch", global_batch, MAX_BATCH),
                              ("micro_batch", micro_batch, MAX_BATCH),
                              ("max_pp", max_pp, MAX_PP),
                              ("max_tp", max_tp or 1, MAX_GPUS_PER_NODE),
                              ("layers", layers or 1, MAX_LAYERS)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
            problems.append(f"{name} must be an integer from 1 to {high}, not {value!r}")
    if not isinstance(memory_reserve, (int, float)) or not 0 <= memory_reserve < 1:
        problems.append("memory_reserve must be in [0, 1)")
    for name, value in (("model_gb", model_gb), ("gpu_memory_gb", gpu_memory_gb)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or not 0 < value <= 1e12:
            problems.append(f"{name} must be a positive finite number, not {value!r}")
    if problems:
        raise UserInputError("cannot plan: " + "; ".join(problems))
    usable_gb = gpu_memory_gb * (1 - memory_reserve)
    tp_choices = [d for d in _divisors(gpus_per_node) if d <= (max_tp or gpus_per_node)]
    candidates = []
    for tp in tp_choices:
        for pp in range(1, min(gpus // tp, max_pp) + 1):
            if layers and layers % pp:
                continue
            if model_gb / (tp * pp) > usable_gb:
                continue
            candidates.append((tp * pp, pp, tp))  # least model parallelism first, then less PP
    if not candidates:
        raise UserInputError(
            f"the model ({model_gb:g} GB of states) cannot fit in {gpus} GPUs of "
            f"{gpu_memory_gb:g} GB ({usable_gb:g} GB usable each, TP <= "
            f"{max(tp_choices)} within a node): at least "
            f"{-(-model_gb // usable_gb):.0f} GPUs are needed")
    if global_batch % micro_batch:
        raise UserInputError(f"global_batch {global_batch} is not a multiple of "
                             f"micro_batch {micro_batch}")
    micro_batches = global_batch // micro_batch
    dp_choices = _divisors(micro_batches)  # dp must divide the micro-batches
    best: tuple[tuple[int, int, int], Layout] | None = None
    for model_parallel, pp, tp in candidates:
        # The largest dp that fits the GPUs left: one bisection, not a scan of them.
        fits = bisect.bisect_right(dp_choices, gpus // model_parallel)
        if not fits:
            continue
        dp = dp_choices[fits - 1]
        layout = Layout(gpus, tp, pp, dp, micro_batch, micro_batches // dp, global_batch)
        # Useful work: busy GPUs minus the pipeline bubble of a 1F1B schedule,
        # (pp - 1) / (grad_accum + pp - 1); then the least model parallelism.
        bubble = (pp - 1) / (layout.grad_accum + pp - 1)
        key = (-round(layout.gpus_used * (1 - bubble), 6), model_parallel, pp)
        if best is None or key < best[0]:
            best = (key, layout)
    if best is None:
        raise UserInputError(f"no layout keeps the global batch {global_batch} on {gpus} GPUs")
    return best[1]


def rank_order(nodes: Sequence[str], leaf_of: Mapping[str, str], pp: int) -> list[str]:
    """Nodes ordered so that consecutive ranks (a pipeline group's stages) share a leaf
    switch where possible: nodes grouped by leaf, fullest leaves first."""
    by_leaf: dict[str, list[str]] = {}
    for node in nodes:
        by_leaf.setdefault(leaf_of.get(node, "?"), []).append(node)
    ordered = []
    for _, members in sorted(by_leaf.items(), key=lambda item: (-len(item[1]), item[0])):
        ordered.extend(members)
    return ordered
