"""slurmkit.launch without Slurm: the restart plan (pure), the heartbeat over real
sockets with real processes, and the supervisor's decisions driven through a stand-in
``srun`` that starts the ranks as local processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from slurmkit.ckpt.manager import EXIT_REQUEUE
from slurmkit.ckpt.store import read_events
from slurmkit.launch import heartbeat
from slurmkit.launch.cli import parse_args
from slurmkit.launch.plan import Layout, RestartBudget, after_failure, initial_layout
from slurmkit.launch.supervisor import LaunchConfig, Supervisor

LEAVES = {"a1": "s1", "a2": "s1", "a3": "s1", "b1": "s2", "b2": "s2", "b3": "s2"}


def wait_for(what, condition, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


# ------------------------------------------------------------------ plan


def test_the_batch_host_and_its_leaf_train_and_the_rest_wait():
    layout = initial_layout(["a1", "a2", "b1", "b2", "b3"], "b2", spares=2, leaf_of=LEAVES.get)
    assert layout.active == ("b1", "b2", "b3")  # one leaf: the batch host's
    assert layout.spares == ("a1", "a2")


def test_training_gets_the_nodes_before_the_spares_do():
    layout = initial_layout(["a1", "a2", "a3"], "a1", spares=2, nodes_min=3)
    assert layout.active == ("a1", "a2", "a3") and layout.spares == ()
    assert initial_layout(["a1", "a2", "a3"], "a1", spares=0, nodes_max=2).spares == ("a3",)
    with pytest.raises(ValueError, match="batch host"):
        initial_layout(["a1"], "zz", spares=0)


def test_a_spare_under_the_dead_nodes_leaf_is_preferred():
    layout = Layout(("a1", "a2", "b1", "b2"), ("a3", "b3"))
    plan = after_failure(layout, ["b1"], "a1", nodes_min=4, leaf_of=LEAVES.get,
                         order=["a1", "a2", "a3", "b1", "b2", "b3"])
    assert plan.in_place and plan.spares_used == ("b3",)
    assert plan.layout == Layout(("a1", "a2", "b2", "b3"), ("a3",))
    assert plan.dead == ("b1",)


def test_without_spares_the_survivors_go_on_until_too_few_are_left():
    layout = Layout(("a1", "a2", "b1", "b2"))
    plan = after_failure(layout, ["b2"], "a1", nodes_min=3)
    assert plan.in_place and plan.layout.active == ("a1", "a2", "b1")
    plan = after_failure(layout, ["b1", "b2"], "a1", nodes_min=3)
    assert plan.action == "requeue" and "2 node(s) left" in plan.reason


def test_losing_the_batch_host_or_a_dead_spare_is_handled():
    layout = Layout(("a1", "a2"), ("b1",))
    assert after_failure(layout, ["a1"], "a1", nodes_min=1).action == "requeue"
    plan = after_failure(layout, ["b1", "a2"], "a1", nodes_min=1)  # the spare died too
    assert plan.in_place and plan.layout == Layout(("a1",), ()) and not plan.spares_used


def test_restart_budget():
    budget = RestartBudget(window_s=60, max_restarts=2)
    assert budget.allows(attempt_age_s=5, made_progress=False, first_attempt=True)[0]
    allowed, why = budget.allows(attempt_age_s=5, made_progress=False, first_attempt=False)
    assert not allowed and "without completing a step" in why
    assert budget.allows(attempt_age_s=61, made_progress=False, first_attempt=False)[0]
    budget.restarts = 2
    assert not budget.allows(attempt_age_s=600, made_progress=True, first_attempt=False)[0]


def test_launch_options_are_checked():
    config = parse_args(["--ckpt-dir", "/c", "--spares", "1", "--", "python3", "t.py"])
    assert config.command == ["python3", "t.py"] and config.spares == 1
    for bad in (["--ckpt-dir", "/c"], ["--ckpt-dir", "/c", "--spares", "-1", "--", "x"],
                ["--ckpt-dir", "/c", "--peer-timeout-s", "0.2", "--heartbeat-s", "0.2",
                 "--", "x"]):
        with pytest.raises(SystemExit) as exited:
            parse_args(bad)
        assert exited.value.code == 2


# ------------------------------------------------------------------ heartbeat

RANK_PROGRAM = textwrap.dedent("""
    import sys, time
    from slurmkit.launch import heartbeat
    port, rank = int(sys.argv[1]), int(sys.argv[2])
    link = heartbeat.SupervisorLink(
        ("127.0.0.1", port), {"rank": rank, "host": "n1", "pid": 0, "attempt": 0},
        step_fn=lambda: 7, on_checkpoint=lambda reason: None,
        on_supervisor_lost=lambda reason: print("LOST", reason, flush=True),
        interval_s=0.1, timeout_s=0.6)
    time.sleep(60)
