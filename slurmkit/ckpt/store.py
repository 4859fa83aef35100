"""The on-disk checkpoint format: atomic commits, checksums, retention, events.

A checkpoint is a directory ``step-<NNNNNNNN>`` holding one raw file per array (or
bytes value) and ``manifest.json`` (sizes, dtypes, shapes, CRC-32 of every file,
step, run, writer). It is written into a hidden temporary directory — every file
fsynced, the manifest last — and committed by renaming the directory, then fsyncing
the parent. A crash at any point leaves either no new checkpoint or a complete one;
``restore`` verifies every byte and falls back to the previous checkpoint, saying
why, when the newest is damaged.

Layout::

    CKPT_DIR/step-00000120/{manifest.json, weights, momentum, ...}
    CKPT_DIR/.tmp-step-00000120-<host>-<pid>-<nonce>/     (being written)
    CKPT_DIR/events.jsonl                                  (append-only event log)
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slurmkit.errors import SlurmkitError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
EVENTS = "events.jsonl"
_STEP_DIR = re.compile(r"^step-(\d{8,})$")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_CHUNK = 64 << 20  # write and checksum in 64 MiB pieces: one pass over memory

Value = np.ndarray | bytes


class CheckpointError(SlurmkitError):
    """A checkpoint could not be written or no valid checkpoint could be restored."""


@dataclass(frozen=True)
class Restored:
    """A verified checkpoint. ``skipped`` lists newer checkpoints that failed
    verification, with the reason, newest first."""

    step: int
    path: Path
    values: dict[str, Value]
    manifest: dict[str, Any]
    skipped: tuple[tuple[str, str], ...] = ()

    @property
    def metadata(self) -> dict[str, Any]:
        return self.manifest.get("metadata", {})

    def describe(self) -> str:
        text = f"restored step {self.step} from {self.path}"
        if self.skipped:
            text += "; skipped " + "; ".join(f"{Path(p).name} ({why})" for p, why in self.skipped)
        return text


@dataclass
class WriteResult:
    step: int
    path: Path
    bytes_written: int
    seconds: float
    committed_by_us: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def committed_steps(directory: Path) -> list[tuple[int, Path]]:
    """Committed checkpoint directories, newest first (not yet verified)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for entry in directory.iterdir():
        match = _STEP_DIR.match(entry.name)
        if match and entry.is_dir():
            found.append((int(match[1]), entry))
    return sorted(found, reverse=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_value(path: Path, value: Value) -> dict[str, Any]:
    """Write one value (raw bytes of a C-contiguous array), fsync, return its entry."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = memoryview(value).cast("B")
        entry: dict[str, Any] = {"kind": "bytes"}
    elif isinstance(value, np.ndarray):
        # Not np.ascontiguousarray: it turns a 0-d array into a 1-d one.
        array = value if value.flags.c_contiguous else value.copy(order="C")
        if array.dtype.hasobject:
            raise CheckpointError(f"{path.name}: object arrays cannot be checkpointed")
        data = memoryview(array.reshape(-1).view(np.uint8)) if array.size else memoryview(b"")
        entry = {"kind": "array", "dtype": array.dtype.str, "shape": list(array.shape)}
    else:
        raise CheckpointError(f"{path.name}: expected a NumPy array or bytes, "
                              f"got {type(value).__name__}")
    crc = 0
    with open(path, "wb") as stream:
        for start in range(0, len(data), _CHUNK):
            piece = data[start:start + _CHUNK]
            crc = zlib.crc32(piece, crc)
            stream.write(piece)
        stream.flush()
        os.fsync(stream.fileno())
    entry.update(bytes=len(data), crc32=crc)
    return entry


def write_checkpoint(directory: Path, step: int, values: Mapping[str, Value], *,
                     metadata: Mapping[str, Any] | None = None,
                     info: Mapping[str, Any] | None = None) -> WriteResult:
    """Write and atomically commit checkpoint ``step``. If another writer committed
    the same step first, ours is discarded and the result says so."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name in values:
        if not _NAME.match(name) or name == MANIFEST:
            raise CheckpointError(f"invalid checkpoint entry name {name!r}: use letters, "
                                  "digits, '_', '.', '-'")
    started = time.monotonic()
    final = directory / step_dir_name(step)
    temp = directory / (f".tmp-{step_dir_name(step)}-{socket.gethostname()}-{os.getpid()}-"
                        f"{secrets.token_hex(4)}")
    temp.mkdir()
    try:
        files = {name: _write_value(temp / name, value) for name, value in values.items()}
        manifest = {
            "format": FORMAT_VERSION, "step": step, "created_epoch_s": time.time(),
            "files": files, "metadata": dict(metadata or {}), **dict(info or {}),
        }
        manifest_path = temp / MANIFEST
        with open(manifest_path, "w") as stream:
            json.dump(manifest, stream, indent=1, sort_keys=True)
            stream.flush()
            os.fsync(stream.fileno())
        _fsync_dir(temp)
        try:
            os.rename(temp, final)  # the commit
        except OSError:
            if final.exists():  # someone else committed this step: ours is redundant
                shutil.rmtree(temp, ignore_errors=True)
                return WriteResult(step, final, 0, time.monotonic() - started, False)
            raise
        _fsync_dir(directory)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    written = sum(entry["bytes"] for entry in files.values())
    return WriteResult(step, final, written, time.monotonic() - started)


def _verify_and_load(path: Path) -> tuple[dict[str, Any], dict[str, Value]]:
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise CheckpointError("no manifest") from None
    except (OSError, ValueError) as error:
        raise CheckpointError(f"unreadable manifest ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"unknown format {manifest.get('format') if isinstance(manifest, dict) else '?'}")
    values: dict[str, Value] = {}
    for name, entry in manifest.get("files", {}).items():
        file_path = path / name
        try:
            size = file_path.stat().st_size
        except FileNotFoundError:
            raise CheckpointError(f"{name} is missing") from None
        if size != entry["bytes"]:
            raise CheckpointError(f"{name} has {size} bytes, manifest says {entry['bytes']}")
        buffer = bytearray(size)
        with open(file_path, "rb") as stream:
            view = memoryview(buffer)
            read = 0
            while read < size:
                count = stream.readinto(view[read:])
                if not count:
                    raise CheckpointError(f"{name} ended early")
                read += count
        if zlib.crc32(buffer) != entry["crc32"]:
            raise CheckpointError(f"{name} fails its CRC-32 check")
        if entry.get("kind") == "bytes":
            values[name] = bytes(buffer)
        else:
            values[name] = np.frombuffer(buffer, dtype=np.dtype(entry["dtype"])).reshape(
                entry["shape"])
    return manifest, values


def restore(directory: Path, *, step: int | None = None) -> Restored | None:
    """The newest checkpoint that verifies (or exactly ``step``); None when there is
    no checkpoint at all. Raises CheckpointError when checkpoints exist but none
    verifies (nothing is silently trusted)."""
    skipped: list[tuple[str, str]] = []
    candidates = committed_steps(directory)
    if step is not None:
        candidates = [(s, p) for s, p in candidates if s == step]
        if not candidates:
            raise CheckpointError(f"no checkpoint of step {step} in {directory}")
    for candidate_step, path in candidates:
        try:
            manifest, values = _verify_and_load(path)
        except CheckpointError as error:
            skipped.append((str(path), str(error)))
            continue
        return Restored(candidate_step, path, values, manifest, tuple(skipped))
    if skipped:
        raise CheckpointError(f"no valid checkpoint in {directory}: " + "; ".join(
            f"{Path(p).name}: {why}" for p, why in skipped))
    return None


def retain(directory: Path, keep: int) -> list[Path]:
    """Delete committed checkpoints beyond the newest ``keep``, and temporary
    directories older than an hour (a dead writer's leftovers). Returns what went."""
    removed = []
    for _, path in committed_steps(directory)[max(keep, 1):]:
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    now = time.time()
    for entry in Path(directory).glob(".tmp-step-*"):
        try:
            if now - entry.stat().st_mtime > 3600:
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
        except FileNotFoundError:
            pass
    return removed


def append_event(directory: Path, event: Mapping[str, Any]) -> None:
    """One JSON line, appended with O_APPEND in a single write (atomic for lines
    below PIPE_BUF on local file systems). A line torn by a crash is ended first, so
    it cannot swallow the next event."""
    record = {"time_epoch_s": round(time.time(), 3), **dict(event)}
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    Path(directory).mkdir(parents=True, exist_ok=True)
    fd = os.open(Path(directory) / EVENTS, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        os.write(fd, line)
    finally:
        os.close(fd)


def read_events(directory: Path) -> list[dict[str, Any]]:
    path = Path(directory) / EVENTS
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue  # a torn last line after a crash
    return events
