"""A service's state directory: what the controller and ``slurmkit serve
status|scale|stop`` share. No state the controller cannot rebuild lives here: the
replicas are the jobs in ``squeue`` and the servers in HAProxy; these files only carry
requests (``control.json``), what the controller last saw (``status.json``), its
history (``events.jsonl``) and who controls the service (``controller.lock``).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slurmkit.errors import SlurmkitError, UserInputError

#: Largest status/control file read back (they are a few KB).
MAX_FILE_BYTES = 1 << 20


@dataclass(frozen=True)
class StateDir:
    path: Path

    @property
    def control(self) -> Path:
        return self.path / "control.json"

    @property
    def status(self) -> Path:
        return self.path / "status.json"

    @property
    def events(self) -> Path:
        return self.path / "events.jsonl"

    @property
    def lock(self) -> Path:
        return self.path / "controller.lock"

    @property
    def replicas(self) -> Path:
        return self.path / "replicas"

    def ensure(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.replicas.mkdir(exist_ok=True)
        except OSError as error:
            raise UserInputError(f"cannot create the service's state directory {self.path} "
                                 f"({error.strerror or error}): set state_dir in the spec to "
                                 "a writable directory") from None


def write_json(path: Path, value: Any) -> None:
    """Atomically (temporary file + rename): a reader never sees half a file."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(value, indent=1, sort_keys=True) + "\n")
    os.replace(temporary, path)


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None when it is missing or not a JSON object."""
    from slurmkit import files

    try:
        value = json.loads(files.read_text(path, "service state file", max_bytes=MAX_FILE_BYTES))
    except (SlurmkitError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def append_event(path: Path, event: str, **fields: Any) -> dict[str, Any]:
    record = {"event": event, "time_epoch_s": round(time.time(), 3), **fields}
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")
    return record


def read_events(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    events = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash
        if isinstance(record, dict):
            events.append(record)
    return events


class ControllerLock:
    """An exclusive ``flock`` on controller.lock, held while a controller runs: a second
    controller of the same service is refused, and ``serve stop`` can tell whether one
    is alive (the lock dies with its process, even on SIGKILL)."""

    def __init__(self, state: StateDir):
        self.state = state
        self.handle = None

    def acquire(self) -> None:
        self.state.ensure()
        handle = open(self.state.lock, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise UserInputError(f"the service is already controlled by {holder}: use "
                                 "`slurmkit serve status|scale|stop SPEC` to talk to it") \
                from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        self.handle = handle

    def release(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


def controller_alive(state: StateDir) -> bool:
    """True while some process holds the service's controller lock."""
    try:
        handle = open(state.lock)
    except OSError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def read_control(state: StateDir) -> dict[str, Any]:
    return read_json(state.control) or {}


def request(state: StateDir, **changes: Any) -> dict[str, Any]:
    """Merge ``changes`` into control.json (``pinned``, ``stop``)."""
    state.ensure()
    control = read_control(state)
    control.update(changes)
    write_json(state.control, control)
    return control
