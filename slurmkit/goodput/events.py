"""slurmkit.ckpt's events (``events.jsonl`` in checkpoint directories), per job.

The trainer's rank 0 appends one ``step`` event per completed step, ``run-start``,
``restore`` (which step a run resumed from), ``checkpoint`` (kind, step, stall) and
``trigger``. They say what sacct cannot: how much of an interrupted run was kept.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class RunEvents:
    steps: list[tuple[int, float]] = field(default_factory=list)  # (step, time), in order
    start_time: float | None = None
    restored_step: int | None = None
    restored_time: float | None = None
    final_step: int | None = None  # a "final" checkpoint was written at this step
    stall_s: float = 0.0  # periodic/final checkpoint stalls on the writer rank
    triggered_step: int | None = None
    periodic: list[tuple[float, int, float]] = field(default_factory=list)  # (time, step, write_s)

    @property
    def first_step_time(self) -> float | None:
        return self.steps[0][1] if self.steps else None

    @property
    def max_step(self) -> int | None:
        return max((step for step, _ in self.steps), default=None)

    def time_of_step(self, step: int) -> float | None:
        for number, at in self.steps:
            if number == step:
                return at
        return None


@dataclass
class JobEvents:
    job_id: int
    runs: dict[int, RunEvents] = field(default_factory=dict)

    def run(self, index: int) -> RunEvents:
        return self.runs.setdefault(index, RunEvents())

    @property
    def total_steps(self) -> int | None:
        return max((r.max_step or 0 for r in self.runs.values()), default=None)


def load_events(directories: Iterable[str | Path]) -> dict[int, JobEvents]:
    """Every ``events.jsonl`` under the directories, indexed by job id."""
    jobs: dict[int, JobEvents] = {}
    for directory in directories:
        root = Path(directory)
        files = [root] if root.is_file() else sorted(root.rglob("events.jsonl"))
        for path in files:
            try:
                lines = path.read_text(errors="replace").splitlines()
            except OSError:
                continue
            for line in lines:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue  # a line torn by a crash
                add_event(jobs, event)
    for job in jobs.values():
        for run in job.runs.values():
            run.steps.sort()
    return jobs


def add_event(jobs: dict[int, JobEvents], event: dict) -> None:
    job_id = event.get("job_id")
    if not job_id or not str(job_id).isdigit():
        return
    job = jobs.setdefault(int(job_id), JobEvents(int(job_id)))
    run = job.run(int(event.get("run", 0) or 0))
    kind, at = event.get("event"), float(event.get("time_epoch_s", 0.0))
    if kind == "step":
        run.steps.append((int(event["step"]), at))
    elif kind == "run-start":
        run.start_time = at
    elif kind == "restore" and event.get("rank", 0) == 0:
        run.restored_step, run.restored_time = int(event["step"]), at
    elif kind == "checkpoint" and event.get("committed", True):
        if event.get("kind") == "final":
            run.final_step = int(event["step"])
        if event.get("kind") in ("periodic", "final") and event.get("rank", 0) == 0:
            run.stall_s += float(event.get("stall_s", 0.0))
        if event.get("kind") == "triggered":
            run.triggered_step = int(event["step"])
        if event.get("kind") == "periodic" and event.get("rank", 0) == 0:
            run.periodic.append((at, int(event["step"]), float(event.get("write_s", 0.0))))
