"""The checkpoint format: atomic commits, verification, fallback, crash consistency."""

import errno
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slurmkit.ckpt import store
from slurmkit.ckpt.store import CheckpointError


def state_for(step: int, size: int = 1000) -> dict:
    rng = np.random.default_rng(step)
    return {"weights": rng.standard_normal(size).astype(np.float32),
            "momentum": rng.standard_normal((size // 10, 10)),
            "rng": bytes(rng.integers(0, 255, 64, dtype=np.uint8))}


def assert_state_equal(values: dict, expected: dict) -> None:
    assert set(values) == set(expected)
    for name, value in expected.items():
        if isinstance(value, np.ndarray):
            assert values[name].dtype == value.dtype and values[name].shape == value.shape
            assert np.array_equal(values[name], value)
        else:
            assert values[name] == value


def test_round_trip_of_arrays_and_bytes(tmp_path):
    values = {**state_for(3), "empty": np.zeros((0, 4)), "scalar": np.array(7, dtype=np.int64),
              "strided": np.arange(20.0).reshape(4, 5)[:, ::2],
              "mask": np.array([True, False, True]), "tokens": np.arange(7, dtype=np.uint8)}
    result = store.write_checkpoint(tmp_path, 3, values, metadata={"lr": 0.1})
    assert result.committed_by_us and result.path.name == "step-00000003"
    restored = store.restore(tmp_path)
    assert restored.step == 3 and restored.metadata == {"lr": 0.1}
    assert_state_equal(restored.values, {**values, "strided": np.ascontiguousarray(values["strided"])})


def test_nothing_to_restore_is_none(tmp_path):
    assert store.restore(tmp_path) is None


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete-file", "delete-manifest",
                                    "garbage-manifest"])
def test_damaged_newest_falls_back_to_the_previous_and_says_why(tmp_path, damage):
    store.write_checkpoint(tmp_path, 1, state_for(1))
    newest = store.write_checkpoint(tmp_path, 2, state_for(2)).path
    target = newest / "weights"
    if damage == "flip":
        data = bytearray(target.read_bytes())
        data[100] ^= 0x01
        target.write_bytes(data)
    elif damage == "truncate":
        target.write_bytes(target.read_bytes()[:-1])
    elif damage == "delete-file":
        target.unlink()
    elif damage == "delete-manifest":
        (newest / store.MANIFEST).unlink()
    else:
        (newest / store.MANIFEST).write_text("{not json")
    restored = store.restore(tmp_path)
    assert restored.step == 1
    assert_state_equal(restored.values, state_for(1))
    [(path, why)] = restored.skipped
    assert path.endswith("step-00000002") and why == {
        "flip": "weights fails its CRC-32 check",
        "truncate": "weights has 3999 bytes, manifest says 4000",
        "delete-file": "weights is missing", "delete-manifest": "no manifest",
        "garbage-manifest": "unreadable manifest ('Expecting property name enclosed in double "
                            "quotes: line 1 column 2 (char 1)')"}[damage]
    assert "skipped step-00000002" in restored.describe()


def test_no_valid_checkpoint_is_an_error_not_a_silent_none(tmp_path):
    path = store.write_checkpoint(tmp_path, 1, state_for(1)).path
    (path / "momentum").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="no valid checkpoint.*momentum has 1 bytes"):
        store.restore(tmp_path)


def test_temporary_directories_are_never_restored(tmp_path):
    store.write_checkpoint(tmp_path, 1, state_for(1))
    (tmp_path / ".tmp-step-00000009-host-1-abcd").mkdir()
    assert store.restore(tmp_path).step == 1


def test_a_second_commit_of_the_same_step_is_discarded(tmp_path):
    first = store.write_checkpoint(tmp_path, 4, state_for(4))
    second = store.write_checkpoint(tmp_path, 4, state_for(5))
    assert first.committed_by_us and not second.committed_by_us
    assert_state_equal(store.restore(tmp_path).values, state_for(4))
    assert not list(tmp_path.glob(".tmp-*"))


def test_retention_keeps_the_newest(tmp_path):
    for step in range(1, 6):
        store.write_checkpoint(tmp_path, step, {"x": np.array([step])})
    store.retain(tmp_path, keep=2)
    assert [step for step, _ in store.committed_steps(tmp_path)] == [5, 4]


def test_bad_names_and_types_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="invalid checkpoint entry name"):
        store.write_checkpoint(tmp_path, 1, {"../escape": np.zeros(1)})
    with pytest.raises(CheckpointError) as raised:
        store.write_checkpoint(tmp_path, 1, {"x": [1, 2]})
    assert str(raised.value) == "x: expected a NumPy array or bytes, got list"
    assert not list(tmp_path.glob(".tmp-*")) and store.restore(tmp_path) is None


def test_events_survive_a_torn_line(tmp_path):
    store.append_event(tmp_path, {"event": "a"})
    with open(tmp_path / store.EVENTS, "a") as stream:
        stream.write('{"event": "torn')
    store.append_event(tmp_path, {"event": "b"})
    assert [e["event"] for e in store.read_events(tmp_path)] == ["a", "b"]


