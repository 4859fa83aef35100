"""slurmkit submit against the real cluster: topology-aware placement checked against
topology.conf, submission over SSH, and hostile values through real sbatch."""

import json
import subprocess
import sys

from slurmkit.render import sbatch_quote
from slurmkit.testing.cluster import wait_until

BLOCKER = "#!/bin/bash\nsleep 300\n"


def submit_in_login(cluster, *args) -> dict:
    """`slurmkit submit` as alice on the login node; node failures from earlier tests
    are ignored (--health-since now) so that only this test's state matters."""
    result = cluster.exec("login", ["slurmkit", "submit", *args, "--json",
                                    "--health-since", "now"], user="alice", check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)



def test_two_nodes_land_on_one_leaf_whenever_possible(cluster, jobs, leaf_of, spec_path):
    def placed_nodes(blocked: list[str]) -> tuple[str, ...]:
        blockers = [jobs.submit(BLOCKER, ["-N1", "--exclusive", f"--nodelist={node}",
                                          "-J", "blocker", "-o", "/dev/null"])
                    for node in blocked]
        for blocker in blockers:
            jobs.wait_state(blocker, {"RUNNING"})
        submitted = submit_in_login(cluster, spec_path)
        jobs.job_ids.append(submitted["job_id"])
        running = jobs.wait_state(submitted["job_id"], {"RUNNING"})
        assert running.nodes == tuple(
            __import__("slurmkit.slurm.hostlist", fromlist=["expand"]).expand(
                submitted["placement"]["nodelist"]))
        jobs.client.cancel([submitted["job_id"], *blockers])
        wait_until("the scenario's jobs to leave the queue",
                   lambda: not jobs.client.jobs(job_ids=[submitted["job_id"], *blockers]),
                   timeout_s=60)
        return running.nodes

    # Everything free: one leaf.
    nodes = placed_nodes([])
    assert len({leaf_of[node] for node in nodes}) == 1, nodes
    # c1 busy: leaf1 has one free node, leaf2 two; the job must go to leaf2.
    nodes = placed_nodes(["c1"])
    assert {leaf_of[node] for node in nodes} == {leaf_of["c3"]} and "c1" not in nodes
    # One busy node on each leaf: spanning two switches is the only way.
    nodes = placed_nodes(["c1", "c3"])
    assert sorted(nodes) == ["c2", "c4"]
    assert {leaf_of[node] for node in nodes} == {leaf_of["c2"], leaf_of["c4"]}


def test_submission_over_ssh_returns_the_job_id_and_the_job_runs(cluster, jobs, tmp_path):
    spec = tmp_path / "remote.toml"
    spec.write_text('kind = "batch"\njob_name = "from-laptop"\ncommand = ["hostname"]\n'
                    'output = "/dev/null"\n')
    result = subprocess.run(
        [sys.executable, "-m", "slurmkit", "--host", cluster.ssh_target("alice"),
         "--ssh-key", str(cluster.ssh_key_path("alice")),
         "--known-hosts", str(cluster.known_hosts_path),
         "submit", str(spec), "--json", "--health-since", "off"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    job_id = json.loads(result.stdout)["job_id"]
    jobs.job_ids.append(job_id)
    record = jobs.wait_finished(job_id)
    assert record.state == "COMPLETED" and record.name == "from-laptop"


def test_sbatch_error_is_shown_with_slurms_message(cluster, spec_path):
    result = cluster.exec("login", ["slurmkit", "submit", spec_path, "-A", "no-such-account",
                                    "--health-since", "off"], user="alice", check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("error: sbatch failed")
    assert "Invalid account" in result.stderr and "Traceback" not in result.stderr


HOSTILE_NAMES = [
    'a"b', "a'b", "a\\b", "a\\\\b", "x # y", "x#y", "sp ace", "$(touch /tmp/x)", "`id`",
    "a;b", "semi;--partition=evil", "--wrap=touch /tmp/x", "ünïcødé⚡", "%j%x", "tab\there",
    "\\\"", "''", '""', "'\"'\"'", "a b\\ c", " lead", "trail ", "#", "\\#SBATCH",
]


def test_sbatch_reads_quoted_values_exactly(cluster, slurm, jobs):
    """Ground truth for the quoting model: real sbatch gets exactly the job names."""
    ids = {}
    for name in HOSTILE_NAMES:
        script = f"#!/bin/bash\n#SBATCH --job-name={sbatch_quote(name)}\ntrue\n"
        ids[jobs.submit(script, ["--hold", "-o", "/dev/null"])] = name
    names = {job.job_id: job.name for job in slurm.jobs(job_ids=list(ids))}
    assert names == ids
