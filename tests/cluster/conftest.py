"""Cluster tests run against the docker-slurm cluster.

The session fixture brings it up (building images on a cold machine) or reuses a
healthy one, cancels the test users' leftover jobs, and before each test brings back
any node a previous test crashed or cut off. Tests submit through ``jobs``, which
cancels whatever they submitted in teardown.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

import pytest

from slurmkit.errors import ClusterHarnessError, SlurmCommandError
from slurmkit.slurm.client import SlurmClient
from slurmkit.slurm.models import AccountingRecord, Job
from slurmkit.testing.cluster import (
    COMPUTE_NODES,
    Cluster,
    ContainerRunner,
    exclusive_use,
    wait_until,
)
from slurmkit.testing.serving import Service
from slurmkit.topology.model import parse_topology


@pytest.hookimpl(tryfirst=True)  # before xdist reads the group markers
def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/cluster/" in str(item.fspath):
            item.add_marker(pytest.mark.cluster)
            # One shared cluster: its tests run one after another on one xdist worker
            # (`--dist loadgroup`), the unit tests beside them on the others.
            item.add_marker(pytest.mark.xdist_group("cluster"))


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    cluster = Cluster()
    with contextlib.ExitStack() as held:
        # Also stops a second worker if xdist's groups ever split the cluster tests.
        try:
            held.enter_context(exclusive_use("a test session"))
        except ClusterHarnessError as error:
            pytest.fail(str(error), pytrace=False)
        cluster.up()
        cluster.cancel_test_jobs()
        cluster.reset_policy()
        yield cluster


@pytest.fixture(autouse=True)
def _all_nodes_back(request):
    """Every cluster test starts with every node healthy and in service."""
    if "cluster" not in request.fixturenames:
        yield
        return
    cluster: Cluster = request.getfixturevalue("cluster")
    for node in ("db", "ctl", *COMPUTE_NODES, "login"):
        if cluster.health(node) != "healthy" or (
                node in COMPUTE_NODES and cluster.network not in _networks(cluster, node)):
            cluster.restore(node, register_now=True)
    cluster.wait_nodes_up(COMPUTE_NODES, timeout_s=180)
    cluster.faulted.clear()
    log_mark = cluster.controller_log_lines()
    yield
    # A node Slurm declared dead that no test crashed or cut off would have killed
    # whatever ran there: slurm.conf's timeouts are too tight for this machine.
    wrongly_down = cluster.set_down_since(log_mark) - cluster.faulted
    if wrongly_down:
        pytest.fail(f"slurmctld set healthy node(s) {', '.join(sorted(wrongly_down))} DOWN "
                    "(not responding) during the test: raise SlurmdTimeout in "
                    "docker-slurm/etc/slurm.conf", pytrace=False)


def _networks(cluster: Cluster, node: str) -> set[str]:
    container = cluster._docker().containers.get(cluster.container(node))
    return set(container.attrs["NetworkSettings"]["Networks"])


@pytest.fixture
def slurm(cluster) -> SlurmClient:
    """Slurm as alice sees it on the login node."""
    return SlurmClient(ContainerRunner(cluster, "login", "alice"))


class JobTracker:
    """Submits jobs for a test and cancels all of them when the test ends.

    Tests track other users' jobs too (bob's borrowed training), so the cancel is made
    by root on the controller: alice's scancel of bob's job is refused, and a refused
    cancel left the job running into the next test."""

    def __init__(self, client: SlurmClient, admin: SlurmClient):
        self.client = client
        self.admin = admin
        self.job_ids: list[int] = []

    def submit(self, script: str, args: Sequence[str] = ()) -> int:
        job_id = self.client.submit(script, args).job_id
        self.job_ids.append(job_id)
        return job_id

    def job(self, job_id: int) -> Job | None:
        jobs = self.client.jobs(job_ids=[job_id])
        return jobs[0] if jobs else None

    def wait_state(self, job_id: int, states: Iterable[str], timeout_s: float = 120) -> Job:
        """Wait until the job is in the queue in one of ``states``."""
        states = set(states)
        return wait_until(f"job {job_id} to be {'/'.join(sorted(states))}",
                          lambda: (job := self.job(job_id)) and job.state in states and job,
                          timeout_s=timeout_s, interval_s=0.5,
                          on_timeout=lambda: f"it is {self.job(job_id)}")

    def runs(self, job_id: int) -> list[AccountingRecord]:
        return sorted(self.client.accounting(job_ids=[job_id], since="now-1days"),
                      key=lambda record: record.restarts)

    def wait_runs(self, job_id: int, condition: Callable[[list[AccountingRecord]], bool],
                  what: str, timeout_s: float = 120) -> list[AccountingRecord]:
        return wait_until(f"job {job_id}: {what}",
                          lambda: (runs := self.runs(job_id)) and condition(runs) and runs,
                          timeout_s=timeout_s, interval_s=1.0,
                          on_timeout=lambda: "accounting has "
                          + str([(r.restarts, r.state, r.nodes) for r in self.runs(job_id)]))

    def wait_finished(self, job_id: int, timeout_s: float = 120) -> AccountingRecord:
        """Wait until the job left the queue; return its last run's record."""
        def finished() -> bool:
            job = self.job(job_id)  # read once: the job may leave the queue meanwhile
            return job is None or job.state not in ("PENDING", "RUNNING", "COMPLETING",
                                                    "CONFIGURING", "REQUEUED")

        wait_until(f"job {job_id} to finish", finished, timeout_s=timeout_s, interval_s=0.5)
        return self.wait_runs(job_id, lambda runs: runs[-1].end_epoch_s is not None,
                              "its last run to be accounted", timeout_s=60)[-1]

    def cancel_all(self) -> None:
        """Cancel the test's jobs still in the queue, and wait until they left it."""
        if not self.job_ids:
            return
        queued = [job.job_id for job in self.client.jobs(job_ids=self.job_ids)
                  if job.state not in ("COMPLETED", "FAILED", "CANCELLED", "NODE_FAIL",
                                       "TIMEOUT", "PREEMPTED", "OUT_OF_MEMORY")]
        if not queued:
            return
        try:
            self.admin.cancel(queued)
        except SlurmCommandError:
            pass  # a job may have ended between the query and scancel
        wait_until("cancelled jobs to leave the queue",
                   lambda: not [job for job in self.client.jobs(job_ids=queued)
                                if job.state in ("PENDING", "RUNNING", "COMPLETING")],
                   timeout_s=120)


