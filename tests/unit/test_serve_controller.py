"""The controller loop against fakes of Slurm (squeue/sbatch/scancel), HAProxy's runtime
API and the readiness probe, on a manual clock: replicas added when ready, drained
before they are cancelled, state re-adopted after a restart, dead replicas replaced,
failures bounded, nothing left running after a stop."""

from __future__ import annotations

import json

import pytest

from slurmkit.errors import RouterError, SlurmCommandError, UserInputError
from slurmkit.serve import controller as controller_module
from slurmkit.serve import haproxy
from slurmkit.serve import spec as spec_module
from slurmkit.serve.controller import Clock, Controller, ServiceFailed, parse_comment
from slurmkit.serve.state import read_events, read_json, request
from slurmkit.slurm.client import SubmitResult
from slurmkit.slurm.models import Job


def make_job(job_id, state, *, comment="", name="serve-tiny", user="alice", nodes=(),
             partition="guar-team-a", start=None, preempt=None, submit=1000):
    return Job(job_id=job_id, name=name, user=user, account="team-a", partition=partition,
               qos="inference", state=state, state_flags=(state,), reason="", nodes=tuple(nodes),
               node_count=len(nodes), submit_epoch_s=submit, eligible_epoch_s=None,
               start_epoch_s=start, end_epoch_s=None, time_limit_min=None, restart_count=0,
               requeue=True, priority=1, comment=comment, preempt_epoch_s=preempt)


class FakeSlurm:
    """squeue/sbatch/scancel of one user's replica jobs, plus other users' jobs."""

    def __init__(self, clock):
        self.clock = clock
        self.queue: dict[int, Job] = {}
        self.others: list[Job] = []
        self.next_id = 100
        self.refuse: str | None = None
        self.scripts: list[tuple[str, list[str]]] = []
        self.cancelled: list[int] = []
        self.on_cancel = None

    def jobs(self, *, users=(), states=(), job_ids=()):
        jobs = list(self.queue.values()) + self.others
        return [j for j in jobs if (not users or j.user in users)
                and (not states or j.state in states)]

    def submit(self, script, args=()):
        if self.refuse:
            raise SlurmCommandError(["sbatch"], 1, self.refuse)
        args = list(args)
        comment = args[args.index("--comment") + 1]
        job_id, self.next_id = self.next_id, self.next_id + 1
        self.queue[job_id] = make_job(job_id, "PENDING", comment=comment,
                                      submit=int(self.clock.wall()))
        self.scripts.append((script, args))
        return SubmitResult(job_id, None, f"{job_id}\n", "")

    def cancel(self, job_ids, **_):
        for job_id in job_ids:
            job_id = int(job_id)
            if self.on_cancel:
                self.on_cancel(job_id)
            self.cancelled.append(job_id)
            self.queue.pop(job_id, None)

    def start(self, job_id, node, partition="guar-team-a"):
        job = self.queue[job_id]
        self.queue[job_id] = make_job(job_id, "RUNNING", comment=job.comment, nodes=(node,),
                                      partition=partition, start=int(self.clock.wall()),
                                      submit=job.submit_epoch_s)

    def requeue(self, job_id):
        job = self.queue[job_id]
        self.queue[job_id] = make_job(job_id, "PENDING", comment=job.comment)

    def end(self, job_id):
        self.queue.pop(job_id)