""")


@pytest.fixture
def monitor():
    monitor = heartbeat.Monitor(interval_s=0.1, timeout_s=0.6, host="127.0.0.1")
    yield monitor
    monitor.close()


def start_rank(monitor, rank=0) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", RANK_PROGRAM, str(monitor.port),
                                str(rank)], stdout=subprocess.PIPE, text=True)
    wait_for("the rank to say hello", lambda: monitor.poll(0.02) or rank in monitor.by_rank()
             and monitor.by_rank()[rank].step == 7)
    return process


def poll_for(monitor, what, condition, timeout_s=5.0):
    return wait_for(what, lambda: monitor.poll(0.02) or condition(), timeout_s)


def test_a_killed_rank_is_lost_at_once(monitor):
    process = start_rank(monitor)
    process.kill()
    process.wait()
    [peer] = poll_for(monitor, "the loss", monitor.lost)
    assert "without a goodbye" in peer.lost  # seen at once, not after a timeout


def test_a_frozen_rank_is_lost_only_after_the_timeout(monitor):
    process = start_rank(monitor)
    try:
        for _ in range(3):  # frozen for 0.3 s (half the timeout): still alive
            process.send_signal(signal.SIGSTOP)
            stopped = time.monotonic()
            while time.monotonic() - stopped < 0.3:
                monitor.poll(0.02)
            process.send_signal(signal.SIGCONT)
            poll_for(monitor, "a heartbeat", lambda: time.monotonic()
                     - monitor.by_rank()[0].last_heard < 0.05)
        assert not monitor.lost()
        process.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        [peer] = poll_for(monitor, "the loss", monitor.lost)
        assert peer.lost.startswith("silent for")
        assert 0.6 <= time.monotonic() - stopped < 1.2
    finally:
        process.send_signal(signal.SIGCONT)
        process.kill()
        process.wait()


def test_a_rank_hears_when_the_supervisor_falls_silent(monitor):
    process = start_rank(monitor)
    try:
        frozen = time.monotonic()  # the supervisor stops polling: no more heartbeats
        line = process.stdout.readline()
        assert line.startswith("LOST no heartbeat from the supervisor")
        assert 0.5 <= time.monotonic() - frozen < 1.5
    finally:
        process.kill()
        process.wait()


def test_checkpoint_requests_and_goodbyes(monitor):
    asked = []
    link = heartbeat.SupervisorLink(
        ("127.0.0.1", monitor.port), {"rank": 3, "host": "n2", "pid": 1, "attempt": 0},
        step_fn=lambda: 12, on_checkpoint=asked.append, on_supervisor_lost=asked.append,
        interval_s=0.1, timeout_s=0.6)
    poll_for(monitor, "hello", lambda: 3 in monitor.by_rank())
    assert monitor.request_checkpoint("peer lost: rank 1") == [3]
    poll_for(monitor, "the request", lambda: asked)
    assert asked == ["peer lost: rank 1"]
    link.goodbye("triggered", step=12, saved=True)
    poll_for(monitor, "the goodbye", lambda: monitor.by_rank()[3].bye)
    assert monitor.by_rank()[3].bye["saved"] is True
    for _ in range(20):  # the connection closes after the goodbye: not a loss
        monitor.poll(0.02)
    assert not monitor.lost() and not monitor.alive()


def test_orphans_of_an_earlier_attempt_and_garbage_are_turned_away(monitor):
    monitor.start_attempt(2)
    old = heartbeat.SupervisorLink(
        ("127.0.0.1", monitor.port), {"rank": 0, "host": "n1", "pid": 1, "attempt": 1},
        step_fn=lambda: 1, on_checkpoint=print, on_supervisor_lost=lambda _: None,
        interval_s=0.1, timeout_s=5)
    old.wait_connected(5)
    for _ in range(10):
        monitor.poll(0.02)
    assert monitor.by_rank() == {} and not monitor.lost()
    import socket
    with socket.create_connection(("127.0.0.1", monitor.port)) as raw:
        raw.sendall(b'{"t":"hello","rank":5,"attempt":2}\n[1,2]\n')
        [peer] = poll_for(monitor, "the garbage to be refused", monitor.lost)
        assert peer.rank == 5 and peer.lost == "sent garbage"


# ------------------------------------------------------------------ supervisor

FAKE_SRUN = textwrap.dedent("""
    #!{python}
    # Stand-in for srun: starts --ntasks local processes of COMMAND, SLURM_* set as
    # srun would (block distribution over --nodelist), and waits for them.
    import json, os, subprocess, sys, time
    from slurmkit.slurm import hostlist
    args, command = sys.argv[1:], []
    options = {{}}
    while args:
        arg = args.pop(0)
        if not arg.startswith("--"):
            command = [arg, *args]
            break
        key, _, value = arg[2:].partition("=")
        options[key] = value
    state = os.environ["FAKE_SLURM_STATE"]
    with open(os.path.join(state, "srun.log"), "a") as log:
        log.write(json.dumps(options) + "\\n")
    step = len(open(os.path.join(state, "srun.log")).readlines()) - 1
    if str(step) in os.environ.get("FAKE_SRUN_REFUSE", "").split(","):
        print("srun: error: Unable to create step for job 9: Memory required by task is "
              "not available", file=sys.stderr)
        sys.exit(1)
    nodes = hostlist.expand(options["nodelist"])
    per_node = int(options["ntasks-per-node"])
    children = []
    for rank in range(int(options["ntasks"])):
        env = dict(os.environ, SLURM_PROCID=str(rank), SLURM_NTASKS=options["ntasks"],
                   SLURM_STEP_ID=str(step), SLURMD_NODENAME=nodes[rank // per_node])
        children.append(subprocess.Popen(command, env=env))
    with open(os.path.join(state, f"step-{{step}}.pids"), "w") as pids:
        pids.write(" ".join(str(child.pid) for child in children))
    # Kills are asked for by a file (scancel's "kill-all", a test's "kill-RANK") and
    # made here, by the parent: only it knows which of its children are still alive.
    # A kill by PID from outside could hit a stranger once a rank's PID was reused.
    prefix = os.path.join(state, f"step-{{step}}.kill-")
    while any(child.poll() is None for child in children):
        for name in os.listdir(state):
            path = os.path.join(state, name)
            if not path.startswith(prefix):
                continue
            which = path[len(prefix):]
            for rank, child in enumerate(children):
                if which in ("all", str(rank)):
                    child.kill()  # a no-op once the child was reaped
            os.unlink(path)
        time.sleep(0.01)
    codes = [child.wait() for child in children]
    sys.exit(max(128 - code if code < 0 else code for code in codes))  # srun: 128+signal
""").lstrip()

FAKE_SCANCEL = textwrap.dedent("""
    #!/bin/sh
    # Stand-in for scancel JOB.STEP: kill what the stand-in srun started for the step.
    for arg in "$@"; do
        case "$arg" in *.*) touch "$FAKE_SLURM_STATE/step-${arg#*.}.kill-all" ;; esac
    done
    exit 0
""").lstrip()

#: A rank: checkpoints its step counter, one step per 50 ms, finishes at STEPS.
FAKE_RANK = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    from slurmkit.ckpt import Checkpointer
    steps = int(sys.argv[1])
    ckpt = Checkpointer.from_env(keep=5)
    state = np.zeros(1)
    ckpt.register(lambda: {"state": state})
    restored = ckpt.restore()
    start = restored.step if restored else 0
    state[:] = restored.values["state"] if restored else 0
    assert state[0] == start, (state, start)  # the state is the step it was saved at
    ckpt.completed(start)
    for step in range(start, steps):
        time.sleep(0.05)
        with ckpt.update(step + 1):
            state += 1
        ckpt.event("step", step=step + 1)
    if ckpt.rank == 0:
        ckpt.checkpoint("final")
    ckpt.close()
""")


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    bin_dir.mkdir()
    state.mkdir()
    (bin_dir / "srun").write_text(FAKE_SRUN.format(python=sys.executable))
    (bin_dir / "scancel").write_text(FAKE_SCANCEL)
    for program in bin_dir.iterdir():
        program.chmod(0o755)
    (tmp_path / "rank.py").write_text(FAKE_RANK)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_STATE", str(state))
    repo = Path(__file__).resolve().parents[2]
    monkeypatch.setenv("PYTHONPATH", str(repo))
    return tmp_path


