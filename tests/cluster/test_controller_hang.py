"""The harness's own recovery from a hung slurmctld (`Cluster.reconfigure`): run by
`make test-slow`, not `make test`, which must stay under 10 minutes. It tests the
harness, not slurmkit; the healing itself runs in every `make test` when it is needed."""


def test_a_controller_hung_in_reconfigure_is_diagnosed_and_restarted(cluster, slurm):
    # Once in CI slurmctld never answered after `scontrol reconfigure` and every later
    # test failed on it. A stopped slurmctld stands in for that hang: the harness must
    # notice it, keep what the controller showed and bring it back with its jobs' state.
    before = set(cluster.state_dir.glob("ctl-diagnosis-*.txt"))
    # A reconfigure first saves all of slurmctld's state: the restart after the stop
    # must not lose the last job ids (they would be given again, and later tests would
    # read a finished job's accounting records as their own job's).
    cluster.reconfigure()
    cluster.exec("ctl", ["pkill", "-STOP", "-x", "slurmctld"])
    cluster.reconfigure(answer_s=10)
    [diagnosis] = set(cluster.state_dir.glob("ctl-diagnosis-*.txt")) - before
    text = diagnosis.read_text()
    assert text.startswith("silent 10 s after scontrol reconfigure")
    assert "--- threads of" in text and "slurmctld" in text
    assert cluster.health("ctl") == "healthy"
    assert sorted(node.name for node in slurm.nodes()) == ["c1", "c2", "c3", "c4"]
    diagnosis.unlink()