class FakeAdmin:
    """HAProxy's runtime API: servers with admin bits and counters."""

    def __init__(self):
        self.servers: dict[str, dict] = {}
        self.requests_total = 0
        self.queued = 0
        self.log: list[str] = []

    def add_server(self, backend, name, address, port, **options):
        if name in self.servers:
            raise RouterError("Already exists a server with the same name in backend.")
        self.servers[name] = dict(address=address, port=port, admin=0, op=2, current=0,
                                  queued=0, **options)
        self.log.append(f"add {name}")

    def set_state(self, backend, name, state):
        if name not in self.servers:
            raise RouterError("No such server.")
        self.servers[name]["admin"] = {"ready": 0, "drain": 8, "maint": 1}[state]
        self.log.append(f"{state} {name}")

    def shutdown_sessions(self, backend, name):
        if name not in self.servers:
            raise RouterError("No such server.")
        self.servers[name]["current"] = 0

    def delete_server(self, backend, name):
        server = self.servers.get(name)
        if server is None:
            return True
        if not server["admin"] & 1 or server["current"]:
            return False
        del self.servers[name]
        self.log.append(f"del {name}")
        return True

    def stat(self, backend):
        servers = {name: haproxy.ServerStat(name, "UP", s["current"], s["queued"], 0, 0,
                                            f"{s['address']}:{s['port']}")
                   for name, s in self.servers.items()}
        return haproxy.BackendStat(self.requests_total, self.queued,
                                   sum(s.current for s in servers.values()), 0, servers)

    def servers_state(self, backend):
        return {name: haproxy.ServerState(name, s["address"], s["port"], s["op"], s["admin"])
                for name, s in self.servers.items()}


class ManualClock:
    def __init__(self):
        self.now = 1000.0
        self.on_sleep = None

    def monotonic(self):
        return self.now

    def wall(self):
        return 1_700_000_000.0 + self.now

    def sleep(self, seconds):
        self.now += seconds
        if self.on_sleep:
            self.on_sleep()

    def clock(self):
        return Clock(self.monotonic, self.wall, self.sleep)


def make_spec(tmp_path, **changes):
    raw = {"name": "tiny", "command": ["python3", "-m", "examples.serve_model", "--port", "{port}"],
           "port": 8100, "replicas": "1-3", "gpus_per_replica": 8, "account": "team-a",
           "qos": "inference", "state_dir": str(tmp_path / "state"),
           "ready_timeout_s": 30, "max_start_failures": 3, "drain_timeout_s": 20,
           "router": {"listen_port": 8080, "slots_per_replica": 2},
           "scaling": {"target_per_replica": 10, "window_s": 3, "down_stable_s": 5,
                       "down_cooldown_s": 5}}
    for key, value in changes.items():
        if isinstance(value, dict):
            raw[key] = {**raw.get(key, {}), **value}
        else:
            raw[key] = value
    return spec_module.build(raw)


class World:
    def __init__(self, tmp_path, **changes):
        self.time = ManualClock()
        self.slurm = FakeSlurm(self.time)
        self.admin = FakeAdmin()
        self.ready: dict[tuple[str, int], int] = {}
        self.said: list[str] = []
        self.spec = make_spec(tmp_path, **changes)
        self.controller = self.new_controller()
        self.controller.state.ensure()

    def new_controller(self) -> Controller:
        return Controller(spec=self.spec, client=self.slurm, user="alice", admin=self.admin,
                          probe=lambda address, port, path: self.ready.get((address, port)),
                          resolve=lambda node: f"10.0.0.{node[1:]}", clock=self.time.clock(),
                          say=self.said.append)

    def step(self, seconds=1.0, requests=0):
        self.admin.requests_total += requests
        self.time.now += seconds
        return self.controller.step()

    def bring_up(self, job_id, node):
        """Start the replica job on ``node`` and let its server answer ready."""
        self.slurm.start(job_id, node)
        port = int(parse_comment(self.slurm.queue[job_id].comment)["port"])
        self.ready[(f"10.0.0.{node[1:]}", port)] = 200

    def events(self, name=None):
        events = read_events(self.controller.state.events)
        return [e for e in events if name is None or e["event"] == name]

    def states(self):
        return {r.job_id: r.state for r in self.controller.replicas.values()}