def supervise(tmp_path, *, steps=80, nodes_min=2, spares=0, dead=(), log=None):
    config = LaunchConfig(command=[sys.executable, str(tmp_path / "rank.py"), str(steps)],
                          ckpt_dir=tmp_path / "ckpt", nodes_min=nodes_min, spares=spares,
                          ntasks_per_node=1, interval_s=0.1, timeout_s=0.6,
                          restart_window_s=60)
    environ = dict(os.environ, SLURM_JOB_ID="9", SLURM_JOB_NODELIST="localhost,n[2-4]",
                   SLURMD_NODENAME="localhost")
    return Supervisor(config, environ, leaf_of=lambda node: None,
                      alive=lambda host: host not in dead, log=log or print)


def events(tmp_path) -> list[dict]:
    # A rank killed in the middle of an append leaves a torn line: skipped, as always.
    return read_events(tmp_path / "ckpt")


def srun_calls(tmp_path) -> list[dict]:
    return [json.loads(line) for line in
            (tmp_path / "state" / "srun.log").read_text().splitlines()]


def kill_rank_when(tmp_path, step: int, rank: int):
    """In the background: SIGKILL ``rank`` of step 0 once it logged ``step``."""
    log = tmp_path / "ckpt" / "events.jsonl"

    def reached() -> bool:  # that very rank logged the step (events have sorted keys)
        return log.exists() and any(
            b'"event": "step"' in line and f'"rank": {rank}, '.encode() in line
            and f'"step": {step},'.encode() in line for line in log.read_bytes().splitlines())

    def killer():
        wait_for(f"rank {rank} at step {step}", reached, 30)
        (tmp_path / "state" / f"step-0.kill-{rank}").touch()  # the fake srun kills it
    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    return thread


