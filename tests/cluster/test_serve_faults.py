"""`slurmkit serve` on the real cluster when things go wrong: a replica's node killed
under load, a killed controller adopted by a new one, bad input that must end cleanly,
never with a hung scaler or jobs left behind. Run by `make test-slow` (about 2 minutes),
not by `make test`, which must stay under 10 minutes; `test_serve.py` (the burst that
reclaims borrowed training) and tests/unit/test_serve_router.py stay in `make test`."""

from __future__ import annotations

import time

from slurmkit.testing.cluster import wait_until
from slurmkit.testing.serving import Load, Service


def test_a_dead_replica_node_is_taken_out_and_replaced(cluster, policy_installed, jobs,
                                                      services):
    """Acceptance 2: the node of a serving replica is killed under load. HAProxy stops
    sending to it within its health checks (2 x 1 s), the scaler replaces it, the
    failed requests are counted and bounded."""
    service = Service(cluster, "crash", replicas="2-3", listen_port=18082, port=8120,
                      scaling={"target_per_replica": 10})
    services.append(service)
    service.write()
    service.start()
    ready = service.wait_serving(2, timeout_s=90)
    load = Load(cluster, service.url, "steady:30:8",
                out_path=f"{service.home}/serve-crash-load.jsonl").start()
    time.sleep(4)  # the load is on both replicas
    victim = ready[-1]
    crashed_at = time.time()
    cluster.crash(victim["node"])
    try:
        [down] = wait_until("HAProxy to take the dead replica out", lambda: [
            e for e in service.events("replica-down") if e["job_id"] == victim["job_id"]],
            timeout_s=30, interval_s=0.5)
        detected_s = down["time_epoch_s"] - crashed_at
        # fall (2) x (inter 1 s + the check's timeout 1 s), the controller's 1 s poll.
        assert detected_s <= 2 * (1 + 1) + 1 + 1.5, detected_s
        wait_until("a replacement to serve", lambda: len(service.replicas_in("ready")) == 2
                   and victim["job_id"] not in [r["job_id"] for r in service.replicas_in(
                       "ready", "down", "starting")], timeout_s=90, interval_s=0.5,
                   on_timeout=service.log)
        replaced_at = time.time()
        replaced_s = replaced_at - crashed_at
        summary = load.join()
    finally:
        cluster.restore(victim["node"])
    assert service.events("replica-lost")
    # Requests that were at the dead replica are retried on the other one (HAProxy's
    # retry-on: the inference request is idempotent); at most the load of the detection
    # time may fail.
    assert summary["failed"] <= 8 * 5, summary
    # Once the replacement serves, the dead replica answers nothing and both live ones do.
    answered_by = {r["replica"] for r in load.records() if r["t_epoch_s"] > replaced_at + 1}
    assert f"{victim['node']}:{victim['port']}" not in answered_by and len(answered_by) == 2
    print(f"crash: detected in {detected_s:.1f} s, replaced in {replaced_s:.1f} s, "
          f"{summary['failed']} of {summary['requests']} requests failed, p99 "
          f"{summary['p99_ms']} ms")


def test_a_killed_controller_is_adopted_and_stop_cleans_up_without_it(
        cluster, policy_installed, jobs, services):
    """The controller is SIGKILLed: a new one adopts its replicas and HAProxy (no new
    job, no failed request); killed again, `serve stop` alone leaves nothing."""
    service = Service(cluster, "adopt", replicas="2-2", listen_port=18083, port=8130)
    services.append(service)
    service.write()
    service.start()
    before = sorted(r["job_id"] for r in service.wait_serving(2, timeout_s=90))
    load = Load(cluster, service.url, "steady:12:6").start()
    time.sleep(3)
    old_pid = service.controller_pid()
    service.kill_controller()
    submitted = len(service.events("replica-submitted"))
    service.start()
    wait_until("the new controller to adopt", lambda: service.events("adopted"),
               timeout_s=60, interval_s=0.5)
    # A few passes of the new controller (its own status, written after each).
    adopted_at = service.events("adopted")[-1]["time_epoch_s"]
    wait_until("the new controller's passes", lambda: (status := service.status())
               and status.get("controller_pid") != old_pid
               and status.get("updated_epoch_s", 0) > adopted_at + 5, timeout_s=60,
               interval_s=0.5)
    after = sorted(r["job_id"] for r in service.wait_serving(2, timeout_s=60))
    assert after == before and len(service.events("replica-submitted")) == submitted
    assert load.join()["failed"] == 0
    service.kill_controller()
    result = service.stop()
    assert result.returncode == 0, result.stderr
    assert service.queued_jobs() == [] and service.port_free()