def test_crash_consistency_under_200_random_kills(tmp_path):
    """A writer killed (SIGKILL) at a random point of writing step k+1: restore always
    returns a complete checkpoint, step k or k+1, byte for byte, and says which."""
    big = 400_000  # ~2 MB per checkpoint: a write (with fsyncs) takes milliseconds
    store.write_checkpoint(tmp_path, 0, state_for(0, big))
    randomness = random.Random(7)
    outcomes = {"old": 0, "new": 0}
    # Where in the write the commit lands depends on the machine and its load (CI once saw
    # 199 kills land before it with a fixed window). So the kill delay tracks the commit:
    # a kill that landed after it shortens the next window, one before it lengthens it,
    # and the jitter around that estimate spreads the kills over both sides.
    commit_estimate_s = 0.002
    step = 0
    for _ in range(200):
        ready_read, ready_write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the writer: builds its state first, then says it starts writing
            try:
                os.close(ready_read)
                state = state_for(step + 1, big)
                os.write(ready_write, b"w")
                store.write_checkpoint(tmp_path, step + 1, state)
            finally:
                os._exit(0)
        os.close(ready_write)
        os.read(ready_read, 1)  # the write starts now: fork and set-up are not counted
        os.close(ready_read)
        time.sleep(commit_estimate_s * randomness.uniform(0.3, 1.7))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        restored = store.restore(tmp_path)
        assert restored.step in (step, step + 1), restored.describe()
        assert_state_equal(restored.values, state_for(restored.step, big))
        landed_after_commit = restored.step == step + 1
        outcomes["new" if landed_after_commit else "old"] += 1
        commit_estimate_s *= 0.85 if landed_after_commit else 1.18
        step = restored.step
        store.retain(tmp_path, keep=2)
    # Both outcomes happened: the kills really landed before and after the commit.
    assert outcomes["old"] > 10 and outcomes["new"] > 10, outcomes


# ------------------------------------------------------------- hostile checkpoints

SECRET = b"outside-the-checkpoint-directory" * 2  # 64 bytes, never part of any state


def write_secret(directory) -> "os.PathLike":
    """A file outside the checkpoint directory; a manifest entry can match it exactly."""
    directory.mkdir(exist_ok=True)
    secret = directory / "secret"
    secret.write_bytes(SECRET)
    return secret


def secret_entry() -> dict:
    return {"kind": "bytes", "bytes": len(SECRET), "crc32": zlib.crc32(SECRET)}


def edit_manifest(path, change) -> None:
    manifest = json.loads((path / store.MANIFEST).read_text())
    change(manifest)
    (path / store.MANIFEST).write_text(json.dumps(manifest))


def assert_fell_back_to_step_1(directory, why_fragment: str) -> None:
    restored = store.restore(directory)
    assert restored.step == 1, restored.describe()
    assert_state_equal(restored.values, state_for(1))
    [(path, why)] = restored.skipped
    assert path.endswith("step-00000002")
    assert why_fragment in why, why


@pytest.mark.parametrize("name", [
    "../../outside/secret", "../../../../../../../../..{tmp}/outside/secret",
    "{tmp}/outside/secret", "weights/../../../outside/secret", "secret\n", ".secret",
    "-secret"])
def test_manifest_names_are_checked_on_read_as_on_write(tmp_path, name):
    """A manifest naming a file outside the step directory (or a name the writer
    refuses) is never read, even when size and CRC match what is there."""
    checkpoints = tmp_path / "ckpt"
    store.write_checkpoint(checkpoints, 1, state_for(1))
    newest = store.write_checkpoint(checkpoints, 2, state_for(2)).path
    write_secret(tmp_path / "outside")
    name = name.format(tmp=str(tmp_path))
    if "/" not in name:
        (newest / name).write_bytes(SECRET)  # planted inside, under a name never written
    edit_manifest(newest, lambda m: m["files"].update({name: secret_entry()}))
    assert_fell_back_to_step_1(checkpoints, "invalid checkpoint entry name")
    with pytest.raises(CheckpointError, match="invalid checkpoint entry name"):
        store.write_checkpoint(tmp_path / "other", 1, {name: b"x"})


def test_a_symlinked_step_directory_is_refused_and_never_deleted(tmp_path):
    checkpoints, outside = tmp_path / "ckpt", tmp_path / "outside"
    store.write_checkpoint(checkpoints, 1, state_for(1))
    planted = store.write_checkpoint(outside, 2, state_for(2)).path
    (checkpoints / "step-00000002").symlink_to(planted)
    assert_fell_back_to_step_1(checkpoints, "a symbolic link or not a directory: refused")
    assert [step for step, _ in store.committed_steps(checkpoints)] == [1]
    with pytest.raises(CheckpointError, match="symbolic link"):
        store.restore(checkpoints, step=2)
    store.retain(checkpoints, keep=0)
    assert (planted / store.MANIFEST).exists()


def test_a_symlinked_file_in_a_step_directory_is_refused(tmp_path):
    checkpoints = tmp_path / "ckpt"
    store.write_checkpoint(checkpoints, 1, state_for(1))
    newest = store.write_checkpoint(checkpoints, 2, state_for(2)).path
    copy = tmp_path / "weights-elsewhere"
    copy.write_bytes((newest / "weights").read_bytes())  # same bytes: the CRC matches
    (newest / "weights").unlink()
    (newest / "weights").symlink_to(copy)
    assert_fell_back_to_step_1(checkpoints, "weights is a symbolic link")


