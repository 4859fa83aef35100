"""slurmkit on the login node and from the host over SSH (paramiko, key auth,
host keys checked) see the same cluster; bad connections fail clearly."""

import json
import subprocess
import sys

import pytest

from slurmkit.errors import HostKeyMismatchError, HostKeyUnknownError, RemoteError
from slurmkit.output import to_jsonable
from slurmkit.slurm.client import SlurmClient
from slurmkit.slurm.runner import SSHRunner, SSHTarget
from slurmkit.testing.cluster import wait_until


@pytest.fixture
def ssh_runner(cluster):
    runner = SSHRunner(SSHTarget.parse(cluster.ssh_target("alice")),
                       key_path=cluster.ssh_key_path("alice"),
                       known_hosts_path=cluster.known_hosts_path)
    yield runner
    runner.close()


def _inside_login(cluster, *args: str) -> subprocess.CompletedProcess:
    """slurmkit as installed on the login node (Debian's python3), as alice."""
    return cluster.exec("login", ["slurmkit", *args], user="alice", check=False)


def _same_when_stable(read_inside, read_remote, what: str):
    """The cluster may change between two reads (a job ends); compare until two
    consecutive reads agree, within a deadline."""
    def agree():
        inside, remote = read_inside(), read_remote()
        return inside == remote and (inside,)
    return wait_until(f"{what} read inside the login node and over SSH to agree", agree,
                      timeout_s=60, interval_s=1,
                      on_timeout=lambda: f"inside: {read_inside()}\nremote: {read_remote()}")[0]


def test_queries_inside_login_and_over_ssh_give_equal_records(cluster, jobs, ssh_runner):
    job_id = jobs.submit("#!/bin/bash\nsrun hostname\n",
                         ["-N2", "-J", "same|from ünïcode", "-o", "/dev/null"])
    jobs.wait_finished(job_id)
    remote = SlurmClient(ssh_runner)

    for command, query in (("nodes", remote.nodes), ("partitions", remote.partitions)):
        records = _same_when_stable(
            lambda command=command: json.loads(
                _inside_login(cluster, "show", command, "--json").stdout),
            lambda query=query: to_jsonable(query()), command)
        assert records, command

    runs = _same_when_stable(
        lambda: json.loads(_inside_login(cluster, "show", "runs", "--json",
                                         "--job", str(job_id)).stdout),
        lambda: to_jsonable(remote.accounting(job_ids=[job_id])), "accounting")
    assert [run["name"] for run in runs] == ["same|from ünïcode"]
    assert runs[0]["nodes"] and runs[0]["state"] == "COMPLETED"

    # The parsable2 path reads the same runs as the JSON path.
    parsable = to_jsonable(list(remote.accounting_parsable(job_ids=[job_id])))
    assert [(r["job_id"], r["name"], r["nodes"], r["start_epoch_s"]) for r in parsable] == \
        [(r["job_id"], r["name"], r["nodes"], r["start_epoch_s"]) for r in runs]


def test_ssh_submission_runs_a_job(cluster, ssh_runner):
    client = SlurmClient(ssh_runner)
    submitted = client.submit("#!/bin/bash\nhostname\n", ["-N1", "-J", "over-ssh",
                                                           "-o", "/dev/null"])
    try:
        wait_until("the job submitted over SSH to be accounted as COMPLETED",
                   lambda: [r for r in client.accounting(job_ids=[submitted.job_id])
                            if r.state == "COMPLETED"], timeout_s=120)
    finally:
        client.cancel([submitted.job_id]) if client.jobs(job_ids=[submitted.job_id]) else None


def _cli(cluster, known_hosts, *args):
    return subprocess.run(
        [sys.executable, "-m", "slurmkit", "--host", cluster.ssh_target("alice"),
         "--ssh-key", str(cluster.ssh_key_path("alice")), "--known-hosts", str(known_hosts),
         *args], capture_output=True, text=True, timeout=120)


