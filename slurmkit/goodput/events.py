"""slurmkit.ckpt's events (``events.jsonl`` in checkpoint directories), per job.

The trainer's rank 0 appends one ``step`` event per completed step, ``run-start``,
``restore`` (which step a run resumed from), ``checkpoint`` (kind, step, stall),
``trigger``, and ``restart`` for each restart inside the allocation (dead nodes, the
fault, detection and resume times). They say what sacct cannot: how much of an
interrupted run was kept, and where the time of a restart went.
"""

from __future__ import annotations

import json
import math
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from slurmkit.errors import UserInputError


@dataclass(frozen=True)
class Restart:
    """One restart inside the allocation: fault (last sign of life), detection (the
    ranks declared the peer dead), resume (first completed step after it; None if the
    job never resumed)."""

    fault_s: float
    detected_s: float
    resumed_s: float | None
    checkpoint_step: int
    dead_nodes: tuple[str, ...]
    spare_used: str | None
    attempt: int


@dataclass
class RunEvents:
    steps: list[tuple[float, int]] = field(default_factory=list)  # (time, step), in time order
    restored_step: int | None = None
    final_step: int | None = None  # a "final" checkpoint was written at this step
    stall_s: float = 0.0  # periodic/final checkpoint stalls on the writer rank
    periodic: list[tuple[float, float]] = field(default_factory=list)  # (time, write_s)
    restarts: list[Restart] = field(default_factory=list)

    @property
    def max_step(self) -> int | None:
        return max((step for _, step in self.steps), default=None)

    def step_time(self, step: int, before: float = float("inf")) -> float | None:
        """When ``step`` last completed before ``before``."""
        times = [at for at, number in self.steps if number == step and at <= before]
        return max(times) if times else None

    def last_step_before(self, moment: float) -> tuple[float, int] | None:
        earlier = [entry for entry in self.steps if entry[0] <= moment]
        return earlier[-1] if earlier else None


@dataclass
class JobEvents:
    job_id: int
    runs: dict[int, RunEvents] = field(default_factory=dict)
    bad_lines: int = 0

    @property
    def total_steps(self) -> int | None:
        return max((r.max_step or 0 for r in self.runs.values()), default=None)


def load_events(paths: Iterable[str | Path]) -> dict[int, JobEvents]:
    """Every ``events.jsonl`` under the given directories (or the given files),
    indexed by job id (JobIDRaw, as the trainer sees SLURM_JOB_ID). A path that is
    neither a directory nor a regular file raises UserInputError; files that are not
    regular (a FIFO) are skipped; lines that are not events are counted per job in
    ``bad_lines`` (or ignored when they name no job)."""
    jobs: dict[int, JobEvents] = {}
    for given in paths:
        root = Path(given)
        try:
            mode = root.stat().st_mode
        except OSError as error:
            raise UserInputError(f"--events {root}: {error.strerror or error}") from None
        if stat.S_ISDIR(mode):
            files = sorted(root.rglob("events.jsonl"))
        elif stat.S_ISREG(mode):
            files = [root]
        else:
            raise UserInputError(f"--events {root}: not a directory or a regular file")
        for path in files:
            try:
                if not stat.S_ISREG(os.stat(path).st_mode):
                    continue  # a FIFO would block
                with open(path, encoding="utf-8", errors="replace") as stream:
                    for line in stream:
                        add_event(jobs, line)
            except OSError:
                continue
    for job in jobs.values():
        for run in job.runs.values():
            run.steps.sort()
            run.restarts.sort(key=lambda restart: restart.detected_s)
    return jobs


def add_event(jobs: dict[int, JobEvents], line: str | dict) -> None:
    """Add one event (a JSON line, or its decoded dict); anything malformed is skipped."""
    try:
        event = json.loads(line) if isinstance(line, str) else line
        job_text = str(event.get("job_id"))
        if not (job_text.isascii() and job_text.isdigit() and len(job_text) <= 10):
            return
    except (ValueError, AttributeError, RecursionError):
        return  # a line torn by a crash, or no event at all
    job = jobs.setdefault(int(job_text), JobEvents(int(job_text)))
    try:
        _add(job, event)
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError):
        job.bad_lines += 1


def _number(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"not a number: {value!r}")
    return float(value)


def _add(job: JobEvents, event: dict) -> None:
    run_index = int(_number(event.get("run", 0) or 0))
    kind = event.get("event")
    at = _number(event.get("time_epoch_s", 0.0))
    run = job.runs.setdefault(run_index, RunEvents())
    if kind == "step":
        run.steps.append((at, int(_number(event["step"]))))
    elif kind == "restore" and event.get("rank", 0) == 0:
        run.restored_step = int(_number(event["step"]))
    elif kind == "checkpoint" and event.get("committed", True):
        step, rank = int(_number(event["step"])), event.get("rank", 0)
        if event.get("kind") == "final":
            run.final_step = step
        if event.get("kind") in ("periodic", "final") and rank == 0:
            run.stall_s += _number(event.get("stall_s", 0.0))
        if event.get("kind") == "periodic" and rank == 0:
            run.periodic.append((at, _number(event.get("write_s", 0.0))))
    elif kind == "restart":
        resumed = event.get("resumed_epoch_s")
        dead = event.get("dead_nodes") or []
        if not isinstance(dead, list):
            raise TypeError("dead_nodes")
        run.restarts.append(Restart(
            fault_s=_number(event["fault_epoch_s"]), detected_s=_number(event["detected_epoch_s"]),
            resumed_s=None if resumed is None else _number(resumed),
            checkpoint_step=int(_number(event.get("checkpoint_step", 0) or 0)),
            dead_nodes=tuple(str(node) for node in dead),
            spare_used=None if event.get("spare_used") is None else str(event["spare_used"]),
            attempt=int(_number(event.get("attempt", 0) or 0))))
