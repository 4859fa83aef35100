"""Sharded checkpoints: one checkpoint written by many processes, committed once whole.

A sharded model (FSDP) leaves each rank with a different part of the state; no
single process can write it all. Each part is written on its own with the store's
rules (``store.write_dir``: every file fsynced, CRC-32 in the manifest, committed
by a rename) into a staging directory shared by the writers; whoever sees the last
required part renames the staging directory to ``step-NNNNNNNN``: that rename is the
checkpoint's commit. A crash at any point leaves parts in a staging directory (never
restored; ``store.retain`` removes it after an hour) or a complete checkpoint.

Layout::

    CKPT_DIR/step-00000120/shared/...      state every rank holds alike (written once)
    CKPT_DIR/step-00000120/r00003/...      rank 3's shard
    CKPT_DIR/.tmp-step-00000120-<tag>/     staging: parts appear one by one
    CKPT_DIR/.tmp-step-00000120-<tag>/.claim-r00003   a writer is on it

The survivors of a failure cannot use collectives: each writes the parts it holds
(its own shard, the replicas it keeps of its peers' shards; ``write_survivors``) for
the newest step it has, then waits for the others'. When that step cannot be
completed (a shard and its replica both lost, or the survivors' newest steps
differ), they write the previous step they hold; when nothing completes, the
triggered checkpoint is incomplete, says which parts are missing, and the job
resumes from the last periodic checkpoint.

Torch-free: values are what the store writes (arrays, bytes); ``torch_adapter``
turns state dicts into parts and back.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slurmkit.ckpt import store
from slurmkit.ckpt.store import CheckpointError, Value

SHARED = "shared"
_PART = re.compile(r"shared|r[0-9]{5,}")
_STAGING = re.compile(r"\.tmp-step-([0-9]{8,20})-([A-Za-z0-9_.-]+)")
POLL_S = 0.05


def part_name(rank: int) -> str:
    return f"r{rank:05d}"


def required_parts(world_size: int, sharded: bool) -> tuple[str, ...]:
    """The parts a checkpoint needs: the shared one, and one per rank when the state
    is sharded (a replicated-only state, such as DDP's, has just the shared part)."""
    return (SHARED, *(part_name(rank) for rank in range(world_size))) if sharded else (SHARED,)


@dataclass(frozen=True)
class Part:
    """One part of one step, as a writer holds it: the values the store writes and
    their description for the reader (``metadata``)."""

    name: str
    step: int
    values: Mapping[str, Value]
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(len(v) if isinstance(v, bytes) else v.nbytes for v in self.values.values())


def staging_path(directory: Path, step: int, tag: str) -> Path:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", tag):
        raise CheckpointError(f"bad staging tag {tag!r}")
    return Path(directory) / f".tmp-{store.step_dir_name(step)}-{tag}"


def present(staging: Path) -> set[str]:
    """The parts committed in a staging (or step) directory."""
    try:
        with os.scandir(staging) as entries:
            return {entry.name for entry in entries
                    if _PART.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False)}
    except (FileNotFoundError, NotADirectoryError):
        return set()


def write_part(directory: Path, tag: str, part: Part, *, required: Sequence[str],
               info: Mapping[str, Any]) -> store.WriteResult:
    """Write ``part`` into its step's staging directory. A part already there (written
    by another holder) wins: ours is discarded and the result says so."""
    if part.name not in required:
        raise CheckpointError(f"part {part.name!r} is not one of {list(required)}")
    staging = staging_path(directory, part.step, tag)
    staging.mkdir(parents=True, exist_ok=True)
    return store.write_dir(staging, part.name, part.step, part.values,
                           metadata={**part.metadata, "part": part.name,
                                     "required": list(required)}, info=info)


def commit(directory: Path, step: int, tag: str, required: Sequence[str]) -> str:
    """Rename the staging directory of ``step`` to ``step-NNNNNNNN`` if it holds every
    required part: "committed" (by us), "exists" (committed before, by anyone, from
    any staging directory) or "incomplete". Safe to call from many processes."""
    final = Path(directory) / store.step_dir_name(step)
    if final.is_dir():
        return "exists"
    staging = staging_path(directory, step, tag)
    if not set(required) <= present(staging):
        return "exists" if final.is_dir() else "incomplete"  # committed meanwhile?
    try:
        os.rename(staging, final)
    except OSError:
        if final.is_dir():  # another writer committed first (ENOENT, ENOTEMPTY, EEXIST)
            return "exists"
        raise
    store._fsync_dir(Path(directory))
    return "committed"