def test_a_planted_symlink_at_the_commit_path_is_not_taken_for_a_peer_commit(tmp_path):
    checkpoints = tmp_path / "ckpt"
    checkpoints.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (checkpoints / "step-00000003").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(CheckpointError, match="symbolic link, not a checkpoint: remove it"):
        store.write_checkpoint(checkpoints, 3, state_for(3))
    assert not list(checkpoints.glob(".tmp-*"))


def _files(manifest):
    return manifest["files"]


def _cut_at_100(text: str) -> str:
    """How a reason quotes a long decoder message: its repr cut to 97 characters + '...'."""
    return repr(text)[:97] + "..."


MALFORMED_MANIFESTS = {
    # name: (change to the manifest dict, or the raw bytes of manifest.json; the reason)
    "missing crc32": (lambda m: _files(m)["weights"].pop("crc32"),
                      "weights: bad crc32 None in the manifest"),
    "crc32 a string": (lambda m: _files(m)["weights"].update(crc32="0"),
                       "weights: bad crc32 '0' in the manifest"),
    "crc32 too large": (lambda m: _files(m)["weights"].update(crc32=1 << 32),
                        "weights: bad crc32 4294967296 in the manifest"),
    "missing bytes": (lambda m: _files(m)["rng"].pop("bytes"),
                      "rng: bad size None in the manifest"),
    "bytes a bool": (lambda m: _files(m)["rng"].update(bytes=True),
                     "rng: bad size True in the manifest"),
    "bytes negative": (lambda m: _files(m)["rng"].update(bytes=-64),
                       "rng: bad size -64 in the manifest"),
    "bytes huge": (lambda m: _files(m)["rng"].update(bytes=10 ** 30),
                   f"rng has 64 bytes, manifest says {10 ** 30}"),
    "bad dtype": (lambda m: _files(m)["weights"].update(dtype="nope"),
                  "weights: bad dtype 'nope' in the manifest"),
    "dtype a list": (lambda m: _files(m)["weights"].update(dtype=["<f4"]),
                     "weights: bad dtype ['<f4'] in the manifest"),
    "object dtype": (lambda m: _files(m)["momentum"].update(dtype="|O8"),
                     "momentum: bad dtype '|O8' in the manifest"),
    "missing dtype": (lambda m: _files(m)["weights"].pop("dtype"),
                      "weights: bad dtype None in the manifest"),
    "wrong shape": (lambda m: _files(m)["momentum"].update(shape=[7, 10]),
                    "momentum: shape [7, 10] of <f8 is not 8000 bytes"),
    "negative shape": (lambda m: _files(m)["momentum"].update(shape=[-100, -10]),
                       "momentum: bad shape [-100, -10] in the manifest"),
    "float shape": (lambda m: _files(m)["momentum"].update(shape=[100.0, 10]),
                    "momentum: bad shape [100.0, 10] in the manifest"),
    "shape a string": (lambda m: _files(m)["momentum"].update(shape="100,10"),
                       "momentum: bad shape '100,10' in the manifest"),
    "shape too deep": (lambda m: _files(m)["momentum"].update(shape=[1] * 70 + [100, 10]),
                       f"momentum: bad shape {str([1] * 72)[:57]}... in the manifest"),
    "unknown kind": (lambda m: _files(m)["rng"].update(kind="pickle"),
                     "rng: unknown kind 'pickle' in the manifest"),
    "entry a list": (lambda m: _files(m).update(rng=[64, 0]),
                     "rng: manifest entry is not an object"),
    "files a list": (lambda m: m.update(files=[["weights", {}]]),
                     "manifest has no 'files' object"),
    "files missing": (lambda m: m.pop("files"), "manifest has no 'files' object"),
    "format true": (lambda m: m.update(format=True), "unknown format True"),
    "format 2": (lambda m: m.update(format=2), "unknown format 2"),
    "step of another": (lambda m: m.update(step=1), "manifest is for step 1, not 2"),
    "metadata a list": (lambda m: m.update(metadata=[1]), "manifest metadata is not an object"),
    "a list": (b'[{"format": 1, "step": 2, "files": {}}]',
               "manifest is a JSON list, not an object"),
    "a number": (b"5", "manifest is a JSON int, not an object"),
    "deep nesting": (b"[" * 100_000 + b"]" * 100_000, "unreadable manifest ('maximum recursion "
                     "depth exceeded while decoding a JSON array from a unicode string')"),
    "bad UTF-8": (b'{"format": 1, "step": 2, "files": {"\xff": 1}}', "unreadable manifest "
                  "(\"'utf-8' codec can't decode byte 0xff in position 36: invalid start "
                  "byte\")"),
    "empty": (b"", "unreadable manifest ('Expecting value: line 1 column 1 (char 0)')"),
    "huge number": (b'{"format": 1' + b"0" * 5000 + b"}", "unreadable manifest (" + _cut_at_100(
        "Exceeds the limit (4300 digits) for integer string conversion: value has 5001 digits;"
        " use sys.set_int_max_str_digits() to increase the limit") + ")"),
}