def test_brings_up_min_replicas_and_adds_them_when_ready(tmp_path):
    world = World(tmp_path)
    decision = world.step()
    assert (decision.action, decision.target) == ("up", 1)
    [(script, args)] = world.slurm.scripts
    assert "#SBATCH --qos=\"inference\"" in script and "--port 8100" in script
    assert args[:2] == ["--comment", "slurmkit-serve service=tiny port=8100"]
    assert args[2] == f"--output={tmp_path}/state/replicas/%j.out"
    assert world.states() == {100: "pending"}
    world.time.now += 1
    world.slurm.start(100, "c3")
    world.step(0)
    assert world.states() == {100: "starting"} and world.admin.servers == {}
    world.ready[("10.0.0.3", 8100)] = 503  # listening, model still loading
    world.step(2)
    assert world.states() == {100: "starting"}
    world.ready[("10.0.0.3", 8100)] = 200
    world.step(3)
    assert world.states() == {100: "ready"}
    assert world.admin.servers["r100"]["address"] == "10.0.0.3"
    assert world.admin.servers["r100"]["maxconn"] == 2
    [ready] = world.events("replica-ready")
    assert ready["job_id"] == 100 and ready["node"] == "c3"
    assert ready["wait_s"] == 1.0 and ready["grace_wait_s"] == 0.0
    assert ready["start_s"] == 2.0 and ready["readiness_s"] == 3.0
    assert ready["decision_to_ready_s"] == 6.0 and not ready["adopted"]
    status = read_json(world.controller.state.status)
    assert status["replicas"][0]["state"] == "ready" and status["target"] == 1
    assert len(world.slurm.scripts) == 1  # nothing more while it was on its way


def test_scales_up_with_the_rate_then_down_by_draining_first(tmp_path):
    world = World(tmp_path)
    world.step()
    world.bring_up(100, "c1")
    world.step()
    for _ in range(3):
        decision = world.step(requests=25)
    assert (decision.action, decision.target) == ("up", 3)
    assert sorted(world.slurm.queue) == [100, 101, 102]
    world.bring_up(101, "c2")
    world.bring_up(102, "c3")
    world.step(requests=25)
    assert set(world.states().values()) == {"ready"}
    # The burst ends: after down_stable_s, two replicas are drained, not cancelled.
    world.admin.servers["r100"]["current"] = 1
    world.admin.servers["r101"]["current"] = 1
    cancelled_while_in_haproxy = []
    world.slurm.on_cancel = lambda job_id: world.admin.servers.get(f"r{job_id}") and \
        cancelled_while_in_haproxy.append(job_id)
    for _ in range(7):
        world.step()
    # The window (3 s) sees the burst come in: 2, then 3 replicas.
    assert [e["target"] for e in world.events("scale")] == [1, 2, 3, 1]
    draining = [j for j, s in world.states().items() if s == "draining"]
    assert sorted(draining) == [101, 102]  # the newest two
    assert world.admin.servers["r101"]["admin"] == 8  # drain: no new request
    world.step()
    assert 102 in world.slurm.cancelled and "r102" not in world.admin.servers  # idle at once
    assert 101 not in world.slurm.cancelled  # one request still in flight
    world.admin.servers["r101"]["current"] = 0
    world.step()
    assert 101 in world.slurm.cancelled and "r101" not in world.admin.servers
    assert cancelled_while_in_haproxy == []
    world.step()
    assert world.states() == {100: "ready"}
    assert [e["target"] for e in world.events("scale")] == [1, 2, 3, 1]


def test_a_drain_that_does_not_finish_is_cut_at_the_drain_timeout(tmp_path):
    world = World(tmp_path, replicas="2-3")
    world.step()
    for job_id, node in ((100, "c1"), (101, "c2")):
        world.bring_up(job_id, node)
    world.step()
    world.controller.remove(world.controller.replicas[101], "test")
    world.admin.servers["r101"]["current"] = 1
    world.step(10)
    assert 101 not in world.slurm.cancelled
    world.step(11)
    assert 101 in world.slurm.cancelled and world.events("replica-drain-timeout")


