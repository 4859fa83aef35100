"""`slurmkit serve` on the real cluster: replicas as Slurm jobs of the inference class
behind HAProxy on the login node, scaled with an open-loop load; reclaiming borrowed
training by preemption (triggered checkpoint, requeue, resume).

A replica's node killed, a restarted controller and bad input are
tests/cluster/test_serve_faults.py (`make test-slow`, kept out of `make test` for its
10 minutes). The router's side alone (the real HAProxy and example servers, Slurm
replaced by local processes; a killed and a hung replica, a restarted controller) is
tests/unit/test_serve_router.py: it needs no Slurm."""

from __future__ import annotations

from slurmkit.testing.cluster import wait_until
from slurmkit.testing.serving import Load, Service, submit_trainer


def test_a_burst_reclaims_borrowed_training_and_the_end_gives_it_back(
        cluster, policy_installed, jobs, services):
    """Acceptance 1: MIN replicas behind HAProxy; a burst scales up by preempting a
    borrowed training job (requeued with its triggered checkpoint); the burst's end
    scales down through drained replicas with zero failed requests; the training job
    resumes on the freed node."""
    # A short window and cooldowns keep the day in under a minute.
    service = Service(cluster, "burst", replicas="1-2", listen_port=18081, port=8110,
                      scaling={"window_s": 5, "down_stable_s": 5, "down_cooldown_s": 10})
    services.append(service)
    service.write()
    service.start()
    [first] = service.wait_serving(1, timeout_s=90)
    # Bob fills the rest: two jobs in his guarantee (16 GPUs), the third borrowed.
    trainings = [submit_trainer(cluster, f"burst-train-{i}") for i in range(3)]
    jobs.job_ids.extend(t.job_id for t in trainings)
    running = wait_until("bob's three trainings to run", lambda: (
        found := [t.job() for t in trainings]) and all(j and j.state == "RUNNING" for j in found)
        and found, timeout_s=120, interval_s=1)
    [borrowed] = [t for t, job in zip(trainings, running, strict=True)
                  if job.partition == "borrow-training"]
    borrowed.wait_step(10, timeout_s=120)

    # 3/s, a burst of 16/s (2 replicas at 10/s each), then 3/s again.
    load = Load(cluster, service.url, "calm:3:3,burst:20:16,after:20:3",
                out_path=f"{service.home}/serve-burst-load.jsonl").start()
    wait_until("the scale-up to reclaim the borrowed node", lambda: len(
        service.replicas_in("ready")) == 2, timeout_s=90, interval_s=0.5,
        on_timeout=lambda: f"{service.status()}; {service.log()}")
    runs = jobs.wait_runs(borrowed.job_id, lambda r: r[0].state == "PREEMPTED"
                          and r[0].end_epoch_s is not None,
                          "the borrowed training to be preempted")
    events = borrowed.events()
    saved = [e for e in events if e["event"] == "checkpoint" and e.get("kind") == "triggered"
             and e.get("committed") and e["run"] == 0]
    assert saved and saved[0]["step"] >= borrowed.last_step(0), events[-10:]
    [reclaimed] = [e for e in service.events("replica-ready") if e["job_id"] != first["job_id"]]
    # It started only once the preempted job had ended (Slurm's times are whole
    # seconds, so a fast checkpoint can make the controller's own wait_s round to 0).
    [replica_run] = jobs.wait_runs(reclaimed["job_id"], lambda r: r[0].start_epoch_s is not None,
                                   "the reclaiming replica's start to be accounted")[:1]
    assert replica_run.start_epoch_s >= runs[0].end_epoch_s, (replica_run, runs[0])
    freed_node = reclaimed["node"]
    assert freed_node in runs[0].nodes

    summary = load.join()
    wait_until("the scale-down to 1", lambda: len(service.status().get("replicas", [])) == 1,
               timeout_s=90, interval_s=1, on_timeout=service.log)
    drained = service.events("replica-drained")
    assert drained and service.events("replica-draining"), service.events()
    assert summary["failed"] == 0, summary
    # The preempted training comes back on the node the drained replica gave back, and
    # resumes from its triggered checkpoint.
    wait_until("the preempted training to run again", lambda: (job := borrowed.job())
               and job.state == "RUNNING" and job.restart_count >= 1, timeout_s=120,
               interval_s=1)
    wait_until("its run 1 to make progress", lambda: borrowed.last_step(1) > saved[0]["step"],
               timeout_s=120, interval_s=1)
    [restore] = [e for e in borrowed.events() if e["event"] == "restore" and e["run"] == 1
                 and e["rank"] == 0]
    assert restore["step"] == saved[0]["step"]
    scale_up = reclaimed["decision_to_ready_s"]
    print(f"burst: {summary['requests']} requests, 0 failed, p99 {summary['p99_ms']} ms; "
          f"scale-up {scale_up} s (grace wait {reclaimed['grace_wait_s']} s, start "
          f"{reclaimed.get('start_s')} s, readiness {reclaimed.get('readiness_s')} s); training "
          f"job {borrowed.job_id} preempted at step {saved[0]['step']} and resumed from it "
          f"on {borrowed.job().nodes}")

    # `serve stop` leaves nothing running.
    result = service.stop()
    assert result.returncode == 0, result.stderr
    assert service.queued_jobs() == [] and service.port_free()
    assert not service.controller_running()
    assert borrowed.job().state == "RUNNING"  # the training keeps its node