@pytest.mark.parametrize("case", MALFORMED_MANIFESTS)
def test_a_malformed_manifest_falls_back_with_the_reason(tmp_path, case):
    change, why = MALFORMED_MANIFESTS[case]
    store.write_checkpoint(tmp_path, 1, state_for(1))
    newest = store.write_checkpoint(tmp_path, 2, state_for(2)).path
    if isinstance(change, bytes):
        (newest / store.MANIFEST).write_bytes(change)
    else:
        edit_manifest(newest, change)
    restored = store.restore(tmp_path)
    assert restored.step == 1 and restored.skipped == ((str(newest), why),)


def test_an_oversized_manifest_is_not_read(tmp_path, monkeypatch):
    store.write_checkpoint(tmp_path, 1, state_for(1))
    store.write_checkpoint(tmp_path, 2, state_for(2))
    monkeypatch.setattr(store, "MAX_MANIFEST_BYTES", 200)
    with pytest.raises(CheckpointError, match="more than a manifest can"):
        store.restore(tmp_path)


def run_with_deadline(function, fifo, timeout_s=20.0):
    """Run ``function`` in a thread; if it is still blocked (on the FIFO) at the
    deadline, unblock it by opening the FIFO's other end, and fail."""
    outcome = {}

    def target():
        try:
            outcome["result"] = function()
        except BaseException as error:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(timeout_s)
        pytest.fail(f"blocked on the FIFO {fifo} for {timeout_s} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


@pytest.mark.parametrize("which", [store.MANIFEST, "empty"])
def test_a_fifo_in_a_checkpoint_does_not_block_restore(tmp_path, which):
    store.write_checkpoint(tmp_path, 1, {**state_for(1), "empty": np.zeros(0)})
    newest = store.write_checkpoint(tmp_path, 2, {**state_for(2), "empty": np.zeros(0)}).path
    (newest / which).unlink()
    os.mkfifo(newest / which)
    restored = run_with_deadline(lambda: store.restore(tmp_path), newest / which)
    assert restored.step == 1
    assert "not a regular file" in restored.skipped[0][1]


def test_a_checkpoint_path_that_is_not_a_directory_is_a_checkpoint_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="is not a directory"):
        store.restore(tmp_path / "file")
    assert store.restore(tmp_path / "missing") is None
    with pytest.raises(CheckpointError, match="no checkpoint of step 3"):
        store.restore(tmp_path / "missing", step=3)


def test_non_canonical_step_names_are_not_checkpoints(tmp_path):
    store.write_checkpoint(tmp_path, 1, state_for(1))
    for name in ["step-000000003", "step-٠٠٠٠٠٠٠٣", "step-" + "9" * 200]:
        (tmp_path / name).mkdir()
    assert [step for step, _ in store.committed_steps(tmp_path)] == [1]
    assert store.restore(tmp_path).step == 1


def test_restore_lists_again_when_retention_removes_the_checkpoint_it_reads(tmp_path, monkeypatch):
    """A writer commits step 2 and retains 1 while restore is reading step 1: the
    restore finds step 2 instead of failing. The CRC of restore's first file is the
    moment of the race."""
    store.write_checkpoint(tmp_path, 1, state_for(1))
    crc32 = zlib.crc32
    armed = [True]

    def racing_crc32(data, *args):
        if armed[0]:
            armed[0] = False
            store.write_checkpoint(tmp_path, 2, state_for(2))
            assert store.retain(tmp_path, keep=1) == [tmp_path / "step-00000001"]
        return crc32(data, *args)

    monkeypatch.setattr(zlib, "crc32", racing_crc32)
    restored = store.restore(tmp_path)
    assert restored.step == 2
    assert_state_equal(restored.values, state_for(2))
    [(path, why)] = restored.skipped
    assert path.endswith("step-00000001")
    assert why == "removed while being read (concurrent retention)"


def test_restore_beside_a_writer_that_retains_never_fails(tmp_path):
    """A writer thread commits steps and keeps only the newest; restores in the main
    thread meanwhile always return a complete checkpoint of some step."""
    store.write_checkpoint(tmp_path, 0, state_for(0, 100_000))
    done = threading.Event()
    failures = []

    def writer():
        try:
            for step in range(1, 80):
                store.write_checkpoint(tmp_path, step, state_for(step, 100_000))
                store.retain(tmp_path, keep=1)
        except BaseException as error:  # noqa: BLE001 - reported below
            failures.append(error)
        finally:
            done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    restores = 0
    while not done.is_set() or restores < 5:
        restored = store.restore(tmp_path)
        assert_state_equal(restored.values, state_for(restored.step, 100_000))
        restores += 1
    thread.join()
    assert not failures and store.restore(tmp_path).step == 79


def test_events_reading_skips_garbage_and_never_hangs(tmp_path):
    store.append_event(tmp_path, {"event": "a"})
    with open(tmp_path / store.EVENTS, "ab") as stream:
        stream.write(b"\xff\xfe not utf-8\n5\n[1, 2]\nnull\n" + b"[" * 100_000 + b"\n")
        stream.write(b"x" * (3 << 20) + b"\n")  # a line longer than any event
    store.append_event(tmp_path, {"event": "b"})
    assert [e["event"] for e in store.read_events(tmp_path)] == ["a", "b"]

    fifo_dir = tmp_path / "fifo"
    fifo_dir.mkdir()
    os.mkfifo(fifo_dir / store.EVENTS)
    with pytest.raises(CheckpointError, match="not a regular file"):
        run_with_deadline(lambda: store.read_events(fifo_dir), fifo_dir / store.EVENTS)
    with pytest.raises(OSError):
        store.append_event(fifo_dir, {"event": "c"})

    link_dir = tmp_path / "link"
    link_dir.mkdir()
    (link_dir / store.EVENTS).symlink_to(tmp_path / store.EVENTS)
    with pytest.raises(CheckpointError, match="symbolic link"):
        store.read_events(link_dir)
    with pytest.raises(OSError):
        store.append_event(link_dir, {"event": "c"})
    assert len(store.read_events(tmp_path)) == 2  # nothing was written through the link


