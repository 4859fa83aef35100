"""The on-disk checkpoint format: atomic commits, checksums, retention, events.

A checkpoint is a directory ``step-<NNNNNNNN>`` holding one raw file per array (or
bytes value) and ``manifest.json`` (sizes, dtypes, shapes, CRC-32 of every file,
step, run, writer). It is written into a hidden temporary directory — every file
fsynced, the manifest last — and committed by renaming the directory, then fsyncing
the parent. A crash at any point leaves either no new checkpoint or a complete one;
``restore`` verifies every byte and falls back to the previous checkpoint, saying
why, when the newest is damaged.

Nothing read back is trusted: entry names pass the same check as on write (so a
manifest cannot name ``../x`` or ``/etc/passwd``), step directories and files are
opened relative to the checkpoint directory without following symbolic links, only
regular files are read (a FIFO cannot block a restore), and every field of the
manifest is checked for type and range before it is used. A checkpoint that fails any
check is skipped with the reason (``Restored.skipped``) and the previous one is tried.

Layout::

    CKPT_DIR/step-00000120/{manifest.json, weights, momentum, ...}
    CKPT_DIR/.tmp-step-00000120-<host>-<pid>-<nonce>/     (being written)
    CKPT_DIR/.del-step-00000100-<host>-<pid>-<nonce>/     (being deleted by retain)
    CKPT_DIR/events.jsonl                                  (append-only event log)
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import secrets
import shutil
import socket
import stat
import time
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slurmkit.errors import SlurmkitError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
EVENTS = "events.jsonl"
# Canonical names only (step_dir_name's): ASCII digits, at most 20 of them, so that
# "step-٠٠٠٠٠٠٠٣" or "step-000000003" cannot pose as step 3 and int() stays cheap.
_STEP_DIR = re.compile(r"step-([0-9]{8,20})")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
# What ``dtype.str`` produces for plain-data dtypes: byte order, kind, item size,
# datetime unit. (No 'O', no deprecated aliases that warn.)
_DTYPE = re.compile(r"[<>|=][biufcmMSUV][0-9]{1,9}(\[[0-9]{0,6}[A-Za-z]{1,2}\])?")
_CHUNK = 64 << 20  # write and checksum in 64 MiB pieces: one pass over memory
#: A manifest lists names, sizes and checksums: 16 MiB is ~100k entries.
MAX_MANIFEST_BYTES = 16 << 20
#: NumPy 2's limit on dimensions (NPY_MAXDIMS).
_MAX_NDIM = 64
#: How often restore lists the directory again after a checkpoint vanished under it.
_RESTORE_ATTEMPTS = 16
_MAX_EVENT_LINE_BYTES = 1 << 20

Value = np.ndarray | bytes


class CheckpointError(SlurmkitError):
    """A checkpoint could not be written or no valid checkpoint could be restored."""


class _Vanished(CheckpointError):
    """The step directory was removed while it was being read (concurrent retention)."""


@dataclass(frozen=True)
class Restored:
    """A verified checkpoint. ``skipped`` lists newer checkpoints that failed
    verification (or were removed while being read), with the reason, newest first."""

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


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_entry_name(name: Any) -> str:
    """The one rule for entry names, applied on write and on read: 1-128 ASCII
    letters, digits, '_', '.', '-', not starting with '.' or '-', not the manifest.
    No name can leave the step directory or hide in it."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name == MANIFEST:
        raise CheckpointError(f"invalid checkpoint entry name {_short(name)}: use 1-128 "
                              "letters, digits, '_', '.', '-', not starting with '.' or "
                              f"'-', and not {MANIFEST!r}")
    return name


def check_dtype(dtype: np.dtype) -> np.dtype:
    """A dtype whose values are plain bytes in memory (no Python objects, no empty
    items), so that an array is exactly its raw bytes. Applied on write and on read."""
    if dtype.hasobject:
        raise CheckpointError(f"dtype {dtype} holds Python objects: it cannot be checkpointed")
    if dtype.itemsize == 0:
        raise CheckpointError(f"dtype {dtype} has empty items: it cannot be checkpointed")
    return dtype