@pytest.fixture
def jobs(slurm, cluster):
    tracker = JobTracker(slurm, SlurmClient(ContainerRunner(cluster, "ctl", "root")))
    yield tracker
    tracker.cancel_all()


POLICY = """\
[defaults]
gpus_per_node = 8
nodes = "c[1-4]"

[classes.inference]
priority = 1000
rank = 3
grace_s = 15
max_time_min = 1440

[classes.training]
priority = 100
rank = 2
grace_s = 10

[classes.batch]
priority = 10
rank = 1
grace_s = 5
default_time_min = 60

[queues.team-a]
guaranteed_gpus = 16
borrow_limit_gpus = 16
classes = ["inference", "training", "batch"]
default_class = "training"
users = ["alice", "carol"]

[queues.team-b]
guaranteed_gpus = 16
borrow_limit_gpus = 16
classes = ["training", "batch"]
users = ["bob", "carol"]
"""
POLICY_PATH = "/root/test-policy.toml"


@pytest.fixture(scope="module")
def policy_installed(cluster):
    """The inline POLICY installed for a test module (job_submit/python, queues,
    preemption), then removed again."""
    import tomllib

    from slurmkit.policy import config as config_module

    cluster.exec("ctl", ["tee", POLICY_PATH], input_text=POLICY)
    cluster.exec("ctl", ["install", "-d", "-m", "1777", "/shared/policy", "/shared/ckpt",
                         "/shared/logs"])
    try:
        result = cluster.exec("ctl", ["slurmkit", "policy", "install", POLICY_PATH],
                              check=False)
        assert result.returncode == 0, result.stderr
        yield config_module.from_dict(tomllib.loads(POLICY), source="inline")
    finally:
        cluster.cancel_test_jobs()
        cluster.reset_policy()


def monotonic_deadline(timeout_s: float) -> float:
    return time.monotonic() + timeout_s


@pytest.fixture
def spec_path(cluster) -> str:
    """A two-node exclusive job spec on the login node, for `slurmkit submit`."""
    path = "/home/alice/placed.toml"
    cluster.exec("login", ["tee", path], user="alice", input_text="""\
kind = "batch"
job_name = "placed"
command = ["sleep", "300"]
nodes = 2
exclusive = true
output = "/dev/null"
""")
    return path


@pytest.fixture(scope="session")
def leaf_of(cluster) -> dict[str, str]:
    """node -> leaf switch, from the cluster's own topology.conf."""
    text = cluster.exec("ctl", ["cat", "/etc/slurm/topology.conf"]).stdout
    return parse_topology(text, "topology.conf").leaf_of


@pytest.fixture
def services(cluster):
    """Services a test starts; each is stopped (and checked to leave nothing) after it."""
    started: list[Service] = []
    yield started
    for service in started:
        service.stop()
        cluster.exec("login", ["pkill", "-9", "-u", service.user, "-f",
                               f"slurmkit serve {service.spec_path}"], check=False)
        cluster.exec("login", ["pkill", "-u", service.user, "-x", "haproxy"], check=False)