def test_a_restarted_controller_adopts_jobs_and_servers(tmp_path):
    world = World(tmp_path, replicas="2-3")
    world.step()
    world.bring_up(100, "c1")
    world.bring_up(101, "c2")
    world.step()
    world.controller.remove(world.controller.replicas[101], "test")  # draining at the crash
    world.admin.servers["r101"]["current"] = 1
    world.controller = world.new_controller()  # the old process is gone (SIGKILL)
    world.controller.adopt()
    assert world.states() == {100: "pending", 101: "draining"}
    world.step()
    assert world.states()[100] == "ready" and world.states()[101] == "draining"
    assert len(world.slurm.scripts) == 3  # the replacement of the draining one only
    assert world.events("adopted")[0]["replicas"] == [100, 101]
    world.admin.servers["r101"]["current"] = 0
    world.step()
    assert 101 in world.slurm.cancelled
    world.bring_up(102, "c3")
    world.step()
    [ready] = [e for e in world.events("replica-ready") if e["job_id"] == 102]
    assert ready["adopted"] is False


def test_a_server_without_a_job_is_removed_on_adoption(tmp_path):
    world = World(tmp_path)
    world.admin.add_server("serve-tiny", "r77", "10.0.0.4", 8100)
    world.admin.add_server("serve-tiny", "junk", "10.0.0.4", 8101)
    world.controller.adopt()
    assert world.admin.servers == {}


def test_a_dead_replica_is_taken_out_and_replaced(tmp_path):
    world = World(tmp_path)
    world.step()
    world.bring_up(100, "c1")
    world.step()
    world.step()
    world.admin.servers["r100"]["op"] = 0  # health checks fail: the node died
    world.step()
    assert world.states()[100] == "down" and world.events("replica-down")
    assert len(world.slurm.scripts) == 2  # a replacement at once: down does not count
    world.step(3)
    assert 100 not in world.slurm.cancelled
    world.step(3)
    assert world.events("replica-lost") and 100 in world.slurm.cancelled
    assert "r100" not in world.admin.servers


def test_a_requeued_replica_leaves_haproxy_and_comes_back_when_ready(tmp_path):
    world = World(tmp_path)
    world.step()
    world.bring_up(100, "c1")
    world.step()
    world.slurm.requeue(100)  # preempted, then requeued by Slurm
    world.step()
    assert world.states() == {100: "pending"} and world.admin.servers == {}
    assert world.events("replica-requeued")
    world.bring_up(100, "c4")
    world.step()
    assert world.admin.servers["r100"]["address"] == "10.0.0.4"


def test_failed_starts_are_bounded_and_the_error_names_the_output(tmp_path):
    world = World(tmp_path, max_start_failures=3)
    output = tmp_path / "state" / "replicas"
    with pytest.raises(ServiceFailed) as caught:
        for _ in range(40):
            world.step(5)
            for job_id in list(world.slurm.queue):
                (output / f"{job_id}.out").write_text(
                    "serve_model: cannot listen on 0.0.0.0:8100: Address already in use\n")
                world.slurm.start(job_id, "c2")
                world.step()
                world.slurm.end(job_id)  # the server exits at once
    message = str(caught.value)
    assert "3 replicas in a row failed to start" in message
    assert "Address already in use" in message and "on c2" in message
    failures = world.events("replica-failed")
    assert [f["failures"] for f in failures] == [1, 2, 3]
    assert [f["retry_in_s"] for f in failures] == [2.0, 4.0, 8.0]


def test_a_server_that_never_becomes_ready_is_given_up(tmp_path):
    world = World(tmp_path, ready_timeout_s=10, max_start_failures=2)
    world.step()
    world.slurm.start(100, "c1")
    world.ready[("10.0.0.1", 8100)] = 503
    world.step(5)
    assert 100 not in world.slurm.cancelled
    world.step(6)
    assert 100 in world.slurm.cancelled
    [failed] = world.events("replica-failed")
    assert "not ready within ready_timeout_s = 10 s (last answer: 503)" in failed["reason"]


def test_a_refused_submission_is_the_specs_fault_and_run_leaves_nothing(tmp_path, monkeypatch):
    world = World(tmp_path, account="team-b")
    world.slurm.refuse = ("sbatch: error: queue team-b does not run inference jobs; use --qos "
                          "with one of training, batch")
    stopped = []
    monkeypatch.setattr(haproxy, "start", lambda spec, paths: 4242)
    monkeypatch.setattr(haproxy, "stop", lambda paths: stopped.append(paths) or True)
    with pytest.raises(UserInputError) as caught:
        world.controller.run(max_steps=5)
    assert "queue team-b does not run inference jobs" in str(caught.value)
    assert "Fix account/qos" in str(caught.value)
    assert world.slurm.queue == {} and stopped