def test_a_lost_rank_is_replaced_in_place_without_losing_a_step(fake_slurm):
    kill_rank_when(fake_slurm, 10, rank=2)
    supervisor = supervise(fake_slurm, dead={"n3"})  # rank 2 ran on n3: a dead node
    assert supervisor.run_job() == 0
    calls = srun_calls(fake_slurm)
    assert [call["nodelist"] for call in calls] == ["localhost,n[2-4]", "localhost,n[2,4]"]
    assert all("overlap" in call for call in calls)
    [restart] = [e for e in events(fake_slurm) if e["event"] == "restart"]
    assert restart["dead_nodes"] == ["n3"] and restart["lost_ranks"] == [2]
    assert restart["nodes"] == ["localhost", "n2", "n4"] and "resumed_epoch_s" in restart
    # The stand-in ranks do not step together (no collectives), so each saves the last
    # step it completed; the newest of them is the restart's.
    saved = restart["checkpoint_step"]
    writes = [e for e in events(fake_slurm) if e["event"] == "checkpoint"
              and e["kind"] == "triggered" and e["committed"]]
    for write in writes:
        assert write["step"] == max(e["step"] for e in events(fake_slurm) if e["event"] == "step"
                                    and e["attempt"] == 0 and e["rank"] == write["rank"])
    assert saved == max(write["step"] for write in writes)
    [restored] = {e["step"] for e in events(fake_slurm) if e["event"] == "restore"
                  and e["attempt"] == 1}
    assert restored == saved


def test_a_rank_crash_on_a_live_node_keeps_the_node(fake_slurm):
    kill_rank_when(fake_slurm, 8, rank=1)
    assert supervise(fake_slurm).run_job() == 0
    assert [call["nodelist"] for call in srun_calls(fake_slurm)] == ["localhost,n[2-4]"] * 2


