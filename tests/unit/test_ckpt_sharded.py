"""Sharded checkpoints without torch: parts, the commit of a whole step, the survivors'
collective-free write, what a restore reports, crash consistency."""

import os
import random
import signal
import threading
import time

import numpy as np
import pytest

from slurmkit.ckpt import sharded, store
from slurmkit.ckpt.sharded import SHARED, Part, part_name
from slurmkit.ckpt.store import CheckpointError

INFO = {"kind": "test"}
OWNER = {"host": "test"}


def part(name: str, step: int, size: int = 64) -> Part:
    rng = np.random.default_rng(hash((name, step)) % (1 << 32))
    return Part(name, step, {"t00000": rng.standard_normal(size).astype(np.float32)},
                {"tensors": {"w": {"file": "t00000"}}})


def required(world: int) -> tuple[str, ...]:
    return sharded.required_parts(world, sharded=True)


def test_a_step_is_committed_only_once_every_part_is_in(tmp_path):
    needed = required(3)
    for name in needed[:-1]:
        sharded.write_part(tmp_path, "p", part(name, 5), required=needed, info=INFO)
    assert sharded.commit(tmp_path, 5, "p", needed) == "incomplete"
    assert store.committed_steps(tmp_path) == []
    sharded.write_part(tmp_path, "p", part(needed[-1], 5), required=needed, info=INFO)
    assert sharded.commit(tmp_path, 5, "p", needed) == "committed"
    assert sharded.commit(tmp_path, 5, "p", needed) == "exists"
    manifests = sharded.read_parts(tmp_path / "step-00000005", 5)
    assert list(manifests) == list(needed)
    assert manifests["r00001"]["metadata"]["part"] == "r00001"


def test_a_second_writer_of_a_part_is_discarded(tmp_path):
    first = sharded.write_part(tmp_path, "p", part(SHARED, 1), required=(SHARED,), info=INFO)
    second = sharded.write_part(tmp_path, "p", part(SHARED, 1), required=(SHARED,), info=INFO)
    assert first.committed_by_us and not second.committed_by_us