def test_pending_during_a_preemption_is_reclaiming_and_timed_as_grace(tmp_path):
    world = World(tmp_path)
    world.step()
    world.slurm.others = [make_job(7, "RUNNING", name="train", user="bob",
                                   partition="borrow-training", preempt=1_700_001_000)]
    world.step(2)
    assert world.states() == {100: "reclaiming"}
    assert read_json(world.controller.state.status)["reclaiming"] is True
    world.step(3)
    world.slurm.others = []
    world.bring_up(100, "c2")
    world.step()
    [ready] = world.events("replica-ready")
    # Decided at 1001, preemption seen at 1003, started at 1006.
    assert ready["wait_s"] == 5.0 and ready["grace_wait_s"] == 3.0
    assert ready["queue_wait_s"] == 2.0


def test_a_pin_from_serve_scale_is_followed(tmp_path):
    world = World(tmp_path)
    request(world.controller.state, pinned=3)
    decision = world.step()
    assert (decision.action, decision.target) == ("up", 3) and len(world.slurm.queue) == 3
    request(world.controller.state, pinned=None)
    assert world.step().action == "hold"


def test_stop_drains_deletes_cancels_and_stops_haproxy(tmp_path, monkeypatch):
    world = World(tmp_path, replicas="2-3")
    world.step()
    world.bring_up(100, "c1")
    world.bring_up(101, "c2")
    world.step()
    world.slurm.queue[102] = make_job(102, "PENDING", comment=controller_module.comment_for(
        "tiny", 8102))  # one this controller does not know yet
    world.admin.servers["r100"]["current"] = 2
    stopped = []
    monkeypatch.setattr(haproxy, "stop", lambda paths: stopped.append(paths) or True)
    sleeps = []

    def finish_requests():
        sleeps.append(world.time.now)
        if len(sleeps) == 3:
            world.admin.servers["r100"]["current"] = 0
    world.time.on_sleep = finish_requests
    cancelled_busy = []
    world.slurm.on_cancel = lambda job_id: world.admin.servers.get(f"r{job_id}") and \
        cancelled_busy.append(job_id)
    world.controller.stop_service()
    assert world.slurm.queue == {} and sorted(world.slurm.cancelled) == [100, 101, 102]
    assert cancelled_busy == [] and world.admin.servers == {}
    assert world.admin.log.index("drain r100") < world.admin.log.index("del r100")
    assert len(sleeps) >= 3 and stopped
    assert world.events("stopped")[0]["left"] == []


def test_status_file_is_json_with_the_decision(tmp_path):
    world = World(tmp_path)
    world.step()
    status = json.loads(world.controller.state.status.read_text())
    assert status["action"] == "up" and status["reason"].startswith("0 replica(s), below MIN 1")
    assert status["load"]["latency_ms"] is None


def test_a_failing_query_is_retried_not_fatal(tmp_path, monkeypatch):
    world = World(tmp_path)
    monkeypatch.setattr(haproxy, "start", lambda spec, paths: 4242)
    monkeypatch.setattr(haproxy, "stop", lambda paths: True)
    calls = []
    real_jobs = world.slurm.jobs

    def flaky(**filters):
        calls.append(1)
        if len(calls) in (2, 3):
            raise SlurmCommandError(["squeue"], 1, "slurm_load_jobs error: Unable to "
                                                   "contact slurm controller")
        if len(calls) == 4:
            raise SlurmCommandError(["squeue"], 1, "slurm_load_jobs error: Invalid user")
        return real_jobs(**filters)

    world.slurm.jobs = flaky
    world.controller.run(max_steps=6)
    assert sum("pass failed, retrying" in line for line in world.said) == 3
    assert len(world.slurm.queue) == 1  # the service went on: its MIN replica is there