def _parse_step_name(name: str) -> int | None:
    match = _STEP_DIR.fullmatch(name)
    if not match or step_dir_name(int(match[1])) != name:
        return None
    return int(match[1])


def _scan(directory: Path | int) -> list[tuple[int, str, bool]]:
    """(step, name, is a real directory) for every step-NNNNNNNN entry, newest first.
    Symbolic links are reported as not real directories (never followed)."""
    found = []
    with os.scandir(directory) as entries:
        for entry in entries:
            step = _parse_step_name(entry.name)
            if step is None:
                continue
            try:
                real = entry.is_dir(follow_symlinks=False)
            except OSError:  # removed meanwhile
                continue
            found.append((step, entry.name, real))
    return sorted(found, reverse=True)


def committed_steps(directory: Path) -> list[tuple[int, Path]]:
    """Committed checkpoint directories, newest first (not yet verified). Symbolic
    links named like a checkpoint are not listed. Raises CheckpointError when the
    directory exists but cannot be listed."""
    directory = Path(directory)
    try:
        return [(step, directory / name) for step, name, real in _scan(directory) if real]
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as error:
        raise CheckpointError(f"cannot list checkpoint directory {directory}: "
                              f"{error.strerror}; check its permissions") from None


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
        try:
            check_dtype(value.dtype)
        except CheckpointError as error:
            raise CheckpointError(f"{path.name}: {error}") from None
        # Not np.ascontiguousarray: it turns a 0-d array into a 1-d one.
        array = value if value.flags.c_contiguous else value.copy(order="C")
        data = memoryview(array.reshape(-1).view(np.uint8)) if array.size else memoryview(b"")
        entry = {"kind": "array", "dtype": array.dtype.str, "shape": list(array.shape)}
    else:
        raise CheckpointError(f"{path.name}: expected a NumPy array or bytes, "
                              f"got {type(value).__name__}")
    crc = 0
    # O_EXCL | O_NOFOLLOW: the file is new in our own temporary directory; nothing
    # planted there can redirect the write.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o644)
    with open(fd, "wb") as stream:
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
    _check_step(step)  # before it names the directory
    return write_dir(directory, step_dir_name(step), step, values, metadata=metadata, info=info)


def _check_step(step: Any) -> None:
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < 10 ** 20:
        raise CheckpointError(f"invalid checkpoint step {step!r}: use an integer from 0")


