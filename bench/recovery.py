"""Recovery from a lost node at Slurm's default timeouts, on the docker-slurm cluster
(needs it; `make bench` brings it up): a short fault campaign of in-place restarts
(`slurmkit launch`: node crash, node crash with a hot spare, rank crash, network cut,
the checkpoint writer killed mid-write, slurmctld restarting during the recovery) and,
in the same run, the baseline a site has without it: a node crash on Slurm's requeue
path (detection after SlurmdTimeout=300 s, requeue, cred_expire=120 s).

Measured per fault: the time from the fault to the first resumed training step, and the
steps lost. Final line: one JSON object with `inplace_median_s`, `requeue_median_s`,
`faults`, `steps_lost_max`, `slurmd_timeout_s` and the campaign's other figures.
Goal (issue 10): in-place median <= 10 s at the default SlurmdTimeout; <= 1 step lost.

    python bench/recovery.py [--faults 6] [--baseline 1] [--seed N]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from slurmkit.testing.campaign import run_campaign  # noqa: E402
from slurmkit.testing.cluster import Cluster, exclusive_use  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faults", type=int, default=6, help="in-place faults (>= 5)")
    parser.add_argument("--baseline", type=int, default=1, help="requeue-path faults (>= 1)")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    with exclusive_use("bench/recovery.py"):
        summary = run_campaign(Cluster(), args.faults, args.baseline, seed, "site")
    keys = ("inplace_median_s", "requeue_median_s", "faults", "steps_lost_max",
            "slurmd_timeout_s")
    line = {key: summary[key] for key in keys}
    line.update({key: value for key, value in summary.items() if key not in keys})
    print(json.dumps(line))
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