def wait_and_commit(directory: Path, step: int, tag: str, required: Sequence[str], *,
                    timeout_s: float, fenced: Callable[[], bool] = lambda: False) -> str:
    """The committer of a periodic or final checkpoint: wait until every part is in,
    then commit. "committed", "exists", "fenced" or "incomplete" (timed out)."""
    deadline = time.monotonic() + timeout_s
    while True:
        outcome = commit(directory, step, tag, required) if not fenced() else "fenced"
        if outcome != "incomplete" or time.monotonic() > deadline:
            return outcome
        time.sleep(POLL_S)


# ------------------------------------------------------------------ claims


def keep_fresh(path: Path, done: threading.Event, every_s: float) -> None:
    """Touch a claim until ``done``: waiters see its time move while we write."""
    while not done.wait(every_s):
        try:
            os.utime(path)
        except OSError:
            return


@contextlib.contextmanager
def claimed(path: Path, owner: Mapping[str, Any], fresh_every_s: float):
    """Hold the claim file ``path`` (created with O_EXCL; yields False when someone
    else holds it) and keep it fresh while the body runs; remove it after."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except FileExistsError:
        yield False
        return
    os.write(fd, json.dumps(dict(owner)).encode())
    os.close(fd)
    done = threading.Event()
    keeper = threading.Thread(target=keep_fresh, args=(path, done, fresh_every_s),
                              name="slurmkit-claim", daemon=True)
    keeper.start()
    try:
        yield True
    finally:
        done.set()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


class ClaimWatch:
    """Tells live claims from dead ones by whether their time moves (compared only
    with each other: no clock skew between nodes). A claim whose time has not changed
    for ``stale_s`` is a dead writer's."""

    def __init__(self, stale_s: float):
        self.stale_s = stale_s
        self._seen: dict[Path, tuple[int, float]] = {}

    def fresh(self, path: Path) -> bool:
        try:
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            self._seen.pop(path, None)
            return False
        now = time.monotonic()
        last = self._seen.get(path)
        if last is None or last[0] != mtime:
            self._seen[path] = (mtime, now)
            return True
        return now - last[1] < self.stale_s


# -------------------------------------------------------- survivors' checkpoint


@dataclass
class SurvivorsResult:
    """How a survivor's triggered write ended. ``outcome``: "committed" (we renamed
    it), "by-peer" (another survivor did, or it existed: a periodic checkpoint of
    that step), "incomplete" (no step could be completed: ``missing`` says what each
    candidate step lacked) or "fenced"."""

    outcome: str
    step: int | None = None
    written: list[tuple[str, int]] = field(default_factory=list)  # (part, step) we wrote
    bytes_written: int = 0
    missing: dict[int, list[str]] = field(default_factory=dict)