# ----------------------------------------------------------------- the property

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)
FIELDS = ["kind", "bytes", "crc32", "dtype", "shape"]
HOSTILE_NAMES = ["../../outside/secret", "{outside}/secret", "a/../../../outside/secret", ".secret",
                 "secret\n", "", "manifest.json", "step-00000001/weights"]

MUTATIONS = st.one_of(
    st.just(("none",)),
    st.tuples(st.just("manifest-json"), JSON),
    st.tuples(st.just("manifest-bytes"), st.binary(max_size=200)),
    st.tuples(st.just("top-field"), st.sampled_from(["format", "step", "files", "metadata"]),
              JSON),
    st.tuples(st.just("entry-field"), st.sampled_from(["weights", "momentum", "rng"]),
              st.sampled_from(FIELDS), JSON | st.just("<delete>")),
    st.tuples(st.just("file-bytes"), st.sampled_from(["weights", "momentum", "rng"]),
              st.binary(max_size=200)),
    st.tuples(st.just("hostile-name"), st.sampled_from(HOSTILE_NAMES)),
    st.tuples(st.just("symlink-file"), st.sampled_from(["weights", "momentum", "rng"])),
    st.tuples(st.just("symlink-dir"),),
    st.tuples(st.just("extra-file"), st.text(min_size=1, max_size=12).filter(
        lambda n: "/" not in n and "\0" not in n and n not in (".", "..")), st.binary(max_size=50)),
)


class _OpenLog:
    """Every path opened while active (audit hook: sees open() and os.open())."""

    active: "list | None" = None
    installed = False

    @classmethod
    def hook(cls, event, args):
        if event == "open" and cls.active is not None:
            cls.active.append(args[0])


def apply_mutation(root, newest, mutation) -> None:
    kind = mutation[0]
    secret = write_secret(root / "outside")
    if kind == "manifest-json":
        (newest / store.MANIFEST).write_text(json.dumps(mutation[1]))
    elif kind == "manifest-bytes":
        (newest / store.MANIFEST).write_bytes(mutation[1])
    elif kind == "top-field":
        edit_manifest(newest, lambda m: m.update({mutation[1]: mutation[2]}))
    elif kind == "entry-field":
        _, name, key, value = mutation
        if value == "<delete>":
            edit_manifest(newest, lambda m: m["files"][name].pop(key, None))
        else:
            edit_manifest(newest, lambda m: m["files"][name].update({key: value}))
    elif kind == "file-bytes":
        (newest / mutation[1]).write_bytes(mutation[2])
    elif kind == "hostile-name":
        name = mutation[1].format(outside=str(root / "outside"))
        edit_manifest(newest, lambda m: m["files"].update({name: secret_entry()}))
        if name in (".secret", "secret\n"):
            (newest / name).write_bytes(SECRET)
    elif kind == "symlink-file":
        (newest / mutation[1]).unlink()
        (newest / mutation[1]).symlink_to(secret)
        edit_manifest(newest, lambda m: m["files"].update({mutation[1]: secret_entry()}))
    elif kind == "symlink-dir":
        target = store.write_checkpoint(root / "outside", 2, {"rng": SECRET}).path
        os.rename(newest, root / "replaced")
        newest.symlink_to(target)
    elif kind == "extra-file":
        (newest / mutation[1]).write_bytes(mutation[2])


def raw_bytes(value) -> bytes:
    return value if isinstance(value, bytes) else value.tobytes()


