"""Checkpointer: the trainer's side of surviving failures.

The trainer registers a function that returns its state and wraps each optimizer
update in ``with ckpt.update(step):``. Outside those windows the state is a consistent
"last completed step", so a trigger can always write it:

- **triggered**: SIGTERM (node failure of a peer, preemption, scancel) or the warning
  signal (default USR2, never USR1: NCCL uses it), or ``trigger()`` from the trainer
  when a collective loses a peer. A watcher thread receives the signal even while the
  main thread is blocked in a collective (each signal is
  noted by the C-level handler through Python's wakeup fd), waits for the update
  window to close, and writes the last
  completed step. Several survivors may be triggered at once: the first claims the
  step, the others wait for its commit and take over if the claimant dies. Then the
  process exits with ``EXIT_REQUEUE`` (85), which the job script turns into a requeue.
- **periodic** (the fallback): every N steps or T seconds, rank 0 copies the state
  into preallocated host buffers (the only stall the trainer sees) and a background
  thread writes and commits it.
- **fencing**: a run that finds a newer run or attempt started (``runs/run-N``
  markers from ``SLURM_RESTART_COUNT``, ``runs/attempt-N-A`` from
  ``SLURMKIT_ATTEMPT``, the in-allocation restarts of ``slurmkit.launch``) writes
  nothing: an orphan cut off by the network cannot overwrite the restarted job's
  checkpoints.
- **peer loss** (under ``slurmkit.launch``): a heartbeat thread keeps in touch with
  the supervisor, which asks for the triggered checkpoint when another rank is lost;
  the goodbye this rank sends before exiting tells the supervisor which step it saved.

Every action is appended to ``events.jsonl`` in the checkpoint directory (for
``slurmkit goodput``).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from slurmkit.ckpt import store
from slurmkit.ckpt.sharded import keep_fresh
from slurmkit.ckpt.store import CheckpointError, Restored, Value

EXIT_REQUEUE = 85
#: Outcomes of a triggered write after which the step is safely on disk.
_SAVED = ("committed", "by-peer", "exists")
_ATTEMPT_MARK = re.compile(r"^attempt-\d+-\d+$")
_FORBIDDEN_SIGNALS = {"USR1", "KILL", "STOP"}

Snapshotter = Callable[[Mapping[str, Any], dict[str, np.ndarray]], dict[str, Value]]


def _env_int(env: Mapping[str, str], *names: str, default: int) -> int:
    """The first of ``names`` set in ``env``, as an integer (a clear error if not)."""
    for name in names:
        text = env.get(name)
        if text:
            try:
                return int(text)
            except ValueError:
                raise CheckpointError(f"{name}={text!r} is not an integer") from None
    return default


def signal_number(name: str | int) -> int:
    """``"USR2"``, ``"SIGUSR2"`` or ``12`` -> 12; USR1/KILL/STOP are refused."""
    if isinstance(name, int):
        number = name
        name = signal.Signals(number).name
    text = str(name).upper().removeprefix("SIG")
    if text in _FORBIDDEN_SIGNALS:
        raise ValueError(f"SIG{text} cannot be the checkpoint signal"
                         + (" (NCCL uses it)" if text == "USR1" else ""))
    if text.isdigit():
        return signal_number(int(text))
    try:
        return int(getattr(signal, f"SIG{text}"))
    except AttributeError:
        raise ValueError(f"unknown signal {name!r}") from None


#: Below this many bytes a snapshot is copied by the calling thread alone.
PARALLEL_COPY_MIN_BYTES = 64 << 20
_COPY_CHUNK_BYTES = 16 << 20
_copy_pool: ThreadPoolExecutor | None = None
_copy_pool_lock = threading.Lock()  # the trainer's and the watcher's thread may both copy


def _copy_in_parallel(pairs: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """np.copyto releases the GIL: one thread copies at about 9 GB/s here, which made
    the stall of a 1 GiB snapshot 0.12 s; chunks on 2+ threads take 0.076 s."""
    global _copy_pool
    with _copy_pool_lock:
        if _copy_pool is None:
            # No signal mask is involved: whichever thread (these workers included)
            # the kernel hands a checkpoint signal to, the C-level handler only writes
            # it to the watcher's wakeup fd (see Checkpointer._start_watcher).
            _copy_pool = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1),
                                            thread_name_prefix="ckpt-copy")
    chunks = []
    for buffer, value in pairs:
        if not value.flags.c_contiguous:
            chunks.append((buffer, value))
            continue
        flat_buffer, flat_value = buffer.reshape(-1), value.reshape(-1)
        step = max(1, _COPY_CHUNK_BYTES // max(1, value.itemsize))
        chunks.extend((flat_buffer[start:start + step], flat_value[start:start + step])
                      for start in range(0, flat_value.size, step))
    for future in [_copy_pool.submit(np.copyto, target, source) for target, source in chunks]:
        future.result()


def copy_snapshot(state: Mapping[str, Any], buffers: dict[str, np.ndarray]) -> dict[str, Value]:
    """Copy arrays into reusable host buffers (allocated once per shape/dtype); large
    snapshots in chunks on a few threads."""
    snapshot: dict[str, Value] = {}
    pairs: list[tuple[np.ndarray, np.ndarray]] = []
    for name, value in state.items():
        if isinstance(value, np.ndarray):
            buffer = buffers.get(name)
            if buffer is None or buffer.shape != value.shape or buffer.dtype != value.dtype:
                buffer = buffers[name] = np.empty_like(value, order="C")
            pairs.append((buffer, value))
            snapshot[name] = buffer
        else:
            snapshot[name] = bytes(value)
    total_bytes = sum(value.nbytes for _, value in pairs)
    if total_bytes >= PARALLEL_COPY_MIN_BYTES and (os.cpu_count() or 1) > 1:
        _copy_in_parallel(pairs)
    else:
        for buffer, value in pairs:
            np.copyto(buffer, value)
    return snapshot


class Checkpointer:
    """See the module docstring. Thread-safe for one trainer thread plus its own
    watcher and writer threads. With triggered checkpoints (the default) create it in
    the main thread: Python installs signal handlers only there (CheckpointError)."""

    def __init__(self, directory: str | Path, *, rank: int = 0, world_size: int = 1,
                 run: int = 0, attempt: int = 0, job_id: str | None = None, keep: int = 3,
                 periodic_steps: int | None = None, periodic_seconds: float | None = None,
                 periodic_writer_rank: int = 0, signals: tuple[str, ...] = ("USR2", "TERM"),
                 triggered: bool = True, exit_on_trigger: bool = True,
                 claim_stale_s: float = 3.0, lock_timeout_s: float = 30.0,
                 snapshotter: Snapshotter = copy_snapshot,
                 log: Callable[[str], None] | None = None):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.rank, self.world_size, self.run, self.job_id = rank, world_size, run, job_id
        self.attempt = attempt
        self.keep = keep
        self.periodic_steps, self.periodic_seconds = periodic_steps, periodic_seconds
        self.periodic_writer_rank = periodic_writer_rank
        self.triggered_enabled = triggered
        self.exit_on_trigger = exit_on_trigger
        self.claim_stale_s, self.lock_timeout_s = claim_stale_s, lock_timeout_s
        self.snapshotter = snapshotter
        # Slurm's name of the node (NodeName), which may differ from its host name.
        self.host = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
        self._log = log or (lambda text: print(f"slurmkit.ckpt[{rank}]: {text}",
                                               file=sys.stderr, flush=True))
        self._lock = threading.Lock()  # held while the state is being changed or read
        self._state_fn: Callable[[], Mapping[str, Any]] | None = None
        self._metadata_fn: Callable[[], Mapping[str, Any]] | None = None
        self._completed_step: int | None = None
        self._trigger_lock = threading.Lock()
        self._trigger_done = threading.Event()  # set when a trigger() that returns is done
        self._triggered = False
        self._saved_step: int | None = None  # what the triggered write saved, when not
        #                                     the last completed step (sharded: older)
        self._last_periodic_step: int | None = None
        self._last_periodic_time = time.monotonic()
        self._buffers: dict[str, np.ndarray] = {}
        self._writer: threading.Thread | None = None
        self._link = None  # heartbeat.SupervisorLink, under slurmkit.launch
        self.signals = tuple(signal_number(name) for name in signals) if triggered else ()
        self._mark_run()
        if self.signals:
            self._start_watcher()

    @classmethod
    def from_env(cls, **overrides) -> Checkpointer:
        """Directory, rank, world size, run, attempt and signal from the job's
        environment (SLURMKIT_CKPT_DIR, RANK/WORLD_SIZE under torchrun else
        SLURM_PROCID/SLURM_NTASKS, SLURM_RESTART_COUNT, SLURMKIT_ATTEMPT, SLURM_JOB_ID,
        SLURMKIT_CKPT_SIGNAL). Under ``slurmkit.launch`` (SLURMKIT_SUPERVISOR set) it
        also starts the heartbeat with the supervisor."""
        env = os.environ
        directory = overrides.pop("directory", None) or env.get("SLURMKIT_CKPT_DIR")
        if not directory:
            raise CheckpointError("no checkpoint directory: set SLURMKIT_CKPT_DIR (slurmkit "
                                  "submit does it from checkpoint_dir) or pass directory=")
        warning = env.get("SLURMKIT_CKPT_SIGNAL", "USR2")
        options = dict(rank=_env_int(env, "RANK", "SLURM_PROCID", default=0),
                       world_size=_env_int(env, "WORLD_SIZE", "SLURM_NTASKS", default=1),
                       run=_env_int(env, "SLURM_RESTART_COUNT", default=0),
                       attempt=_env_int(env, "SLURMKIT_ATTEMPT", default=0),
                       job_id=env.get("SLURM_JOB_ID"),
                       signals=tuple(dict.fromkeys((warning, "TERM"))))
        options.update(overrides)
        checkpointer = cls(directory, **options)
        if env.get("SLURMKIT_SUPERVISOR"):
            checkpointer.connect_supervisor(env["SLURMKIT_SUPERVISOR"], step_id=env.get(
                "SLURM_STEP_ID"))
        return checkpointer

    def connect_supervisor(self, address: str, *, step_id: str | None = None) -> None:
        """Keep a heartbeat with the launch supervisor at ``HOST:PORT``: it asks for
        the triggered checkpoint when a peer is lost; if it falls silent (the batch
        host is lost), this rank writes the triggered checkpoint itself."""
        from slurmkit.launch import heartbeat

        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise CheckpointError(f"SLURMKIT_SUPERVISOR={address!r}: expected HOST:PORT")
        timeout_s = heartbeat.timeout_from_env()

        def supervisor_lost(reason: str) -> None:
            # Give the survivors that still hear the supervisor the first claim: a rank
            # cut off from the network would otherwise hold the claim.
            time.sleep(timeout_s)
            self.trigger(f"supervisor lost ({reason})")

        self._link = heartbeat.SupervisorLink(
            (host, int(port)),
            {"rank": self.rank, "host": self.host, "pid": os.getpid(),
             "attempt": self.attempt, "step_id": step_id},
            step_fn=lambda: self._completed_step, on_checkpoint=self.trigger,
            on_supervisor_lost=supervisor_lost, interval_s=heartbeat.interval_from_env(),
            timeout_s=timeout_s)
        atexit.register(self._link.goodbye, "exit")
        # Train only once the supervisor knows this rank: a rank that died before its
        # hello would be missed (the others would wait for it in their collectives).
        self._link.wait_connected(self._link.connect_timeout_s)

    # ---------------------------------------------------------------- trainer API

    def register(self, state_fn: Callable[[], Mapping[str, Any]],
                 metadata_fn: Callable[[], Mapping[str, Any]] | None = None) -> None:
        """``state_fn()`` returns the values to checkpoint (arrays or bytes); it is
        called only outside update windows, under the checkpoint lock."""
        self._state_fn, self._metadata_fn = state_fn, metadata_fn

    def restore(self, step: int | None = None) -> Restored | None:
        restored = store.restore(self.directory, step=step)
        if restored is not None:
            self._completed_step = restored.step
            self._last_periodic_step = restored.step
            self._event("restore", step=restored.step, skipped=[why for _, why in restored.skipped])
            self._log(restored.describe())
        return restored

    @contextlib.contextmanager
    def update(self, step: int) -> Iterator[None]:
        """The window in which the state changes from step-1 to ``step``. A trigger
        during it waits until it ends, then writes ``step``."""
        with self._lock:
            yield
            self._completed_step = step

    def completed(self, step: int) -> None:
        """Mark ``step`` complete without an update window (state changed elsewhere)."""
        with self._lock:
            self._completed_step = step

    @property
    def completed_step(self) -> int | None:
        return self._completed_step

    def maybe_checkpoint(self) -> None:
        """Periodic async checkpoint when due (on the periodic writer rank only)."""
        if self.rank != self.periodic_writer_rank or self._state_fn is None:
            return
        step = self._completed_step
        if step is None or step == self._last_periodic_step:
            return
        due_steps = self.periodic_steps and (step - (self._last_periodic_step or 0)
                                             >= self.periodic_steps)
        due_time = self.periodic_seconds and (time.monotonic() - self._last_periodic_time
                                              >= self.periodic_seconds)
        if not (due_steps or due_time):
            return
        if self._writer is not None and self._writer.is_alive():
            self._event("checkpoint-skipped", step=step, reason="previous write in progress")
            return
        started = time.perf_counter()
        with self._lock:
            step = self._completed_step
            snapshot = self.snapshotter(self._state_fn(), self._buffers)
            metadata = dict(self._metadata_fn() if self._metadata_fn else {})
        stall_s = time.perf_counter() - started
        self._last_periodic_step = step
        self._last_periodic_time = time.monotonic()
        self._writer = threading.Thread(target=self._write_async, name="slurmkit-ckpt-writer",
                                        args=(step, snapshot, metadata, stall_s), daemon=True)
        self._writer.start()

    def checkpoint(self, kind: str = "final") -> store.WriteResult | None:
        """Write the last completed step now (synchronously) and wait for any
        periodic write in flight."""
        self.wait()
        with self._lock:
            step = self._completed_step
            if step is None or self._state_fn is None:
                return None
            if self._fenced():
                return None
            result = self._write(step, self._state_fn(), kind)
        return result

    def trigger(self, reason: str) -> None:
        """Write a triggered checkpoint of the last completed step (any survivor may
        call it; the first to claim the step writes). Exits with EXIT_REQUEUE when
        ``exit_on_trigger``. Idempotent: a second call (Slurm signals twice; the
        trainer's own collective fails while the supervisor's request is being served)
        waits until the first is done — with ``exit_on_trigger``, for ever: the
        process must not end while another thread is writing (its claim would make the
        other survivors wait for it)."""
        with self._trigger_lock:
            first = not self._triggered
            self._triggered = True
        if not first:
            self._trigger_done.wait()
            return
        self._event("trigger", reason=reason, step=self._completed_step)
        self._log(f"triggered ({reason}); last completed step {self._completed_step}")
        self._request_requeue()
        outcome = "failed"
        try:
            if self.triggered_enabled:
                outcome = self._write_triggered()
            else:  # periodic checkpoints only: the next run resumes from the last of them
                outcome = "disabled"
                self._event("checkpoint-skipped", kind="triggered",
                            reason="triggered checkpoints disabled")
        except Exception as error:  # the exit must happen whatever the write did
            self._event("checkpoint-failed", kind="triggered", error=repr(error))
            self._log(f"triggered checkpoint failed: {error!r}")
        if self._link is not None:
            step = self._saved_step if self._saved_step is not None else self._completed_step
            self._link.goodbye("triggered", reason=reason, step=step,
                               outcome=outcome, saved=outcome in _SAVED)
            self._requeue_if_batch_host_lost()
        if self.exit_on_trigger:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(EXIT_REQUEUE)
        self._trigger_done.set()

    def event(self, name: str, **fields) -> None:
        """Append an event of the trainer's own (e.g. ``step``) to ``events.jsonl``,
        with this run's job id, run, rank and host."""
        self._event(name, **fields)

    @property
    def triggered(self) -> bool:
        return self._triggered

    def wait(self) -> None:
        if self._writer is not None:
            self._writer.join()

    def close(self) -> None:
        self.wait()
        if self._link is not None:
            self._link.goodbye("done", step=self._completed_step)

    # ---------------------------------------------------------------- internals

    def _event(self, event: str, **fields) -> None:
        try:
            store.append_event(self.directory, {
                "event": event, "run": self.run, "attempt": self.attempt,
                "job_id": self.job_id, "rank": self.rank, "host": self.host, **fields})
        except OSError as error:
            self._log(f"cannot append event {event}: {error}")

    def _mark_run(self) -> None:
        runs = self.directory / "runs"
        runs.mkdir(exist_ok=True)
        (runs / f"run-{self.run:06d}").touch()
        (runs / f"attempt-{self.run:06d}-{self.attempt:04d}").touch()

    def requeue_marker(self) -> Path:
        """Exists once any rank of this run was triggered: the job script requeues the
        job when srun fails and this file exists (a rank killed by a signal makes srun
        report the signal, not the survivors' exit code 85)."""
        return self.directory / "runs" / f"requeue-{self.run:06d}"

    def _requeue_if_batch_host_lost(self) -> None:
        """With the batch host down, Slurm 24.11 removes it from the --no-kill job,
        kills the batch step (the supervisor with it) and leaves the job RUNNING on the
        other nodes, idle until its time limit; so the survivors ask for the requeue.
        Only when the supervisor is silent AND the batch host's slurmd does not answer:
        a rank cut off from the network cannot reach slurmctld either, and its request
        fails harmlessly."""
        from slurmkit.launch import heartbeat

        link = self._link
        if self.job_id is None or link.supervisor_alive(link.timeout_s + link.interval_s):
            return  # it answered our goodbye: it is alive and decides what comes next
        host = link.address[0]
        if heartbeat.node_answers(host, heartbeat.slurmd_port_from_env(), timeout_s=1.0):
            return
        try:
            result = subprocess.run(["scontrol", "requeue", str(self.job_id)],
                                    capture_output=True, text=True, timeout=60, check=False)
        except (OSError, subprocess.SubprocessError) as error:
            self._event("requeue-failed", error=repr(error))
            return
        self._event("requeue-requested", why=f"the batch host {host} is lost",
                    returncode=result.returncode, stderr=result.stderr.strip()[:300])

    def _request_requeue(self) -> None:
        try:
            self.requeue_marker().touch()
        except OSError as error:
            self._log(f"cannot write {self.requeue_marker()}: {error}")

    def _fenced(self) -> bool:
        """True when a newer run (requeue) or attempt (in-allocation restart) of this
        job has started: we are an orphan."""
        ours = (self.run, self.attempt)
        newer = []
        for entry in (self.directory / "runs").iterdir():
            name = entry.name
            if name.startswith("run-") and name[4:].isdigit():
                generation = (int(name[4:]), 0)
            elif name.startswith("attempt-") and _ATTEMPT_MARK.match(name):
                run, attempt = name[8:].split("-")
                generation = (int(run), int(attempt))
            else:
                continue
            if generation[0] > ours[0] or (generation[0] == ours[0] and generation > ours):
                newer.append(generation)
        if newer:
            run, attempt = min(newer)
            self._event("fenced", newer_run=run, newer_attempt=attempt)
            self._log(f"run {self.run} attempt {self.attempt} is fenced off by run {run} "
                      f"attempt {attempt}: not writing")
            return True
        return False

    def _write(self, step: int, values: Mapping[str, Value], kind: str,
               stall_s: float | None = None, metadata: Mapping[str, Any] | None = None
               ) -> store.WriteResult:
        if metadata is None:
            metadata = self._metadata_fn() if self._metadata_fn else {}
        info = {"kind": kind, "run": self.run, "job_id": self.job_id,
                "writer": {"host": self.host, "rank": self.rank, "pid": os.getpid()}}
        result = store.write_checkpoint(self.directory, step, values, metadata=metadata,
                                        info=info)
        if result.committed_by_us:
            store.retain(self.directory, self.keep)
        self._event("checkpoint", kind=kind, step=step, bytes=result.bytes_written,
                    write_s=round(result.seconds, 4),
                    stall_s=round(stall_s if stall_s is not None else result.seconds, 4),
                    committed=result.committed_by_us)
        return result

    def _write_async(self, step, snapshot, metadata, stall_s) -> None:
        try:
            if not self._fenced():
                self._write(step, snapshot, "periodic", stall_s=stall_s, metadata=metadata)
        except Exception as error:
            self._event("checkpoint-failed", kind="periodic", step=step, error=repr(error))
            self._log(f"periodic checkpoint of step {step} failed: {error!r}")

    def _write_triggered(self) -> str:
        """The triggered write; says how it ended: committed (by us), by-peer,
        exists (a periodic checkpoint of that step), fenced, nothing (no state yet) or
        failed."""
        if not self._lock.acquire(timeout=self.lock_timeout_s):
            self._event("checkpoint-failed", kind="triggered",
                        error="the update window did not close in time")
            return "failed"
        try:
            step = self._completed_step
            if step is None or self._state_fn is None:
                return "nothing"
            if self._fenced():
                return "fenced"
            final = self.directory / store.step_dir_name(step)
            if final.exists():
                self._event("checkpoint-exists", kind="triggered", step=step)
                return "exists"
            if not self._claim(step):
                return "by-peer"  # another survivor committed it
            claim = self.directory / f".claim-{store.step_dir_name(step)}"
            alive = threading.Event()
            keeper = threading.Thread(target=keep_fresh, args=(claim, alive,
                                                                self.claim_stale_s / 4),
                                      name="slurmkit-claim", daemon=True)
            keeper.start()
            try:
                result = self._write(step, self._state_fn(), "triggered")
            finally:
                alive.set()
                with contextlib.suppress(FileNotFoundError):
                    claim.unlink()
            return "committed" if result.committed_by_us else "exists"
        finally:
            # Exiting next: keep the update window shut, so that the trainer cannot
            # complete a step that the checkpoint just written does not hold.
            if not self.exit_on_trigger:
                self._lock.release()

    def _claim(self, step: int) -> bool:
        """True: we write. False: someone else committed ``step`` meanwhile."""
        claim = self.directory / f".claim-{store.step_dir_name(step)}"
        final = self.directory / store.step_dir_name(step)
        record = json.dumps({"host": self.host, "pid": os.getpid(), "rank": self.rank,
                             "run": self.run}).encode()
        try:
            fd = os.open(claim, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, record)
            os.close(fd)
            return True
        except FileExistsError:
            pass
        # Another survivor claimed it: wait for its commit; take over when the claim
        # goes stale. The claimant touches its claim while it writes, so a claim whose
        # time stops changing for claim_stale_s is a dead claimant's, however long a
        # live one's write takes (times compared only with each other: no clock skew).
        self._event("claim-wait", kind="triggered", step=step)
        last_seen, changed_at = None, time.monotonic()
        while True:
            if final.exists():
                self._event("checkpoint-by-peer", kind="triggered", step=step)
                return False
            try:
                seen = claim.stat().st_mtime_ns
            except FileNotFoundError:
                seen = None  # released: the commit is next (or the write failed)
            if seen != last_seen:
                last_seen, changed_at = seen, time.monotonic()
            elif time.monotonic() - changed_at > self.claim_stale_s:
                break
            time.sleep(0.05)
        self._event("claim-stale", step=step)
        return not final.exists()

    def _start_watcher(self) -> None:
        """Signals reach a watcher thread through Python's wakeup fd: the C-level
        handler writes the signal number to a pipe in whichever thread the kernel
        picked (numpy's BLAS threads included), so the watcher wakes even while the
        main thread is blocked inside a collective. The Python-level handler is a
        no-op; the process then exits through ``trigger``."""
        if threading.current_thread() is not threading.main_thread():
            raise CheckpointError("create the Checkpointer in the main thread: Python "
                                  "installs signal handlers only there")
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        for number in self.signals:
            signal.signal(number, lambda *_: None)
        watcher = threading.Thread(target=self._watch, args=(read_fd,),
                                   name="slurmkit-ckpt-signals", daemon=True)
        watcher.start()

    def _watch(self, read_fd: int) -> None:
        while True:
            data = os.read(read_fd, 64)
            for number in data:
                if number not in self.signals:
                    continue
                name = signal.Signals(number).name
                self._event("signal", signal=name)
                self.trigger(f"{name} received")