def write_survivors(directory: Path, tag: str, holdings: Iterable[Part], *,
                    required: Sequence[str], info: Mapping[str, Any], grace_s: float,
                    owner: Mapping[str, Any], fenced: Callable[[], bool] = lambda: False,
                    ) -> SurvivorsResult:
    """A survivor's share of the triggered checkpoint, written without collectives.

    ``holdings`` are the parts this process holds, possibly of two steps each (its
    live state, the previous step's snapshot, the replicas of a peer's shard). The
    newest of each part is written first; then the survivor waits until a step is
    complete and commits it. Progress (a part appearing, a claim kept fresh) keeps it
    waiting; after ``grace_s`` without progress it writes its older holdings and
    waits again (twice as long); after that the checkpoint is incomplete. A part another survivor is
    writing (fresh claim) is left to it; a dead writer's part (stale claim) is taken
    over. ``step`` in the result: the newest step committed, by anyone."""
    directory = Path(directory)
    held = {(part.name, part.step): part for part in holdings}
    newest: dict[str, Part] = {}
    for part in held.values():
        if part.name not in newest or part.step > newest[part.name].step:
            newest[part.name] = part
    phases = [list(newest.values()),
              [part for part in held.values() if newest[part.name] is not part]]
    result = SurvivorsResult("incomplete")
    watch = ClaimWatch(grace_s)
    steps: set[int] = set()
    allowed: set[tuple[str, int]] = set()

    def write(part: Part) -> None:
        staging = staging_path(directory, part.step, tag)
        if (directory / store.step_dir_name(part.step)).is_dir() or part.name in present(staging):
            return
        staging.mkdir(parents=True, exist_ok=True)
        with claimed(staging / f".claim-{part.name}", owner, grace_s / 4) as ours:
            if not ours or part.name in present(staging):
                return
            written = write_part(directory, tag, part, required=required, info=info)
        if written.committed_by_us:
            result.written.append((part.name, part.step))
            result.bytes_written += written.bytes_written

    def settle() -> tuple[bool, list]:
        """Commit what completes. (nothing newer to hope for, what the staging
        directories show: progress is a change in it)."""
        view = []
        for step in sorted(steps, reverse=True):
            if result.step is not None and step <= result.step:
                break
            outcome = commit(directory, step, tag, required)
            if outcome != "incomplete":
                result.step = step
                if outcome == "committed" or result.outcome != "committed":
                    result.outcome = "committed" if outcome == "committed" else "by-peer"
                break
            staging = staging_path(directory, step, tag)
            parts_in = present(staging)
            claims = tuple(name for name in required
                           if watch.fresh(staging / f".claim-{name}"))
            view.append((step, tuple(sorted(parts_in)), claims))
            for name in sorted(set(required) - parts_in - set(claims)):
                if (name, step) in allowed:  # its writer died: take it over
                    with contextlib.suppress(FileNotFoundError):
                        (staging / f".claim-{name}").unlink()
                    write(held[(name, step)])
        return result.step is not None and result.step >= max(steps), view

    for phase, parts in enumerate(phases):
        allowed.update((part.name, part.step) for part in parts)
        # The others move to their older holdings up to grace_s after the last
        # progress they saw, which may be our own last write: wait twice as long.
        idle_limit_s = grace_s * (1 + phase)
        for part in sorted(parts, key=lambda part: -part.step):
            if fenced():
                return SurvivorsResult("fenced", written=result.written,
                                       bytes_written=result.bytes_written)
            steps.add(part.step)
            write(part)
        idle_since, last_view = time.monotonic(), None
        while True:
            if fenced():
                return SurvivorsResult("fenced", written=result.written,
                                       bytes_written=result.bytes_written)
            steps |= _staged_steps(directory, tag)
            if not steps:
                break
            done, view = settle()
            if done:
                break
            if view != last_view:
                idle_since, last_view = time.monotonic(), view
            elif time.monotonic() - idle_since > idle_limit_s:
                break
            time.sleep(POLL_S)
        if result.step is not None:
            return result
    result.missing = {step: sorted(set(required) - present(staging_path(directory, step, tag)))
                      for step in sorted(steps, reverse=True)}
    return result


def _staged_steps(directory: Path, tag: str) -> set[int]:
    found = set()
    with contextlib.suppress(FileNotFoundError), os.scandir(directory) as entries:
        for entry in entries:
            match = _STAGING.fullmatch(entry.name)
            if match and match[2] == tag:
                found.add(int(match[1]))
    return found


# ------------------------------------------------------------------ restore


def read_parts(step_dir: Path, step: int) -> dict[str, dict[str, Any]]:
    """The manifests of every part of a committed sharded checkpoint (files present,
    sizes right; contents verified when loaded). CheckpointError when a required part
    is missing or the parts disagree on what is required."""
    names = sorted(present(step_dir))
    if SHARED not in names:
        raise CheckpointError("no shared part: not a sharded checkpoint, or damaged")
    manifests = {name: store.load_dir(step_dir, name, step, manifest_only=True)[0]
                 for name in names}
    required = manifests[SHARED]["metadata"].get("required")
    if not isinstance(required, list) or not all(isinstance(n, str) for n in required):
        raise CheckpointError("the shared part does not list the required parts")
    for name, manifest in manifests.items():
        if manifest["metadata"].get("required") != required:
            raise CheckpointError(f"part {name} was written for another set of parts")
    missing = sorted(set(required) - set(names))
    if missing:
        raise CheckpointError(f"incomplete: part(s) {', '.join(missing)} missing")
    return {name: manifests[name] for name in required}


def incomplete_after(directory: Path, step: int) -> list[tuple[int, str, list[str]]]:
    """Staging directories of steps newer than ``step`` that were never completed:
    (step, tag, parts missing), newest first. What a restore reports it passed over."""
    found = []
    with contextlib.suppress(FileNotFoundError), os.scandir(directory) as entries:
        for entry in entries:
            match = _STAGING.fullmatch(entry.name)
            if not match or int(match[1]) <= step or not entry.is_dir(follow_symlinks=False):
                continue
            parts = present(Path(entry.path))
            required: list[str] = []
            for name in sorted(parts):
                with contextlib.suppress(CheckpointError, OSError, KeyError):
                    manifest = store.load_dir(Path(entry.path), name, int(match[1]),
                                              manifest_only=True)[0]
                    required = manifest["metadata"]["required"]
                    break
            found.append((int(match[1]), match[2], sorted(set(required) - parts)
                          if required else ["all"]))
    return sorted(found, reverse=True)
