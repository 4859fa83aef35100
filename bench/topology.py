"""Placement on a synthetic 100k-GPU fat tree, against naive first-fit, in one run.

12,500 nodes x 8 GPUs; 3 levels: leaf switches of 32 nodes, spines of 16 leaves, one
core. 60 % of the nodes are busy in a fragmented pattern (each leaf draws its own
busy fraction, so some leaves are nearly full and others nearly empty, and busy nodes
come in runs, as jobs leave them). Each trial places a 1024-node request with
slurmkit's placement and with first-fit, and checks the leaf-switch count against an
exact solver: a dynamic program over subset sums (not the greedy argument the
placement relies on) giving the fewest leaves that can hold the request.

Target (issue 3): median placement <= 50 ms, leaf switches = optimal.
Final line: {"median_ms", "leaf_switches", "optimal_leaf_switches",
             "baseline_median_ms", "baseline_leaf_switches", ...}
"""

from __future__ import annotations

import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from slurmkit.topology.model import Topology, parse_topology  # noqa: E402
from slurmkit.topology.placement import first_fit, leaves_spanned, place  # noqa: E402

NODES = 12_500
NODES_PER_LEAF = 32
LEAVES_PER_SPINE = 16
BUSY_FRACTION = 0.60
REQUEST = 1024
TRIALS = int(os.environ.get("BENCH_TRIALS", "15"))


def fat_tree() -> Topology:
    lines = []
    leaves = (NODES + NODES_PER_LEAF - 1) // NODES_PER_LEAF
    for leaf in range(leaves):
        first, last = leaf * NODES_PER_LEAF, min(NODES, (leaf + 1) * NODES_PER_LEAF) - 1
        lines.append(f"SwitchName=leaf{leaf:03d} Nodes=gpu[{first:05d}-{last:05d}]")
    spines = (leaves + LEAVES_PER_SPINE - 1) // LEAVES_PER_SPINE
    for spine in range(spines):
        first, last = spine * LEAVES_PER_SPINE, min(leaves, (spine + 1) * LEAVES_PER_SPINE) - 1
        lines.append(f"SwitchName=spine{spine:02d} Switches=leaf[{first:03d}-{last:03d}]")
    lines.append(f"SwitchName=core Switches=spine[00-{spines - 1:02d}]")
    return parse_topology("\n".join(lines), "synthetic fat tree")


def fragmented_free(topology: Topology, seed: int) -> list[str]:
    """About BUSY_FRACTION busy; per-leaf fractions from a Beta distribution, busy
    nodes in runs inside each leaf."""
    randomness = random.Random(seed)
    free = []
    for leaf in topology.leaves:
        nodes = topology.switches[leaf].nodes
        busy_share = randomness.betavariate(1.2, 0.8)  # mean 0.6, wide spread
        position = 0
        while position < len(nodes):
            run = randomness.randint(1, 6)
            busy = randomness.random() < busy_share
            if not busy:
                free.extend(nodes[position:position + run])
            position += run
    return free


def exact_min_leaves(topology: Topology, free: list[str], count: int) -> int | None:
    """Fewest leaves whose free nodes sum to >= count, by DP over reachable sums.

    reach[k] is a bitset of the sums reachable with exactly k leaves (sums >= count
    collapse into bit ``count``). Independent of the placement's greedy argument.
    """
    counts: dict[str, int] = {}
    for node in free:
        leaf = topology.leaf_of[node]
        counts[leaf] = counts.get(leaf, 0) + 1
    mask = (1 << (count + 1)) - 1
    reach = [1]  # reach[0]: only the empty sum
    for value in counts.values():
        reach.append(0)
        for k in range(len(reach) - 2, -1, -1):
            shifted = reach[k] << value
            if shifted >> count:
                shifted |= 1 << count
            reach[k + 1] |= shifted & mask
    for k, bits in enumerate(reach):
        if bits >> count & 1:
            return k
    return None


def main() -> None:
    topology = fat_tree()
    assert len(topology.leaf_of) == NODES
    times_ms, baseline_ms, ours, baselines, optima = [], [], [], [], []
    for trial in range(TRIALS):
        free = fragmented_free(topology, seed=trial)
        started = time.perf_counter()
        decision = place(topology, free, REQUEST)
        times_ms.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        naive = first_fit(topology, free, REQUEST)
        baseline_ms.append((time.perf_counter() - started) * 1000)
        assert len(decision.nodes) == REQUEST and len(set(decision.nodes)) == REQUEST
        assert set(decision.nodes) <= set(free)
        ours.append(leaves_spanned(topology, decision.nodes))
        baselines.append(leaves_spanned(topology, naive))
        optima.append(exact_min_leaves(topology, free, REQUEST))
        print(json.dumps({"trial": trial, "free_nodes": len(free), "ms": round(times_ms[-1], 2),
                          "leaf_switches": ours[-1], "optimal": optima[-1],
                          "first_fit_leaf_switches": baselines[-1]}), file=sys.stderr)
    result = {
        "median_ms": round(statistics.median(times_ms), 2),
        "leaf_switches": int(statistics.median(ours)),
        "optimal_leaf_switches": int(statistics.median(optima)),
        "baseline_median_ms": round(statistics.median(baseline_ms), 2),
        "baseline_leaf_switches": int(statistics.median(baselines)),
        "optimal_in_every_trial": ours == optima,
        "trials": TRIALS, "nodes": NODES, "gpus": NODES * 8, "request_nodes": REQUEST,
        "busy_fraction": BUSY_FRACTION,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