def write_dir(directory: Path, name: str, step: int, values: Mapping[str, Value], *,
              metadata: Mapping[str, Any] | None = None,
              info: Mapping[str, Any] | None = None) -> WriteResult:
    """``write_checkpoint`` into ``directory/name`` (a step directory, or one part of
    a sharded checkpoint): written in a hidden temporary directory, every file and
    the manifest fsynced, committed by a rename. A directory of that name committed
    first by another writer wins; ours is discarded (``committed_by_us`` False)."""
    directory = Path(directory)
    _check_step(step)
    directory.mkdir(parents=True, exist_ok=True)
    for entry in values:
        check_entry_name(entry)
    started = time.monotonic()
    final = directory / name
    temp = directory / (f".tmp-{name}-{socket.gethostname()}-{os.getpid()}-"
                        f"{secrets.token_hex(4)}")
    temp.mkdir()
    try:
        files = {entry: _write_value(temp / entry, value) for entry, value in values.items()}
        manifest = {
            "format": FORMAT_VERSION, "step": step, "created_epoch_s": time.time(),
            "files": files, "metadata": dict(metadata or {}), **dict(info or {}),
        }
        fd = os.open(temp / MANIFEST,
                     os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        with open(fd, "w") as stream:
            json.dump(manifest, stream, indent=1, sort_keys=True)
            stream.flush()
            os.fsync(stream.fileno())
        _fsync_dir(temp)
        try:
            os.rename(temp, final)  # the commit
        except OSError:
            if final.is_symlink():
                raise CheckpointError(f"{final} is a symbolic link, not a checkpoint: "
                                      "remove it") from None
            if final.is_dir():  # someone else committed this step: ours is redundant
                shutil.rmtree(temp, ignore_errors=True)
                return WriteResult(step, final, 0, time.monotonic() - started, False)
            raise
        _fsync_dir(directory)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    written = sum(entry["bytes"] for entry in files.values())
    return WriteResult(step, final, written, time.monotonic() - started)


# ------------------------------------------------------------------ restore


@dataclass(frozen=True)
class _Entry:
    name: str
    kind: str
    size: int
    crc32: int
    dtype: np.dtype | None = None
    shape: tuple[int, ...] = ()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_manifest(manifest: Any, step: int) -> list[_Entry]:
    """Every field restore uses, checked for type and range; CheckpointError with
    what is wrong otherwise."""
    if not isinstance(manifest, dict):
        raise CheckpointError(f"manifest is a JSON {type(manifest).__name__}, not an object")
    if not _is_int(manifest.get("format")) or manifest["format"] != FORMAT_VERSION:
        raise CheckpointError(f"unknown format {_short(manifest.get('format'))}")
    if not _is_int(manifest.get("step")) or manifest["step"] != step:
        raise CheckpointError(f"manifest is for step {_short(manifest.get('step'))}, "
                              f"not {step}")
    if not isinstance(manifest.get("metadata", {}), dict):
        raise CheckpointError("manifest metadata is not an object")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise CheckpointError("manifest has no 'files' object")
    entries = []
    for name, entry in files.items():
        check_entry_name(name)
        if not isinstance(entry, dict):
            raise CheckpointError(f"{name}: manifest entry is not an object")
        kind, size, crc = entry.get("kind"), entry.get("bytes"), entry.get("crc32")
        if not _is_int(size) or size < 0:
            raise CheckpointError(f"{name}: bad size {_short(size)} in the manifest")
        if not _is_int(crc) or not 0 <= crc < 1 << 32:
            raise CheckpointError(f"{name}: bad crc32 {_short(crc)} in the manifest")
        if kind == "bytes":
            entries.append(_Entry(name, kind, size, crc))
            continue
        if kind != "array":
            raise CheckpointError(f"{name}: unknown kind {_short(kind)} in the manifest")
        text, shape = entry.get("dtype"), entry.get("shape")
        if not isinstance(text, str) or not _DTYPE.fullmatch(text):
            raise CheckpointError(f"{name}: bad dtype {_short(text)} in the manifest")
        try:
            dtype = check_dtype(np.dtype(text))
        except (TypeError, ValueError, OverflowError) as error:
            raise CheckpointError(f"{name}: bad dtype {text!r} in the manifest ({error})") from None
        except CheckpointError as error:
            raise CheckpointError(f"{name}: {error}") from None
        if (not isinstance(shape, list) or len(shape) > _MAX_NDIM
                or not all(_is_int(n) and n >= 0 for n in shape)):
            raise CheckpointError(f"{name}: bad shape {_short(shape)} in the manifest")
        if math.prod(shape) * dtype.itemsize != size:
            raise CheckpointError(f"{name}: shape {_short(shape)} of {text} is not "
                                  f"{size} bytes")
        entries.append(_Entry(name, kind, size, crc, dtype, tuple(shape)))
    return entries


def _open_regular(name: str, dir_fd: int) -> tuple[int, int]:
    """(fd, size) of a regular file in the directory ``dir_fd``, never following a
    symbolic link and never blocking (a FIFO is refused, not opened for reading)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=dir_fd)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise CheckpointError(f"{name} is a symbolic link: refused") from None
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise CheckpointError(f"{name} is not a regular file: refused")
    return fd, info.st_size


def _read_exactly(fd: int, size: int, name: str) -> np.ndarray:
    buffer = np.empty(size, np.uint8)  # not zeroed: each byte is written once, by read
    view = memoryview(buffer)
    with open(fd, "rb", buffering=0, closefd=False) as stream:
        read = 0
        while read < size:
            count = stream.readinto(view[read:])
            if not count:
                raise CheckpointError(f"{name} ended early")
            read += count
    return buffer


def _gone(parent_fd: int, name: str, step_fd: int) -> bool:
    """True when the step directory opened as ``step_fd`` was removed or renamed
    (``retain`` renames before deleting), or replaced."""
    try:
        info = os.fstat(step_fd)
        if info.st_nlink == 0:
            return True
        now = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return True
    except OSError:
        return False  # cannot tell: the reason already found stands
    return (now.st_dev, now.st_ino) != (info.st_dev, info.st_ino)


def _load_step(parent_fd: int, name: str, step: int, *, manifest_only: bool = False
               ) -> tuple[dict[str, Any], dict[str, Value]]:
    try:
        step_fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                          dir_fd=parent_fd)
    except FileNotFoundError:
        raise _Vanished("removed before it could be read (concurrent retention)") from None
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENOTDIR):
            raise CheckpointError("a symbolic link or not a directory: refused") from None
        raise CheckpointError(f"cannot open ({error.strerror})") from None
    try:
        try:
            return _load_opened(step_fd, step, manifest_only=manifest_only)
        except FileNotFoundError as error:
            if _gone(parent_fd, name, step_fd):
                raise _Vanished("removed while being read (concurrent retention)") from None
            raise CheckpointError(f"{error.filename} is missing") from None
        except CheckpointError:
            if _gone(parent_fd, name, step_fd):
                raise _Vanished("removed while being read (concurrent retention)") from None
            raise
        except OSError as error:
            raise CheckpointError(f"cannot read {error.filename or ''} "
                                  f"({error.strerror})") from None
        except MemoryError:
            raise CheckpointError("too large to load into memory") from None
    finally:
        os.close(step_fd)


def _read_manifest(step_fd: int, step: int) -> tuple[dict[str, Any], list[_Entry]]:
    try:
        fd, size = _open_regular(MANIFEST, step_fd)
    except FileNotFoundError:
        raise CheckpointError("no manifest") from None
    try:
        if size > MAX_MANIFEST_BYTES:
            raise CheckpointError(f"manifest has {size} bytes, more than a manifest can")
        text = _read_exactly(fd, size, MANIFEST).tobytes()
    finally:
        os.close(fd)
    try:
        manifest = json.loads(text)
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
        raise CheckpointError(f"unreadable manifest ({_short(str(error), 100)})") from None
    return manifest, _check_manifest(manifest, step)


def _load_opened(step_fd: int, step: int, *, manifest_only: bool = False
                 ) -> tuple[dict[str, Any], dict[str, Value]]:
    manifest, entries = _read_manifest(step_fd, step)
    # Sizes first (cheap, and before any allocation): a lying manifest costs no memory.
    for entry in entries:
        try:
            info = os.stat(entry.name, dir_fd=step_fd, follow_symlinks=False)
        except FileNotFoundError:
            raise FileNotFoundError(errno.ENOENT, "missing", entry.name) from None
        if stat.S_ISLNK(info.st_mode):
            raise CheckpointError(f"{entry.name} is a symbolic link: refused")
        if not stat.S_ISREG(info.st_mode):
            raise CheckpointError(f"{entry.name} is not a regular file: refused")
        if info.st_size != entry.size:
            raise CheckpointError(f"{entry.name} has {info.st_size} bytes, manifest says "
                                  f"{entry.size}")
    values: dict[str, Value] = {}
    if manifest_only:
        return manifest, values
    for entry in entries:
        try:
            fd, size = _open_regular(entry.name, step_fd)
        except FileNotFoundError:
            raise FileNotFoundError(errno.ENOENT, "missing", entry.name) from None
        try:
            if size != entry.size:  # changed since the stat above
                raise CheckpointError(f"{entry.name} has {size} bytes, manifest says "
                                      f"{entry.size}")
            buffer = _read_exactly(fd, size, entry.name)
        finally:
            os.close(fd)
        if zlib.crc32(buffer) != entry.crc32:
            raise CheckpointError(f"{entry.name} fails its CRC-32 check")
        if entry.kind == "bytes":
            values[entry.name] = buffer.tobytes()
        else:
            values[entry.name] = buffer.view(entry.dtype).reshape(entry.shape)
    return manifest, values


def restore(directory: Path, *, step: int | None = None) -> Restored | None:
    """The newest checkpoint that verifies (or exactly ``step``); None when there is
    no checkpoint at all. Raises CheckpointError, and nothing else, when the directory
    is unusable (not a directory, not readable) or when checkpoints exist but none
    verifies (nothing is silently trusted).

    Concurrent retention: ``retain`` (run by a writer right after its own commit)
    deletes only checkpoints older than the newest ``keep``, so the newest checkpoint
    it leaves is one just written. A restore that listed the directory before that
    commit and is reading a checkpoint that retention removes notes it in ``skipped``
    and lists the directory again, which finds the newer checkpoint."""
    directory = Path(directory)
    try:
        parent_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        if step is not None:
            raise CheckpointError(f"no checkpoint of step {step} in {directory}: the "
                                  "directory does not exist") from None
        return None
    except NotADirectoryError:
        raise CheckpointError(f"checkpoint directory {directory} is not a directory") from None
    except OSError as error:
        raise CheckpointError(f"cannot open checkpoint directory {directory}: "
                              f"{error.strerror}; check its permissions") from None
    try:
        return _restore_from(parent_fd, directory, step)
    finally:
        os.close(parent_fd)


def load_dir(directory: Path, name: str, step: int, *, manifest_only: bool = False
             ) -> tuple[dict[str, Any], dict[str, Value]]:
    """The manifest and verified values of ``directory/name`` written by ``write_dir``
    for ``step`` (with ``manifest_only``: the manifest, and the files' presence and
    sizes checked, nothing read). CheckpointError says what is wrong."""
    directory = Path(directory)
    try:
        parent_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as error:
        raise CheckpointError(f"cannot open {directory}: {error.strerror}") from None
    try:
        return _load_step(parent_fd, name, step, manifest_only=manifest_only)
    except CheckpointError as error:
        raise CheckpointError(f"{directory / name}: {error}") from None
    finally:
        os.close(parent_fd)


def _restore_from(parent_fd: int, directory: Path, step: int | None) -> Restored | None:
    judged: dict[str, tuple[int, str]] = {}  # name -> (step, why it was skipped)

    def skipped() -> tuple[tuple[str, str], ...]:
        ordered = sorted(judged.items(), key=lambda item: item[1][0], reverse=True)
        return tuple((str(directory / name), why) for name, (_, why) in ordered)

    for _ in range(_RESTORE_ATTEMPTS):
        try:
            candidates = _scan(parent_fd)
        except OSError as error:
            raise CheckpointError(f"cannot list checkpoint directory {directory}: "
                                  f"{error.strerror}; check its permissions") from None
        if step is not None:
            candidates = [c for c in candidates if c[0] == step]
        vanished = False
        for candidate_step, name, _ in candidates:
            if name in judged:
                continue
            try:
                manifest, values = _load_step(parent_fd, name, candidate_step)
            except _Vanished as error:
                judged[name] = (candidate_step, str(error))
                vanished = True
                break  # list again: retention removes old checkpoints after a new commit
            except CheckpointError as error:
                judged[name] = (candidate_step, str(error))
                continue
            return Restored(candidate_step, directory / name, values, manifest, skipped())
        if not vanished:
            break
    else:
        raise CheckpointError(f"checkpoints in {directory} kept vanishing while being "
                              f"restored ({_RESTORE_ATTEMPTS} listings): is something "
                              "deleting them?")
    if step is not None and not judged:
        raise CheckpointError(f"no checkpoint of step {step} in {directory}")
    if judged:
        raise CheckpointError(f"no valid checkpoint in {directory}: " + "; ".join(
            f"{Path(p).name}: {why}" for p, why in skipped()))
    return None


def retain(directory: Path, keep: int) -> list[Path]:
    """Delete committed checkpoints beyond the newest ``keep`` (at least one is
    kept), and temporary directories older than an hour (a dead writer's leftovers).
    Returns what went. Symbolic links are never followed nor deleted.

    A checkpoint is first renamed out of the ``step-NNNNNNNN`` namespace (atomic),
    then deleted: a crash in between leaves no half-deleted checkpoint, and a
    concurrent ``restore`` sees its name go at once. The rule that keeps such a
    restore safe: call ``retain`` only after a commit of your own, so that what it
    keeps includes a checkpoint just written; a restore reading an older one that goes
    lists the directory again and finds the newer one (see ``restore``)."""
    directory = Path(directory)
    removed = []
    for step, path in committed_steps(directory)[max(keep, 1):]:
        doomed = directory / (f".del-{step_dir_name(step)}-{socket.gethostname()}-"
                              f"{os.getpid()}-{secrets.token_hex(4)}")
        try:
            os.rename(path, doomed)
        except FileNotFoundError:  # another process's retain took it
            continue
        shutil.rmtree(doomed, ignore_errors=True)
        removed.append(path)
    now = time.time()
    for entry in [*directory.glob(".tmp-step-*"), *directory.glob(".del-step-*")]:
        try:
            info = entry.lstat()
        except FileNotFoundError:
            continue
        # A .del- directory is garbage at once (its rename was the deletion); another
        # retain deleting it at the same time is harmless (ignore_errors).
        old_enough = entry.name.startswith(".del-") or now - info.st_mtime > 3600
        if stat.S_ISDIR(info.st_mode) and old_enough:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def append_event(directory: Path, event: Mapping[str, Any]) -> None:
    """One JSON line, appended with O_APPEND in a single write (atomic for lines
    below PIPE_BUF on local file systems). A line torn by a crash is ended first, so
    it cannot swallow the next event. Raises OSError when the log is not a regular
    file (a symbolic link or a FIFO planted there is not written through)."""
    record = {"time_epoch_s": round(time.time(), 3), **dict(event)}
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    Path(directory).mkdir(parents=True, exist_ok=True)
    fd = os.open(Path(directory) / EVENTS, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW
                 | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(Path(directory) / EVENTS))
        if info.st_size and os.pread(fd, 1, info.st_size - 1) != b"\n":
            line = b"\n" + line
        os.write(fd, line)
    finally:
        os.close(fd)


def iter_event_file(path: Path) -> Iterator[dict[str, Any]]:
    """The events of one ``events.jsonl``, skipping whatever is not a JSON object on
    one line (a line torn by a crash, garbage, bad UTF-8, lines over 1 MiB). Yields
    nothing when the file is missing; raises CheckpointError when it is a symbolic
    link or not a regular file (a FIFO would block the reader)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise CheckpointError(f"{path} is a symbolic link: not read") from None
        raise CheckpointError(f"cannot read {path}: {error.strerror}") from None
    # Checked before open(): open() of a directory's descriptor raises IsADirectoryError.
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CheckpointError(f"{path} is not a regular file: not read")
    with open(fd, "rb") as stream:
        while line := stream.readline(_MAX_EVENT_LINE_BYTES + 1):
            if len(line) > _MAX_EVENT_LINE_BYTES:  # skip the rest of an endless line
                while line and not line.endswith(b"\n"):
                    line = stream.readline(_MAX_EVENT_LINE_BYTES)
                continue
            try:
                event = json.loads(line)
            except (ValueError, RecursionError):  # torn, garbage or not UTF-8
                continue
            if isinstance(event, dict):
                yield event


def read_events(directory: Path) -> list[dict[str, Any]]:
    """The events of a checkpoint directory, oldest first (see ``iter_event_file``)."""
    return list(iter_event_file(Path(directory) / EVENTS))