def test_many_committers_at_once_commit_once(tmp_path):
    needed = required(2)
    for name in needed:
        sharded.write_part(tmp_path, "p", part(name, 9), required=needed, info=INFO)
    outcomes = []
    threads = [threading.Thread(target=lambda: outcomes.append(
        sharded.commit(tmp_path, 9, "p", needed))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["committed"] + ["exists"] * 7


def survivors(tmp_path, holdings_by_rank, needed, grace_s=0.5):
    results = {}

    def run(rank, holdings):
        results[rank] = sharded.write_survivors(
            tmp_path, "t", holdings, required=needed, info=INFO, grace_s=grace_s,
            owner={"rank": rank})

    threads = [threading.Thread(target=run, args=item) for item in holdings_by_rank.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def test_survivors_complete_the_step_with_the_dead_ranks_replica(tmp_path):
    """4 ranks, rank 3 dead; rank 0 holds rank 3's replica (ring to the next node)."""
    needed = required(4)
    holdings = {rank: [part(SHARED, 10), part(part_name(rank), 10)] for rank in range(3)}
    holdings[0].append(part(part_name(3), 10))
    results = survivors(tmp_path, holdings, needed)
    assert {r.step for r in results.values()} == {10}
    assert sorted(r.outcome for r in results.values()) == ["by-peer", "by-peer", "committed"]
    written = [item for r in results.values() for item in r.written]
    assert sorted(written) == sorted([(SHARED, 10), *((part_name(r), 10) for r in range(4))])
    sharded.read_parts(tmp_path / "step-00000010", 10)


def test_survivors_at_different_steps_fall_back_to_the_step_they_all_hold(tmp_path):
    """Rank 1 completed step 11 before the fault, rank 0 did not; the dead rank 2's
    replica is of step 10: step 10 is what they can complete together."""
    needed = required(3)
    holdings = {
        0: [part(SHARED, 10), part("r00000", 10), part("r00002", 10), part("r00002", 9)],
        1: [part(SHARED, 11), part("r00001", 11), part(SHARED, 10), part("r00001", 10)]}
    results = survivors(tmp_path, holdings, needed, grace_s=0.3)
    assert {r.step for r in results.values()} == {10}
    assert [step for step, _ in store.committed_steps(tmp_path)] == [10]
    assert sharded.incomplete_after(tmp_path, 10) == [(11, "t", ["r00000", "r00002"])]


def test_a_lost_shard_without_a_replica_leaves_the_checkpoint_incomplete(tmp_path):
    needed = required(3)
    holdings = {rank: [part(SHARED, 7), part(part_name(rank), 7)] for rank in range(2)}
    started = time.monotonic()
    results = survivors(tmp_path, holdings, needed, grace_s=0.3)
    assert time.monotonic() - started < 10
    assert {r.outcome for r in results.values()} == {"incomplete"}
    assert results[0].missing == {7: ["r00002"]}
    assert store.committed_steps(tmp_path) == []
    assert sharded.incomplete_after(tmp_path, 0) == [(7, "t", ["r00002"])]


def test_a_dead_writers_claim_is_taken_over(tmp_path):
    needed = required(1)
    staging = sharded.staging_path(tmp_path, 4, "t")
    staging.mkdir()
    (staging / f".claim-{SHARED}").write_text("{}")  # its writer died
    results = survivors(tmp_path, {0: [part(SHARED, 4), part("r00000", 4)]}, needed,
                        grace_s=0.3)
    assert results[0].outcome == "committed" and results[0].step == 4


def test_a_fenced_survivor_writes_nothing(tmp_path):
    result = sharded.write_survivors(tmp_path, "t", [part(SHARED, 3)], required=(SHARED,),
                                     info=INFO, grace_s=0.2, owner=OWNER,
                                     fenced=lambda: True)
    assert result.outcome == "fenced" and not list(tmp_path.iterdir())


def test_read_parts_refuses_an_incomplete_or_mixed_step(tmp_path):
    needed = required(2)
    for name in needed:
        sharded.write_part(tmp_path, "p", part(name, 2), required=needed, info=INFO)
    sharded.commit(tmp_path, 2, "p", needed)
    step_dir = tmp_path / "step-00000002"
    os.rename(step_dir / "r00001", tmp_path / "gone")
    with pytest.raises(CheckpointError, match="r00001 missing"):
        sharded.read_parts(step_dir, 2)
    store.write_dir(step_dir, "r00001", 2, {"x": b"1"}, metadata={"required": ["shared"]})
    with pytest.raises(CheckpointError, match="another set of parts"):
        sharded.read_parts(step_dir, 2)


def _writer(directory, step, seed) -> None:
    """A child writing a 3-part checkpoint, then committing it. It never returns: an
    exception that got back into the forked pytest worker would run tests in it."""
    try:
        needed = required(2)
        rng = random.Random(seed)
        for name in rng.sample(list(needed), len(needed)):
            big = Part(name, step, {f"t{i:05d}": np.full(20000 + i, step, np.float64)
                                    for i in range(4)})
            sharded.write_part(directory, "p", big, required=needed, info=INFO)
        sharded.commit(directory, step, "p", needed)
    finally:
        os._exit(0)


def test_kills_during_part_writes_never_leave_a_partial_checkpoint(tmp_path):
    """A writer killed at a random moment, 40 times (the container test does 200 with
    torch state): every committed step has all its parts, each verifies."""
    rng = random.Random(1234)
    for step in range(1, 41):
        pid = os.fork()
        if pid == 0:
            _writer(tmp_path, step, step)
        time.sleep(rng.uniform(0, 0.03))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    committed = store.committed_steps(tmp_path)
    for step, path in committed:
        for name in sharded.read_parts(path, step):
            _, values = store.load_dir(path, name, step)
            assert all(np.all(v == step) for v in values.values())
    staged = {int(p.name.split("-")[2]) for p in tmp_path.glob(".tmp-step-*")}
    assert staged | {step for step, _ in committed} <= set(range(1, 41))
    assert not staged & {step for step, _ in committed}