@settings(max_examples=300, deadline=None)
@given(MUTATIONS)
def test_restore_of_anything_is_the_newest_valid_checkpoint_or_an_error(mutation):
    """Whatever the manifest and the files of the newest checkpoint hold: restore
    returns the newest valid checkpoint, never raises (step 1 is valid), returns
    exactly the bytes inside the step directory, and opens nothing but the
    checkpoint directory and plain names relative to it."""
    if not _OpenLog.installed:
        sys.addaudithook(_OpenLog.hook)
        _OpenLog.installed = True
    with tempfile.TemporaryDirectory() as temp:
        root = Path(temp)
        checkpoints = root / "ckpt"
        store.write_checkpoint(checkpoints, 1, state_for(1, 100))
        newest = store.write_checkpoint(checkpoints, 2, state_for(2, 100)).path
        apply_mutation(root, newest, mutation)
        _OpenLog.active = opened = []
        try:
            restored = store.restore(checkpoints)
        finally:
            _OpenLog.active = None
        # The interpreter's own files may be opened (json imports a UTF-16 codec lazily).
        python = tuple({sys.prefix, sys.base_prefix, sys.exec_prefix})
        assert all(str(path) == str(checkpoints) or isinstance(path, int) or "/" not in path
                   or str(path).startswith(python) for path in opened), opened
        assert all(raw_bytes(value) != SECRET for value in restored.values.values())
        if mutation[0] == "none":
            assert restored.step == 2 and not restored.skipped
        if restored.step == 2:
            assert not newest.is_symlink()
            for name, value in restored.values.items():
                store.check_entry_name(name)
                assert not (newest / name).is_symlink()
                assert raw_bytes(value) == (newest / name).read_bytes()
        else:
            assert restored.step == 1
            assert_state_equal(restored.values, state_for(1, 100))
            [(path, why)] = restored.skipped
            assert path == str(newest) and why


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300), JSON)
def test_a_directory_of_only_garbage_is_a_checkpoint_error_never_another(data, manifest):
    with tempfile.TemporaryDirectory() as temp:
        step_dir = Path(temp) / "step-00000004"
        step_dir.mkdir()
        (step_dir / store.MANIFEST).write_text(json.dumps(manifest))
        (step_dir / "weights").write_bytes(data)
        with pytest.raises(CheckpointError, match="no valid checkpoint"):
            store.restore(temp)


# ------------------------------------------------------------- the event log, exactly


def test_the_event_log_is_one_json_object_a_line_with_the_time(tmp_path):
    directory = tmp_path / "not" / "yet" / "there"  # created on the first event
    before = time.time()
    store.append_event(directory, {"event": "a", "step": 1})
    store.append_event(directory, {"event": "b"})
    after = time.time()
    path = directory / store.EVENTS
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 3  # no blank line between events
    events = [json.loads(line) for line in lines[:-1]]
    assert [sorted(event) for event in events] == [["event", "step", "time_epoch_s"],
                                                   ["event", "time_epoch_s"]]
    for event in events:
        assert before - 0.001 <= event["time_epoch_s"] <= after + 0.001
    assert store.read_events(directory) == events
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644 & ~umask


def test_an_event_after_a_torn_line_starts_on_a_new_line(tmp_path):
    store.append_event(tmp_path, {"event": "a"})
    with open(tmp_path / store.EVENTS, "ab") as stream:
        stream.write(b'{"event": "torn", "st')  # a crash in the middle of a write
    store.append_event(tmp_path, {"event": "b"})
    lines = (tmp_path / store.EVENTS).read_bytes().split(b"\n")
    assert lines[1] == b'{"event": "torn", "st' and json.loads(lines[2])["event"] == "b"
    assert [e["event"] for e in store.read_events(tmp_path)] == ["a", "b"]


def test_appending_to_a_log_that_is_not_a_regular_file_names_it(tmp_path):
    os.mkfifo(tmp_path / store.EVENTS)
    with pytest.raises(OSError) as raised:
        store.append_event(tmp_path, {"event": "a"})
    assert raised.value.errno == errno.EINVAL
    assert raised.value.filename == str(tmp_path / store.EVENTS)
    assert str(raised.value) == f"[Errno 22] not a regular file: '{tmp_path / store.EVENTS}'"


def test_an_event_line_of_exactly_the_limit_is_read_and_a_longer_one_never(tmp_path):
    """Lines up to 1 MiB (newline included) are events; the rest of a longer line is
    skipped to its end, so that its tail cannot pose as an event of its own."""
    limit = store._MAX_EVENT_LINE_BYTES
    head = b'{"event": "big", "pad": "'
    exact = head + b"p" * (limit - len(head) - 3) + b'"}\n'
    assert len(exact) == limit
    forged = b'{"event": "forged"}\n'
    too_long = b"x" * (limit + 1) + forged  # the tail alone is a valid event
    much_too_long = b"y" * (2 * limit + 5) + forged
    just_too_long = b"z" * (limit - 1) + forged
    with open(tmp_path / store.EVENTS, "wb") as stream:
        stream.write(exact + too_long + much_too_long + just_too_long)
    store.append_event(tmp_path, {"event": "after"})
    assert [e["event"] for e in store.read_events(tmp_path)] == ["big", "after"]


def test_an_event_log_that_cannot_be_read_is_a_checkpoint_error_naming_it(tmp_path):
    log = tmp_path / "dir" / store.EVENTS
    log.mkdir(parents=True)  # a directory (open() of it raised IsADirectoryError)
    with pytest.raises(CheckpointError, match=f"^{log} is not a regular file: not read$"):
        store.read_events(log.parent)
    (tmp_path / "file").write_text("x")  # the checkpoint "directory" is a file
    with pytest.raises(CheckpointError, match=f"^cannot read {tmp_path}/file/{store.EVENTS}: "
                                              "Not a directory$"):
        store.read_events(tmp_path / "file")
    (tmp_path / "link").mkdir()
    (tmp_path / "link" / store.EVENTS).symlink_to(log)
    with pytest.raises(CheckpointError, match="events.jsonl is a symbolic link: not read$"):
        store.read_events(tmp_path / "link")
    assert store.read_events(tmp_path / "missing") == []


# ------------------------------------------------------------- what restore says


