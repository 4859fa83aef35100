"""Checkpointer: triggered checkpoints on signals and on request, update windows,
claims between survivors, fencing, periodic async snapshots."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from slurmkit.ckpt import EXIT_REQUEUE, Checkpointer, signal_number, store

ROOT = Path(__file__).resolve().parents[2]

# A trainer-like loop: the state at step s is [s, s, ...]; it announces each completed
# step on stdout and sleeps inside the update window when SLOW_UPDATE is set. With
# STOP_AT it stops after that step, as ranks blocked in a collective whose peer died;
# with GATE its state is handed over only once that file exists (a slow snapshot).
TRAINER = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    from slurmkit.ckpt import Checkpointer
    ckpt = Checkpointer(sys.argv[1], rank=int(sys.argv[2]), run=int(sys.argv[3]),
                        periodic_steps=None,
                        claim_stale_s=float(os.environ.get("CLAIM_STALE_S", 5)))
    weights = np.zeros(1000)

    def state():
        while os.environ.get("GATE") and not os.path.exists(os.environ["GATE"]):
            time.sleep(0.01)
        return {"weights": weights}

    ckpt.register(state)
    step = 0
    while True:
        if step == int(os.environ.get("STOP_AT", -1)):
            time.sleep(0.05)
            continue
        with ckpt.update(step + 1):
            if os.environ.get("SLOW_UPDATE"):
                print("in-update", step + 1, flush=True)
                time.sleep(1.0)
            weights[:] = step + 1
        step += 1
        print("completed", step, flush=True)
        time.sleep(0.02)
""")