def test_bad_input_ends_cleanly_and_leaves_nothing(cluster, policy_installed, jobs, services):
    """Acceptance 4: a server that never becomes ready, a port in use (the router's,
    and a replica's on every node), MIN > MAX, a class the queue may not use: each a
    clear error (or a bounded retry with the reason), never a hung controller, no job
    left."""
    def ended(service: Service, timeout_s: float):
        started = time.monotonic()
        result = service.run_foreground(timeout_s)
        elapsed = time.monotonic() - started
        assert result.returncode in (1, 2), (result.returncode, result.stdout[-2000:],
                                             result.stderr[-2000:])
        assert elapsed < timeout_s - 5, "the controller did not give up by itself"
        assert service.queued_jobs() == [] and service.port_free()
        return result.stderr.strip().splitlines()[-1]

    never = Service(cluster, "never", replicas="1-1", listen_port=18084, port=8140,
                    server=("python3", "-m", "examples.serve_model", "--port", "{port}",
                            "--never-ready"),
                    top={"ready_timeout_s": 8, "max_start_failures": 2})
    services.append(never)
    never.write()
    message = ended(never, 150)
    assert "2 replicas in a row failed to start" in message
    assert "not ready within ready_timeout_s = 8 s (last answer: 503)" in message

    router_taken = Service(cluster, "taken", replicas="1-1", listen_port=18085, port=8150)
    services.append(router_taken)
    router_taken.write()
    holder = cluster.exec("login", ["bash", "-c", "setsid -f python3 -c 'import socket,time\n"
                                    "s=socket.socket();s.bind((\"0.0.0.0\",18085));s.listen()\n"
                                    "time.sleep(600)' >/dev/null 2>&1 </dev/null"],
                          user="alice")
    assert holder.returncode == 0
    try:
        wait_until("the port holder to listen", lambda: not router_taken.port_free(),
                   timeout_s=20)
        result = router_taken.run_foreground(60)
        assert result.returncode == 2, result.stderr
        assert "router's port 18085" in result.stderr and "another program listens" in \
            result.stderr
        assert router_taken.queued_jobs() == []
    finally:
        cluster.exec("login", ["pkill", "-u", "alice", "-f", "s.bind"], check=False)

    # A replica's port held on every compute node: each replica exits at once.
    holders = []
    for node in ("c1", "c2", "c3", "c4"):
        holders.append(cluster.exec(node, [
            "bash", "-c", "setsid -f python3 -c 'import socket,time\n"
            "s=socket.socket();s.bind((\"0.0.0.0\",8160));s.listen()\ntime.sleep(600)' "
            ">/dev/null 2>&1 </dev/null"], user="alice"))
    try:
        replica_taken = Service(cluster, "rtaken", replicas="1-1", listen_port=18086, port=8160,
                                top={"max_start_failures": 2})
        services.append(replica_taken)
        replica_taken.write()
        message = ended(replica_taken, 150)
        assert "2 replicas in a row failed to start" in message
        assert "Address already in use" in message
    finally:
        for node in ("c1", "c2", "c3", "c4"):
            cluster.exec(node, ["pkill", "-u", "alice", "-f", "s.bind"], check=False)

    inverted = Service(cluster, "inverted", replicas="3-1", listen_port=18087, port=8170)
    inverted.write()
    result = inverted.exec(["slurmkit", "serve", inverted.spec_path], check=False,
                           timeout_s=60)
    assert result.returncode == 2 and "MIN (3) is above MAX (1)" in result.stderr
    result = inverted.exec(["slurmkit", "serve", "check", inverted.spec_path], check=False)
    assert result.returncode == 2 and "MIN (3) is above MAX (1)" in result.stderr

    # Bob's queue does not run inference: the policy refuses the first replica.
    refused = Service(cluster, "refused", user="bob", account="team-b", replicas="1-1",
                      listen_port=18088, port=8180)
    services.append(refused)
    refused.write()
    message = ended(refused, 60)
    assert "queue team-b does not run inference jobs; use --qos with one of" in message