def test_describe_names_the_step_its_directory_and_what_was_skipped(tmp_path):
    store.write_checkpoint(tmp_path, 1, state_for(1))
    store.write_checkpoint(tmp_path, 2, state_for(2))
    store.write_checkpoint(tmp_path, 3, state_for(3))
    (tmp_path / "step-00000002" / "rng").write_bytes(b"x")
    (tmp_path / "step-00000003" / "rng").write_bytes(b"xy")
    restored = store.restore(tmp_path)
    assert restored.describe() == (  # newest first
        f"restored step 1 from {tmp_path / 'step-00000001'}; skipped "
        "step-00000003 (rng has 2 bytes, manifest says 64); "
        "step-00000002 (rng has 1 bytes, manifest says 64)")
    only = store.write_checkpoint(tmp_path / "other", 5, state_for(5)).path
    assert store.restore(only.parent).describe() == f"restored step 5 from {only}"


@pytest.mark.parametrize("length, shown", [(58, None), (59, 57)])
def test_long_values_in_reasons_are_cut_at_60_characters(tmp_path, length, shown):
    """A manifest value quoted in a reason is its repr, cut to 57 characters and
    '...' when the repr is longer than 60."""
    store.write_checkpoint(tmp_path, 1, state_for(1))
    newest = store.write_checkpoint(tmp_path, 2, state_for(2)).path
    value = "f" * length  # repr: length + 2 quotes
    edit_manifest(newest, lambda m: m.update(format=value))
    [(_, why)] = store.restore(tmp_path).skipped
    quoted = repr(value) if shown is None else repr(value)[:shown] + "..."
    assert why == f"unknown format {quoted}"


def test_a_commit_makes_every_file_durable_before_the_rename_the_manifest_last(
        tmp_path, monkeypatch):
    """The write protocol a power loss cannot tear: each value's file fsynced, then the
    manifest (so it never lists a file that is not on disk), then the temporary
    directory; the rename commits, and the parent's fsync makes the rename durable."""
    calls = []
    fsync, rename = os.fsync, os.rename

    def recording_fsync(fd):
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def recording_rename(source, target):
        calls.append(("rename", str(source), str(target)))
        rename(source, target)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "rename", recording_rename)
    values = state_for(7)
    store.write_checkpoint(tmp_path, 7, values)
    [temp] = [call[1] for call in calls if call[0] == "rename"]
    final = str(tmp_path / "step-00000007")
    assert calls == [
        *[("fsync", f"{temp}/{name}") for name in values],
        ("fsync", f"{temp}/{store.MANIFEST}"), ("fsync", temp), ("rename", temp, final),
        ("fsync", str(tmp_path))]


def test_unusable_names_dtypes_and_directories_are_refused_by_name(tmp_path):
    with pytest.raises(CheckpointError) as raised:
        store.write_checkpoint(tmp_path, 1, {".hidden": b"x"})
    assert str(raised.value) == ("invalid checkpoint entry name '.hidden': use 1-128 letters, "
                                 "digits, '_', '.', '-', not starting with '.' or '-', and not "
                                 "'manifest.json'")
    with pytest.raises(CheckpointError) as raised:
        store.write_checkpoint(tmp_path, 1, {"objects": np.array([None, 1])})
    assert str(raised.value) == "objects: dtype object holds Python objects: it cannot be " \
        "checkpointed"
    with pytest.raises(CheckpointError) as raised:
        store.write_checkpoint(tmp_path, 1, {"empty": np.zeros(3, np.dtype("V0"))})
    assert str(raised.value) == "empty: dtype |V0 has empty items: it cannot be checkpointed"
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(CheckpointError) as raised:
        store.committed_steps(loop)
    assert str(raised.value) == (f"cannot list checkpoint directory {loop}: Too many levels of "
                                 "symbolic links; check its permissions")


def test_retention_clears_leftovers_by_age_and_kind(tmp_path, monkeypatch):
    """Temporary directories of writers (.tmp-) go after an hour, those of deletions
    (.del-) at once; files of those names, and fresh temporary directories, stay."""
    now = 1_800_000_000.0
    monkeypatch.setattr(store.time, "time", lambda: now)
    store.write_checkpoint(tmp_path, 1, state_for(1))
    old_tmp = tmp_path / ".tmp-step-00000009-host-1-aaaa"
    fresh_tmp = tmp_path / ".tmp-step-00000010-host-1-bbbb"
    deleting = tmp_path / ".del-step-00000003-host-1-cccc"
    for directory in (old_tmp, fresh_tmp, deleting):
        (directory / "weights").parent.mkdir()
        (directory / "weights").write_bytes(b"x")
    os.utime(old_tmp, (now - 3600.5, now - 3600.5))
    os.utime(fresh_tmp, (now - 3599.5, now - 3599.5))
    os.utime(deleting, (now, now))
    stray = tmp_path / ".del-step-file"
    stray.write_text("not a directory")
    os.utime(stray, (now - 7200, now - 7200))
    assert sorted(store.retain(tmp_path, keep=1)) == sorted([old_tmp, deleting])
    assert fresh_tmp.exists() and stray.exists() and not old_tmp.exists()
    assert [step for step, _ in store.committed_steps(tmp_path)] == [1]


