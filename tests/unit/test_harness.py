"""The pure parts of the docker-slurm harness."""

import subprocess

import pytest

from slurmkit.errors import ClusterHarnessError
from slurmkit.testing import cluster


def test_mirror_from_deb822_sources_skips_security(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\n# http://snapshot.example/archive\nURIs: http://security.example/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n\n"
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n")
    assert cluster.apt_mirror(tmp_path) == "http://mirror.example/debian"


def test_mirror_from_one_line_sources(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(
        "deb http://security.example/debian-security bookworm-security main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bookworm main\n")
    assert cluster.apt_mirror(tmp_path) == "http://mirror.example/debian"


def test_no_mirror_says_how_to_proceed(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    with pytest.raises(ClusterHarnessError, match="SLURMKIT_BASE_IMAGE"):
        cluster.apt_mirror(tmp_path)


def test_image_tags_are_content_addressed():
    base = cluster.base_image_tag()
    assert base == cluster.base_image_tag() and base.startswith("slurmkit-base:")
    node = cluster.node_image_tag(base)
    assert node.startswith("slurmkit-node:") and node != cluster.node_image_tag(base + "x")


def test_package_list_has_the_slurm_daemons():
    packages = cluster.package_list()
    assert {"slurmctld", "slurmd", "slurmdbd", "munge", "mariadb-server"} <= set(packages)
    assert all(not package.startswith("#") for package in packages)


def test_wait_until_returns_the_value_or_explains_the_timeout():
    values = iter([0, 0, "ready"])
    assert cluster.wait_until("x", lambda: next(values), timeout_s=5, interval_s=0.01) == "ready"
    with pytest.raises(ClusterHarnessError, match="waiting for never: still 0"):
        cluster.wait_until("never", lambda: 0, timeout_s=0.05, interval_s=0.01,
                           on_timeout=lambda: "still 0")


def test_survivors_save_tells_a_written_checkpoint_from_a_periodic_one_already_there():
    from slurmkit.testing.training import survivors_save

    def checkpoint(kind, step, run=0):
        return {"event": "checkpoint", "kind": kind, "step": step, "run": run, "committed": True}

    exists = {"event": "checkpoint-exists", "kind": "triggered", "step": 80, "run": 0}
    assert survivors_save([checkpoint("periodic", 60), checkpoint("triggered", 73)]) \
        == (73, "triggered")
    assert survivors_save([checkpoint("periodic", 80), exists]) == (80, "periodic")
    # A survivor found the step another survivor just committed, whose event is not
    # logged yet: not an answer yet.
    assert survivors_save([checkpoint("periodic", 60), exists]) is None
    assert survivors_save([exists, checkpoint("triggered", 80)]) == (80, "triggered")
    assert survivors_save([checkpoint("triggered", 80, run=1)]) is None


def test_the_cluster_is_held_by_one_session_at_a_time(tmp_path, monkeypatch):
    monkeypatch.setattr(cluster, "LOCK_PATH", tmp_path / "cluster.lock")
    with cluster.exclusive_use("make demo"):
        with pytest.raises(ClusterHarnessError, match=r"in use by make demo \(pid \d+\): run "
                           r"a test session again"):
            with cluster.exclusive_use("a test session"):
                pass
    with cluster.exclusive_use("a test session"):  # released: free again
        pass


def test_nodes_set_down_are_read_from_the_controller_log(monkeypatch):
    log = ("[2026-11-28T14:27:16.005] error: Nodes c[2-4] not responding, setting DOWN\n"
           "[2026-11-28T14:27:16.006] node_did_resp: node c3 returned to service\n"
           "[2026-11-28T14:29:09.007] error: Nodes c1 not responding, setting DOWN\n"
           "[2026-11-28T14:29:10.000] error: Nodes c2 not responding\n")
    calls = []

    def fake_exec(node, argv, **kwargs):
        calls.append((node, argv))
        return subprocess.CompletedProcess(argv, 0, stdout=log, stderr="")

    harness = cluster.Cluster()
    monkeypatch.setattr(harness, "exec", fake_exec)
    assert harness.set_down_since(41) == {"c1", "c2", "c3", "c4"}
    assert calls == [("ctl", ["tail", "-n", "+42", "/var/log/slurm/slurmctld.log"])]


def test_nodes_that_see_a_deleted_checkout_are_found(tmp_path, monkeypatch):
    monkeypatch.setattr(cluster, "REPO_ROOT", tmp_path)
    harness = cluster.Cluster(state_dir=tmp_path / "docker-slurm" / ".state")
    seen = []

    def fake_exec(node, argv, **kwargs):
        seen.append(argv[-1])
        # c2 still mounts the deleted directory: it cannot see the new token.
        token = "" if node == "c2" else (harness.state_dir / "mount-check").read_text()
        return subprocess.CompletedProcess(argv, 0, stdout=token + "\n", stderr="")

    monkeypatch.setattr(harness, "exec", fake_exec)
    assert harness.stale_checkout_mounts() == ["c2"]
    assert set(seen) == {"/opt/slurmkit/docker-slurm/.state/mount-check"}