def test_host_key_mismatch_is_refused_with_the_fix(cluster, tmp_path):
    # A known_hosts entry for the login node's address, holding another key.
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    impostor = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[{cluster.ssh_host}]:{cluster.ssh_port} {impostor}\n")

    with pytest.raises(HostKeyMismatchError, match="does not match"):
        SSHRunner(SSHTarget.parse(cluster.ssh_target()), key_path=cluster.ssh_key_path("alice"),
                  known_hosts_path=known_hosts).run(["true"])

    result = _cli(cluster, known_hosts, "show", "nodes")
    assert result.returncode == 1
    assert result.stderr.startswith("error: host key of [127.0.0.1]:")
    assert "ssh-keygen -R" in result.stderr and "Traceback" not in result.stderr


def test_unknown_host_is_never_trusted_on_first_use(cluster, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(HostKeyUnknownError, match="never trusts a host key on first use"):
        SSHRunner(SSHTarget.parse(cluster.ssh_target()), key_path=cluster.ssh_key_path("alice"),
                  known_hosts_path=empty).run(["true"])


def test_wrong_key_is_an_authentication_error(cluster):
    with pytest.raises(RemoteError, match="authentication as alice"):
        SSHRunner(SSHTarget.parse(cluster.ssh_target("alice")),
                  key_path=cluster.ssh_key_path("bob"),  # bob's key is not alice's
                  known_hosts_path=cluster.known_hosts_path).run(["true"])


def test_unreachable_controller_is_named_without_a_traceback(cluster):
    # A slurm.conf whose controller port has nobody listening: the real client
    # commands fail exactly as with a dead slurmctld.
    conf = "/home/alice/unreachable-slurm.conf"
    cluster.exec("login", ["bash", "-c", "sed 's/^SlurmctldPort=.*/SlurmctldPort=6999/' "
                           f"/etc/slurm/slurm.conf > {conf}"], user="alice")
    result = cluster.exec("login", ["env", f"SLURM_CONF={conf}", "slurmkit", "show", "nodes"],
                          user="alice", check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("error: cannot reach the Slurm controller")
    assert "Unable to contact slurm controller" in result.stderr
    assert "Traceback" not in result.stderr


def test_unreachable_login_node_is_named(tmp_path):
    # Port 9 on loopback: nothing listens there on the test machine.
    result = subprocess.run([sys.executable, "-m", "slurmkit", "--host", "alice@127.0.0.1:9",
                             "show", "nodes"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith("error: cannot open an SSH connection to 127.0.0.1:9")
    assert "Traceback" not in result.stderr


def test_variables_from_the_login_shell_do_not_change_a_submission(cluster, ssh_runner):
    """A user's shell start-up file on the login node exports SBATCH_*/SLURM_* values;
    sbatch would let them override the script's #SBATCH lines (SBATCH_NO_REQUEUE beats
    #SBATCH --requeue, SBATCH_PARTITION names a partition that does not exist).
    slurmkit's SSH commands drop them."""
    bashrc = "/home/alice/.bashrc"
    assert cluster.exec("login", ["test", "-e", bashrc], check=False).returncode != 0, \
        f"{bashrc} exists: this test writes and removes it"
    cluster.exec("login", ["tee", bashrc], user="alice", input_text=(
        "export SBATCH_NO_REQUEUE=1 SBATCH_PARTITION=nowhere SLURM_CLUSTERS=nowhere\n"))
    client = SlurmClient(ssh_runner)
    job_id = None
    try:
        # The condition under test: the login shell does export them to commands.
        _, stdout, _ = ssh_runner._connect().exec_command("printenv SBATCH_NO_REQUEUE")
        assert stdout.read().decode().strip() == "1", "bash did not read ~/.bashrc over SSH"
        job_id = client.submit("#!/bin/bash\n#SBATCH --requeue\ntrue\n",
                               ["--hold", "-J", "scrubbed", "-o", "/dev/null"]).job_id
        [job] = client.jobs(job_ids=[job_id])
        assert job.requeue and job.partition != "nowhere"
    finally:
        cluster.exec("login", ["rm", "-f", bashrc])
        if job_id:
            client.cancel([job_id])