def test_retention_goes_on_when_another_process_took_a_checkpoint(tmp_path, monkeypatch):
    for step in range(1, 5):
        store.write_checkpoint(tmp_path, step, {"x": np.array([step])})
    rename = os.rename
    taken = []

    def racing_rename(source, target):
        if not taken and Path(source).name == "step-00000002":
            taken.append(source)
            shutil.rmtree(source)  # another process's retain got there first
        rename(source, target)

    monkeypatch.setattr(os, "rename", racing_rename)
    # Step 2 vanished under it: not reported, and steps 3 and 1 still go.
    assert store.retain(tmp_path, keep=1) == [tmp_path / "step-00000003",
                                              tmp_path / "step-00000001"]
    assert [step for step, _ in store.committed_steps(tmp_path)] == [4]


def test_a_checkpoint_step_is_a_whole_number_of_at_most_20_digits(tmp_path):
    for step in (True, "3", -1, 10 ** 20, 2.0):
        with pytest.raises(CheckpointError) as raised:
            store.write_checkpoint(tmp_path, step, {"x": b"x"})
        assert str(raised.value) == f"invalid checkpoint step {step!r}: use an integer from 0"
    for step in (0, 500, 10 ** 20 - 1):
        assert store.write_checkpoint(tmp_path, step, {"x": b"x"}).path.name == \
            store.step_dir_name(step)
    assert [step for step, _ in store.committed_steps(tmp_path)] == [10 ** 20 - 1, 500, 0]


def test_what_a_write_returns_and_leaves_on_disk(tmp_path, monkeypatch):
    directory = tmp_path / "new" / "ckpt"  # created with its parents
    before = time.time()
    first = store.write_checkpoint(directory, 7, {"a": np.zeros(10, np.float32), "b": b"12345"})
    assert (first.step, first.path, first.bytes_written, first.committed_by_us) == \
        (7, directory / "step-00000007", 45, True)
    assert 0 <= first.seconds < 60
    again = store.write_checkpoint(directory, 7, {"a": np.ones(10, np.float32)})
    assert (again.step, again.path, again.bytes_written, again.committed_by_us) == \
        (7, directory / "step-00000007", 0, False)
    assert 0 <= again.seconds < 60
    manifest = json.loads((first.path / store.MANIFEST).read_text())
    assert before - 1 <= manifest["created_epoch_s"] <= time.time() + 1
    umask = os.umask(0)
    os.umask(umask)
    for name in ("a", "b", store.MANIFEST):
        assert (first.path / name).stat().st_mode & 0o777 == 0o644 & ~umask, name


def test_checksums_run_over_every_piece_of_a_large_value(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "_CHUNK", 7)  # 1000 float32s: 572 pieces
    values = state_for(4)
    store.write_checkpoint(tmp_path, 4, values)
    manifest = json.loads((tmp_path / "step-00000004" / store.MANIFEST).read_text())
    assert manifest["files"]["weights"]["crc32"] == zlib.crc32(values["weights"].tobytes())
    assert_state_equal(store.restore(tmp_path).values, values)


def test_an_array_of_64_dimensions_round_trips(tmp_path):
    deep = np.arange(6.0).reshape([1] * 62 + [2, 3])
    store.write_checkpoint(tmp_path, 1, {"deep": deep})
    restored = store.restore(tmp_path)
    assert not restored.skipped and restored.values["deep"].shape == deep.shape


def test_a_manifest_of_exactly_the_limit_is_read(tmp_path, monkeypatch):
    path = store.write_checkpoint(tmp_path, 1, state_for(1)).path
    monkeypatch.setattr(store, "MAX_MANIFEST_BYTES", (path / store.MANIFEST).stat().st_size)
    assert store.restore(tmp_path).step == 1


def test_a_symlinked_manifest_or_a_file_posing_as_a_step_is_refused(tmp_path):
    checkpoints = tmp_path / "ckpt"
    store.write_checkpoint(checkpoints, 1, state_for(1))
    newest = store.write_checkpoint(checkpoints, 2, state_for(2)).path
    elsewhere = tmp_path / "manifest-elsewhere.json"
    os.rename(newest / store.MANIFEST, elsewhere)  # the same manifest, outside
    (newest / store.MANIFEST).symlink_to(elsewhere)
    restored = store.restore(checkpoints)
    assert restored.step == 1 and restored.skipped == (
        (str(newest), "manifest.json is a symbolic link: refused"),)
    shutil.rmtree(newest)
    newest.write_bytes(b"not a directory")
    restored = store.restore(checkpoints)
    assert restored.step == 1 and restored.skipped == (
        (str(newest), "a symbolic link or not a directory: refused"),)


def test_a_checkpoint_removed_between_listing_and_reading_is_skipped(tmp_path, monkeypatch):
    """Retention (by another process) removes step 1 right after restore listed the
    directory; restore lists again and finds step 2, committed meanwhile."""
    store.write_checkpoint(tmp_path, 1, state_for(1))
    scan = store._scan
    calls = []

    def racing_scan(directory):
        found = scan(directory)
        if not calls:
            store.write_checkpoint(tmp_path, 2, state_for(2))
            shutil.rmtree(tmp_path / "step-00000001")
        calls.append(found)
        return found

    monkeypatch.setattr(store, "_scan", racing_scan)
    restored = store.restore(tmp_path)
    assert restored.step == 2 and len(calls) == 2
    assert restored.skipped == ((str(tmp_path / "step-00000001"),
                                 "removed before it could be read (concurrent retention)"),)