def start_trainer(directory, rank=0, run=0, env=None):
    return subprocess.Popen([sys.executable, "-c", TRAINER, str(directory), str(rank), str(run)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def read_until(process, prefix, count=1):
    """Lines from the trainer until ``count`` lines start with ``prefix``; the last."""
    seen = 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            raise AssertionError(f"trainer ended: {process.stderr.read()}")
        if line.startswith(prefix):
            seen += 1
            if seen >= count:
                return line.split()
    raise AssertionError(f"no {prefix!r} line in time")


@pytest.mark.parametrize("signal_name", ["USR2", "TERM"])
def test_signal_writes_the_last_completed_step_and_exits_for_requeue(tmp_path, signal_name):
    trainer = start_trainer(tmp_path)
    read_until(trainer, "completed", 5)
    trainer.send_signal(getattr(signal, f"SIG{signal_name}"))
    output, errors = trainer.communicate(timeout=30)
    assert trainer.returncode == EXIT_REQUEUE, errors
    completed = [int(line.split()[1]) for line in output.splitlines() if line.startswith("completed")]
    restored = store.restore(tmp_path)
    # The checkpoint holds a completed step, at or after the last one announced.
    assert restored.step >= (completed[-1] if completed else 5)
    assert np.all(restored.values["weights"] == restored.step)
    assert restored.manifest["kind"] == "triggered"
    events = [e["event"] for e in store.read_events(tmp_path)]
    assert events[:3] == ["signal", "trigger", "checkpoint"]


def test_a_trigger_during_an_update_waits_for_the_update_to_finish(tmp_path):
    trainer = start_trainer(tmp_path, env={"SLOW_UPDATE": "1"})
    _, step = read_until(trainer, "in-update", 3)
    trainer.send_signal(signal.SIGUSR2)  # mid-update: state is half way to step
    trainer.communicate(timeout=30)
    restored = store.restore(tmp_path)
    assert restored.step == int(step) and np.all(restored.values["weights"] == int(step))


def test_a_second_signal_is_harmless(tmp_path):
    trainer = start_trainer(tmp_path, env={"SLOW_UPDATE": "1"})
    read_until(trainer, "in-update", 2)
    trainer.send_signal(signal.SIGTERM)
    trainer.send_signal(signal.SIGUSR2)
    trainer.communicate(timeout=30)
    assert trainer.returncode == EXIT_REQUEUE
    assert [e["event"] for e in store.read_events(tmp_path)].count("checkpoint") == 1


def test_a_signal_the_kernel_hands_to_another_thread_still_triggers(tmp_path):
    """No signal mask is involved: a checkpoint signal delivered to any thread (here a
    worker, on purpose, while the main thread is blocked) reaches the watcher through
    the wakeup fd. A Checkpointer with signals refuses to start outside the main
    thread, where Python cannot install handlers."""
    script = textwrap.dedent("""
        import signal, sys, threading
        import numpy as np
        from slurmkit.ckpt import Checkpointer
        from slurmkit.ckpt.store import CheckpointError
        errors = []
        def elsewhere():
            try:
                Checkpointer(sys.argv[1] + "/other", periodic_steps=None)
            except CheckpointError as error:
                errors.append(str(error))
        thread = threading.Thread(target=elsewhere)
        thread.start()
        thread.join()
        print("refused:", errors, flush=True)
        ckpt = Checkpointer(sys.argv[1], periodic_steps=None)
        weights = np.zeros(10)
        ckpt.register(lambda: {"weights": weights})
        with ckpt.update(1):
            weights[:] = 1
        worker = threading.Thread(target=threading.Event().wait, daemon=True)
        worker.start()
        signal.pthread_kill(worker.ident, signal.SIGUSR2)
        worker.join(60)  # blocked, as in a collective; the watcher exits the process
        sys.exit(3)
    """)
    trainer = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                             text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert trainer.returncode == EXIT_REQUEUE, trainer.stderr
    assert "refused: ['create the Checkpointer in the main thread" in trainer.stdout
    restored = store.restore(tmp_path)
    assert restored.step == 1 and restored.manifest["kind"] == "triggered"


def wait_for(condition, what, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_two_survivors_write_one_checkpoint(tmp_path):
    """Both survivors stand at step 3 (as ranks in lockstep do) and are signalled:
    the first claims the step and writes it, the second waits on the claim and
    records that its peer committed. The gate holds the claimant until the second
    is waiting, so both paths are taken every time."""
    directory, gate = tmp_path / "ckpt", tmp_path / "gate"
    env = {"STOP_AT": "3", "GATE": str(gate), "CLAIM_STALE_S": "60"}
    first = start_trainer(directory, rank=1, env=env)
    second = start_trainer(directory, rank=2, env=env)
    read_until(first, "completed", 3)
    read_until(second, "completed", 3)
    first.send_signal(signal.SIGTERM)
    wait_for((directory / ".claim-step-00000003").exists, "rank 1's claim")
    second.send_signal(signal.SIGTERM)
    wait_for(lambda: any(e["event"] == "claim-wait" and e["rank"] == 2
                         for e in store.read_events(directory)), "rank 2 waiting on the claim")
    gate.touch()
    for process in (first, second):
        _, errors = process.communicate(timeout=60)
        assert process.returncode == EXIT_REQUEUE, errors
    events = store.read_events(directory)
    commits = [(e["rank"], e["kind"], e["step"], e["committed"])
               for e in events if e["event"] == "checkpoint"]
    assert commits == [(1, "triggered", 3, True)]
    assert [(e["rank"], e["step"]) for e in events if e["event"] == "checkpoint-by-peer"] \
        == [(2, 3)]
    assert [step for step, _ in store.committed_steps(directory)] == [3]
    assert not list(directory.glob(".claim-*")) and not list(directory.glob(".tmp-*"))
    restored = store.restore(directory)
    assert restored.step == 3 and restored.manifest["writer"]["rank"] == 1
    assert restored.values["weights"].shape == (1000,)
    assert np.all(restored.values["weights"] == 3)


def test_an_orphan_of_an_older_run_is_fenced_off(tmp_path):
    newer = Checkpointer(tmp_path, run=2, signals=())
    newer.register(lambda: {"w": np.ones(3)})
    newer.completed(10)
    newer.checkpoint("periodic")
    orphan = Checkpointer(tmp_path, run=1, signals=())
    orphan.register(lambda: {"w": np.zeros(3)})
    orphan.completed(12)
    assert orphan.checkpoint("triggered") is None
    assert store.restore(tmp_path).step == 10
    assert "fenced" in [e["event"] for e in store.read_events(tmp_path)]


def test_periodic_checkpoints_are_snapshots_written_in_the_background(tmp_path, monkeypatch):
    # Which thread wrote is the deterministic proof of "in the background"; comparing
    # the stall with the write time was not (a loaded machine can make either longer).
    writer_threads = []
    real_write = store.write_checkpoint

    def recording_write(*args, **kwargs):
        writer_threads.append(threading.current_thread().name)
        return real_write(*args, **kwargs)

    monkeypatch.setattr(store, "write_checkpoint", recording_write)
    weights = np.zeros(200_000)
    ckpt = Checkpointer(tmp_path, periodic_steps=2, signals=(), keep=2)
    ckpt.register(lambda: {"weights": weights}, lambda: {"note": "x"})
    for step in range(1, 9):
        with ckpt.update(step):
            weights[:] = step
        ckpt.maybe_checkpoint()
        ckpt.wait()  # deterministic for the test: each periodic write completes
    ckpt.close()
    events = [e for e in store.read_events(tmp_path) if e["event"] == "checkpoint"]
    assert [e["step"] for e in events] == [2, 4, 6, 8]
    assert all(e["kind"] == "periodic" and e["stall_s"] >= 0 for e in events)
    assert writer_threads == ["slurmkit-ckpt-writer"] * 4
    restored = store.restore(tmp_path)
    assert restored.step == 8 and np.all(restored.values["weights"] == 8)
    assert restored.metadata == {"note": "x"}
    assert len(store.committed_steps(tmp_path)) == 2


def test_the_snapshot_is_taken_at_the_step_even_if_training_moves_on(tmp_path):
    weights = np.zeros(1_000_000)
    ckpt = Checkpointer(tmp_path, periodic_steps=1, signals=())
    ckpt.register(lambda: {"weights": weights})
    with ckpt.update(1):
        weights[:] = 1
    ckpt.maybe_checkpoint()
    with ckpt.update(2):  # overwrites the live array while the writer may be writing
        weights[:] = 2
    ckpt.close()
    assert np.all(store.restore(tmp_path, step=1).values["weights"] == 1)


@pytest.mark.parametrize("name, number", [("USR2", 12), ("SIGTERM", 15), ("12", 12), (2, 2)])
def test_signal_names(name, number):
    assert signal_number(name) == number


@pytest.mark.parametrize("name", ["USR1", "SIGKILL", "STOP", "NOPE"])
def test_bad_signals_are_refused(name):
    with pytest.raises(ValueError):
        signal_number(name)


def test_events_record_runs(tmp_path):
    ckpt = Checkpointer(tmp_path, run=3, job_id="42", signals=())
    ckpt.register(lambda: {"w": np.ones(2)})
    ckpt.completed(1)
    ckpt.checkpoint()
    event = [e for e in store.read_events(tmp_path) if e["event"] == "checkpoint"][0]
    assert (event["run"], event["job_id"], event["kind"]) == (3, "42", "final")
    assert json.loads((tmp_path / "step-00000001" / "manifest.json").read_text())["run"] == 3


def test_a_large_snapshot_is_copied_exactly_in_parallel_chunks(monkeypatch):
    from slurmkit.ckpt import manager

    # Small thresholds, so that a few KiB take the chunked, threaded path.
    monkeypatch.setattr(manager, "PARALLEL_COPY_MIN_BYTES", 1024)
    monkeypatch.setattr(manager, "_COPY_CHUNK_BYTES", 1000)  # not a multiple of 8
    monkeypatch.setattr(manager.os, "cpu_count", lambda: 2)
    rng = np.random.default_rng(7)
    state = {"weights": rng.standard_normal((37, 41)),
             "strided": rng.standard_normal((64, 64))[:, ::3],  # not contiguous
             "meta": b"step 9"}
    buffers: dict = {}
    snapshot = manager.copy_snapshot(state, buffers)
    assert np.array_equal(snapshot["weights"], state["weights"])
    assert np.array_equal(snapshot["strided"], state["strided"])
    assert snapshot["meta"] == b"step 9"
    state["weights"][0, 0] += 1.0  # the snapshot is a copy, not a view
    assert snapshot["weights"][0, 0] != state["weights"][0, 0]
    again = manager.copy_snapshot(state, buffers)
    assert again["weights"] is snapshot["weights"]  # buffers are reused
    assert np.array_equal(again["weights"], state["weights"])


def test_a_second_trigger_waits_for_the_first_write_instead_of_exiting(tmp_path):
    """The supervisor's request triggers on one thread; the trainer's own collective
    then fails and it calls trigger() again on the main thread: that call must wait
    (the process must not end while the other thread writes and holds the claim)."""
    script = textwrap.dedent("""
        import sys, threading, time
        import numpy as np
        from slurmkit.ckpt import Checkpointer
        ckpt = Checkpointer(sys.argv[1], signals=(), triggered=True)
        state = np.arange(4.0)
        def slow_state():
            time.sleep(1.0)  # the first trigger is still writing
            return {"state": state}
        ckpt.register(slow_state)
        ckpt.completed(7)
        threading.Thread(target=ckpt.trigger, args=("the supervisor asked",),
                         daemon=True).start()  # as the request and signal threads are
        time.sleep(0.3)
        ckpt.trigger("the main thread's collective failed")
        sys.exit(3)  # never reached: the first trigger exits with 85
    """)
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 85, result.stderr
    restored = store.restore(tmp_path)
    assert restored.step == 7 and restored.manifest["kind"] == "triggered"


def _survivor(directory, rank, state, **options):
    ckpt = Checkpointer(directory, rank=rank, signals=(), exit_on_trigger=False,
                        claim_stale_s=0.6, **options)
    ckpt.register(lambda: {"state": state})
    ckpt.completed(5)
    return ckpt


def test_a_dead_claimants_claim_is_taken_over_quickly(tmp_path):
    claim = tmp_path / f".claim-{store.step_dir_name(5)}"
    claim.write_text('{"host": "gone", "rank": 9}')  # its writer died: never touched again
    started = time.monotonic()
    _survivor(tmp_path, 1, np.ones(3)).trigger("peer lost")
    assert 0.6 <= time.monotonic() - started < 3
    assert store.restore(tmp_path).step == 5
    assert [e["event"] for e in store.read_events(tmp_path)].count("claim-stale") == 1


def test_a_slow_but_live_claimant_is_waited_for(tmp_path):

    state = np.ones(3)
    slow = _survivor(tmp_path, 0, state)
    slow.register(lambda: (time.sleep(2.0), {"state": state})[1])  # 2 s > claim_stale_s
    writer = threading.Thread(target=slow.trigger, args=("peer lost",))
    writer.start()
    wait_for_claim = time.monotonic() + 5
    claim = tmp_path / f".claim-{store.step_dir_name(5)}"
    while not claim.exists() and time.monotonic() < wait_for_claim:
        time.sleep(0.01)
    _survivor(tmp_path, 1, state).trigger("peer lost")
    writer.join()
    events = [e for e in store.read_events(tmp_path) if e["event"] in (
        "claim-stale", "checkpoint-by-peer", "checkpoint")]
    assert [(e["event"], e["rank"]) for e in events] == [("checkpoint", 0),
                                                         ("checkpoint-by-peer", 1)]
