"""The router's side of `slurmkit serve` on one machine (`slurmkit.testing.serve_local`):
the real controller, the real HAProxy and the example model server, with local
processes standing in for Slurm. No Slurm is needed, only HAProxy, so it runs in a
throw-away container of the node image (which has HAProxy) beside the cluster tests
rather than in their queue. Drain before removal with no failed request, a killed and a
hung replica replaced, a restarted controller adopting, nothing left after the stop."""

from __future__ import annotations

import json
import subprocess

from slurmkit.testing.cluster import REPO_ROOT, ensure_images


def test_the_router_side_on_one_machine_with_the_real_haproxy():
    image = ensure_images()  # built by `make test`'s `cluster up` already; else built here
    result = subprocess.run(
        ["docker", "run", "--rm", "--user", "alice", "--workdir", "/opt/slurmkit",
         "--volume", f"{REPO_ROOT}:/opt/slurmkit:ro", "--entrypoint", "python3", image,
         "-m", "slurmkit.testing.serve_local"],
        capture_output=True, text=True, timeout=300, check=False)
    lines = result.stdout.strip().splitlines()
    assert lines, (result.returncode, result.stderr[-3000:])
    report = json.loads(lines[-1])
    assert report["ok"] and result.returncode == 0, (report, result.stderr[-3000:])
    print(f"serve_local: {report}")