def test_too_few_nodes_left_falls_back_to_a_requeue(fake_slurm):
    kill_rank_when(fake_slurm, 8, rank=3)
    assert supervise(fake_slurm, nodes_min=4, dead={"n4"}).run_job() == EXIT_REQUEUE
    assert len(srun_calls(fake_slurm)) == 1
    [fallback] = [e for e in events(fake_slurm) if e["event"] == "restart-fallback"]
    assert "3 node(s) left, the job needs at least 4" in fallback["reason"]
    saved = [e["step"] for e in events(fake_slurm) if e["event"] == "checkpoint"
             and e["kind"] == "triggered" and e["committed"]]
    assert fallback["checkpoint_step"] == max(saved)  # what the survivors wrote


def test_a_spare_keeps_the_world_size(fake_slurm):
    kill_rank_when(fake_slurm, 8, rank=1)
    assert supervise(fake_slurm, spares=1, nodes_min=3, dead={"n2"}).run_job() == 0
    assert [call["nodelist"] for call in srun_calls(fake_slurm)] == [
        "localhost,n[2-3]", "localhost,n[3-4]"]
    [restart] = [e for e in events(fake_slurm) if e["event"] == "restart"]
    assert restart["spare_used"] == "n4"


def test_the_job_being_stopped_is_never_restarted_in_place(fake_slurm):
    supervisor = supervise(fake_slurm, steps=200)
    kill_rank_when(fake_slurm, 5, rank=2)
    threading.Timer(0.5, lambda: supervisor._on_signal(signal.SIGTERM, None)).start()
    assert supervisor.run_job() == EXIT_REQUEUE
    [fallback] = [e for e in events(fake_slurm) if e["event"] == "restart-fallback"]
    assert "being stopped (SIGTERM)" in fallback["reason"]


def test_a_clean_finish_and_a_plain_failure_pass_through(fake_slurm):
    assert supervise(fake_slurm, steps=5).run_job() == 0
    (fake_slurm / "rank.py").write_text("import sys; sys.exit(3)\n")
    assert supervise(fake_slurm).run_job() == 3


def test_a_rank_that_dies_before_its_hello_counts_as_lost(fake_slurm):
    (fake_slurm / "rank.py").write_text(
        "import os, sys\n"
        "if os.environ['SLURM_PROCID'] == '2':\n"
        "    os._exit(9)  # dies while starting: never connects\n"
        + FAKE_RANK)
    supervisor = supervise(fake_slurm, steps=20, dead={"n3"})
    supervisor.config.restart_window_s = 0.001  # the retry runs the same failing start
    assert supervisor.run_job() == EXIT_REQUEUE
    [lost] = [e for e in events(fake_slurm) if e["event"] == "peer-lost"][:1]
    assert lost["lost_ranks"] == [2] and lost["why"] == ["never connected"]


def test_a_restarted_step_that_srun_refuses_is_retried(fake_slurm, monkeypatch):
    monkeypatch.setenv("FAKE_SRUN_REFUSE", "1")  # the first restart's srun fails
    kill_rank_when(fake_slurm, 8, rank=1)
    supervisor = supervise(fake_slurm)
    assert supervisor.run_job() == 0
    assert len(srun_calls(fake_slurm)) == 3
    [failed] = [e for e in events(fake_slurm) if e["event"] == "launch-failed"]
    assert "Memory required by task is not available" in failed["error"]
    [restart] = [e for e in events(fake_slurm) if e["event"] == "restart"]
    assert restart["attempt"] == 2 and "resumed_epoch_s" in restart


def test_a_restarted_step_that_never_starts_falls_back_to_a_requeue(fake_slurm, monkeypatch):
    monkeypatch.setenv("FAKE_SRUN_REFUSE", ",".join(str(i) for i in range(1, 10)))
    kill_rank_when(fake_slurm, 8, rank=1)
    supervisor = supervise(fake_slurm)
    supervisor.config.launch_retries = 2
    monkeypatch.setattr("slurmkit.launch.supervisor.time.sleep", lambda seconds: None)
    assert supervisor.run_job() == EXIT_REQUEUE
    [fallback] = [e for e in events(fake_slurm) if e["event"] == "restart-fallback"]
    assert "could not be started 3 time(s)" in fallback["reason"]
