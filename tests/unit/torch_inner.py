"""Checks that need PyTorch, run inside the node image (where Debian's python3-torch
is installed; the host has none) by tests/unit/test_torch_container.py:

    python3 -m tests.unit.torch_inner [CHECK...]     # one JSON line per check

Each check runs in a process of its own (a fresh interpreter: ranks are forked from
it before any torch thread starts). Ranks are gloo processes on this machine; two
"nodes" are told apart by SLURMD_NODENAME, as Slurm names them.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

CHECKS: dict = {}
REPO = Path(__file__).resolve().parents[2]


def check(function):
    CHECKS[function.__name__] = function
    return function


# ------------------------------------------------------------------ helpers


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _worker(rank, world, port, hosts, function, args):
    import torch.distributed as dist

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), USE_LIBUV="0")
    if hosts:
        os.environ["SLURMD_NODENAME"] = hosts[rank]
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        function(rank, world, *args)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    # Not destroy_process_group: peers may be gone on purpose (a simulated crash).
    sys.stdout.flush()
    os._exit(0)


def spawn(world: int, function, *args, hosts=None, timeout_s: float = 240) -> None:
    """Run ``function(rank, world, *args)`` in ``world`` forked gloo ranks."""
    import torch.multiprocessing as mp

    context = mp.start_processes(_worker, args=(world, _free_port(), hosts, function, args),
                                 nprocs=world, start_method="fork", join=False)
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=max(0.1, deadline - time.monotonic())):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise AssertionError(f"{function.__name__} on {world} ranks: timed out")


def fsdp_model(world: int, dim: int = 12, hidden: int = 50, layers: int = 2, seed: int = 0):
    """An FSDP2 MLP whose sizes shard unevenly over most world sizes."""
    import torch

    from examples.torch_fsdp import wrap
    from examples.torch_train import make_model

    torch.manual_seed(seed)
    return wrap(make_model(dim, hidden, layers), torch.device("cpu"), world)


def ddp_model(world: int, dim: int = 12, hidden: int = 50, layers: int = 2, seed: int = 0):
    """A DDP MLP with a BatchNorm: its num_batches_tracked is a buffer (0-dimensional)
    that the next step's forward moves before the step completes (a triggered checkpoint
    written from the live state must keep the completed step's). momentum=0 keeps the
    running statistics equal on every rank: they follow each rank's own batches, and
    whichever survivor wins the claim writes the checkpoint (rank 0 writes the
    fault-free run's), so they would differ by which rank wrote."""
    import torch

    from examples.torch_ddp import wrap
    from examples.torch_train import make_model

    torch.manual_seed(seed)
    layers_list = list(make_model(dim, hidden, layers))
    model = torch.nn.Sequential(layers_list[0], torch.nn.BatchNorm1d(hidden, momentum=0.0),
                                *layers_list[1:])
    return wrap(model, torch.device("cpu"), world)


def checkpointer(directory, rank, world, **options):
    from slurmkit.ckpt.torch_adapter import TorchCheckpointer

    return TorchCheckpointer(directory, rank=rank, world_size=world, signals=(),
                             exit_on_trigger=False, **options)


def train_steps(model, optimizer, ckpt, start: int, stop: int, rank: int, world: int,
                order=None) -> None:
    """Deterministic steps: the same global batch whatever the world size. ``order``:
    the sample order registered with ``ckpt`` (its position is checkpointed)."""
    from examples.torch_train import SampleOrder

    if order is None:
        order = SampleOrder(24)
        order.position = start * 24
    for step in range(start, stop):
        half_step(model, order, rank, world)
        with ckpt.update(step + 1):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        ckpt.maybe_checkpoint()


def half_step(model, order, rank: int, world: int) -> None:
    """A step's batch drawn, its forward and backward: all but the update."""
    from examples.torch_train import samples

    ids = order.next_ids()
    share = len(ids) // world
    x, y = samples(ids[rank * share:(rank + 1) * share], 12)
    ((model(x) - y).square().sum() * world / len(ids)).backward()


def assert_same(first: dict, second: dict, what: str) -> None:
    """Bitwise equal, leaf by leaf: model, optimizer, data position. (Not the RNG
    states: NumPy's and Python's are seeded from the OS in each process.)"""
    import torch

    first, second = ({k: v for k, v in d.items() if not k.startswith("rng.")}
                     for d in (first, second))
    assert sorted(first) == sorted(second), (what, sorted(set(first) ^ set(second)))
    for key, value in first.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, second[key]), f"{what}: {key} differs"
        else:
            assert value == second[key], f"{what}: {key} differs"


def newest(directory) -> tuple[int, Path]:
    from slurmkit.ckpt import store

    return store.committed_steps(Path(directory))[0]


def full(directory, step: int | None = None) -> dict:
    from slurmkit.ckpt import store
    from slurmkit.ckpt.torch_adapter import read_full

    steps = dict(store.committed_steps(Path(directory)))
    step = max(steps) if step is None else step
    return read_full(steps[step], step)


# ------------------------------------------------------------------ resharding


def _fsdp_train_and_save(rank, world, directory, steps):
    import torch

    from examples.torch_train import SampleOrder

    model = fsdp_model(world)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ckpt = checkpointer(directory, rank, world, replicate=False)
    ckpt.register(model, optimizer, data=SampleOrder(24))
    train_steps(model, optimizer, ckpt, 0, steps, rank, world)
    assert ckpt.checkpoint("final") in (None, "committed")


def _fsdp_restore_gather_save(rank, world, source, target, result):
    import torch
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    from examples.torch_train import SampleOrder
    from slurmkit.ckpt.torch_adapter import _flatten

    model = fsdp_model(world, seed=99)  # other weights: the restore must replace them
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.5)
    order = SampleOrder(24)
    ckpt = checkpointer(source, rank, world, replicate=False)
    ckpt.register(model, optimizer, data=order)
    step = ckpt.restore()
    model_sd, optim_sd = get_state_dict(model, optimizer, options=StateDictOptions(
        full_state_dict=True, cpu_offload=True))
    gathered: dict = {}
    _flatten("model", model_sd, gathered)
    _flatten("optim", optim_sd, gathered)
    saved = ckpt.restored
    again = checkpointer(target, rank, world, replicate=False)  # saved again, by this world
    again.register(model, optimizer, data=order)
    again.completed(step)
    again.checkpoint("final")
    if rank == 0:
        expected = full(source)
        tensors = {k: v for k, v in expected.items() if k.startswith(("model.", "optim.state."))}
        assert_same({k: gathered[k] for k in tensors}, tensors, f"gathered on {world} ranks")
        assert gathered["optim.param_groups"] == expected["optim.param_groups"]
        assert order.position == expected["data"]["position"]
        Path(result).write_text(json.dumps({"step": step, "restored": saved}))


@check
def check_resharding_8_to_6_and_3_is_bitwise(tmp: Path):
    """A checkpoint written by 8 FSDP2 ranks loads into 6 and into 3: the state they
    gather equals the saved one bit for bit, and so does what they save again."""
    spawn(8, _fsdp_train_and_save, str(tmp / "w8"), 3)
    step, _ = newest(tmp / "w8")
    saved = full(tmp / "w8")
    for world in (6, 3):
        result = tmp / f"result{world}.json"
        spawn(world, _fsdp_restore_gather_save, str(tmp / "w8"), str(tmp / f"w{world}"),
              str(result))
        restored = json.loads(result.read_text())
        assert restored["step"] == step == 3, restored
        assert restored["restored"]["world_size"] == 8 and restored["restored"]["kind"] == "final"
        assert_same(full(tmp / f"w{world}"), saved, f"saved again by {world} ranks")


# ------------------------------------------------------------------ survivors


def _crash_run(rank, world, directory, steps, kind, replicate, crash):
    """Train ``steps`` steps (periodic every 2); with ``crash``, node n1 (ranks 2, 3)
    dies after the last step and the survivors write the triggered checkpoint."""
    import torch

    from examples.torch_train import SampleOrder

    model = fsdp_model(world) if kind == "fsdp" else ddp_model(world)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ckpt = checkpointer(directory, rank, world, replicate=replicate, periodic_steps=2,
                        grace_s=1.0)
    order = SampleOrder(24)
    ckpt.register(model, optimizer, data=order)
    train_steps(model, optimizer, ckpt, 0, steps, rank, world, order=order)
    ckpt.wait()
    if not crash:
        ckpt.checkpoint("final")
        return
    if ckpt._replicator is not None:  # the last round: every shard held twice
        assert ckpt._replicator.wait(60)
    import torch.distributed as dist

    dist.barrier()
    if crash == "mid-step":
        # The next step has drawn its batch and run its backward when the node dies:
        # the checkpoint of the last completed step must not take the moved-on
        # sample position with it (the resumed run would skip a batch).
        half_step(model, order, rank, world)
    if rank >= 2:
        os._exit(0)  # the node is gone
    ckpt.trigger("node n1 lost")
    Path(directory, f"saved-{rank}").write_text(json.dumps(ckpt._saved_step))


def _restore_on(rank, world, directory, kind, result):
    import torch

    from examples.torch_train import SampleOrder

    model = fsdp_model(world, seed=5) if kind == "fsdp" else ddp_model(world, seed=5)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ckpt = checkpointer(directory, rank, world)
    ckpt.register(model, optimizer, data=SampleOrder(24))
    ckpt.restore()
    if rank == 0:
        from slurmkit.ckpt.torch_adapter import describe

        Path(result).write_text(json.dumps({**ckpt.restored,
                                            "describe": describe(ckpt.restored, world)}))


def _survivors_case(tmp: Path, kind: str, replicate: bool, crash="after-step") -> dict:
    hosts = ["n0", "n0", "n1", "n1"]
    spawn(4, _crash_run, str(tmp / "crash"), 5, kind, replicate, crash, hosts=hosts)
    spawn(4, _crash_run, str(tmp / "ref"), 5, kind, replicate, False, hosts=hosts)
    spawn(2, _restore_on, str(tmp / "crash"), kind, str(tmp / "restored.json"))
    saved = {json.loads((tmp / "crash" / f"saved-{rank}").read_text()) for rank in (0, 1)}
    return {"saved": saved, "restored": json.loads((tmp / "restored.json").read_text())}


@check
def check_fsdp_survivors_write_every_shard_from_replicas(tmp: Path):
    """4 FSDP2 ranks on two nodes; n1 dies after step 5: ranks 0 and 1 hold the
    replicas of ranks 2 and 3 and commit step 5, equal bit for bit to a fault-free
    run's step 5; it restores on 2 ranks."""
    outcome = _survivors_case(tmp, "fsdp", replicate=True)
    assert outcome["saved"] == {5}, outcome
    restored = outcome["restored"]
    assert restored["step"] == 5 and restored["kind"] == "triggered", restored
    assert "restored step 5 (triggered, 4 ranks -> 2)" in restored["describe"], restored
    assert_same(full(tmp / "crash", 5), full(tmp / "ref", 5), "triggered vs fault-free")


@check
def check_fsdp_without_replicas_falls_back_to_the_periodic_checkpoint(tmp: Path):
    outcome = _survivors_case(tmp, "fsdp", replicate=False)
    assert outcome["saved"] == {None}, outcome
    restored = outcome["restored"]
    assert restored["step"] == 4 and restored["kind"] == "periodic", restored
    assert restored["incomplete"] == [{"step": 5, "tag": "trig-0-0",
                                       "missing": ["r00002", "r00003"]}], restored
    assert "step 5 trig (incomplete: r00002, r00003 missing)" in restored["describe"]


@check
def check_ddp_survivors_write_the_whole_state(tmp: Path):
    """DDP keeps no snapshot ring: the survivors write their live state. The node dies
    in the middle of step 6 (its batch drawn): step 5 as it was, the sample position
    included, bit for bit a fault-free run's."""
    outcome = _survivors_case(tmp, "ddp", replicate=True, crash="mid-step")
    assert outcome["saved"] == {5}, outcome
    assert outcome["restored"]["step"] == 5
    saved = full(tmp / "crash", 5)
    assert saved["data"]["position"] == 5 * 24, saved["data"]
    assert_same(saved, full(tmp / "ref", 5), "triggered vs fault-free")
    assert sorted(p.name for p in (tmp / "crash" / "step-00000005").iterdir()) == ["shared"]


# ----------------------------------------------------------- crash consistency


def _kill_loop(rank, world, directory, kills, result):
    """One FSDP2 rank (its params are DTensors: a shared part and a shard). Children
    forked from it write periodic, final or triggered checkpoints of a state that
    encodes its step; each is killed at a random moment. After every kill a restore
    must find a complete checkpoint, say which, and hold exactly that step's state."""
    import torch

    from examples.torch_train import SampleOrder

    model = fsdp_model(world)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ckpt = checkpointer(directory, rank, world, replicate=False, keep=2, grace_s=0.2)
    ckpt.register(model, optimizer, data=SampleOrder(24))
    train_steps(model, optimizer, ckpt, 0, 1, rank, world)  # optimizer state exists
    probe_model = fsdp_model(world, seed=3)
    probe_optimizer = torch.optim.AdamW(probe_model.parameters(), lr=1e-2)
    probe = checkpointer(directory, rank, world, replicate=False)
    probe.register(probe_model, probe_optimizer, data=SampleOrder(24))
    rng = random.Random(2024)
    tensors = [p for p in model.parameters()] + [
        v for state in optimizer.state.values() for v in state.values()
        if isinstance(v, torch.Tensor) and v.dim()]
    committed, kinds = 0, {}
    for step in range(2, kills + 2):
        with ckpt.update(step), torch.no_grad():
            for index, tensor in enumerate(tensors):
                tensor.fill_(step + index / 1000)
        pid = os.fork()
        if pid == 0:
            # Children: no signal handlers of the parent's test harness; just write.
            kind = ("periodic", "final", "triggered")[step % 3]
            if kind == "triggered":
                ckpt._write_triggered()
            else:
                ckpt.checkpoint(kind)
            os._exit(0)
        time.sleep(rng.uniform(0.0, 0.25))  # a write takes 0.07-0.2 s here
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        restored_step = probe.restore()
        if not restored_step:
            continue
        restored = probe.restored
        assert restored["step"] == restored_step and restored["kind"] in (
            "periodic", "final", "triggered"), restored
        kinds[restored["kind"]] = kinds.get(restored["kind"], 0) + 1
        committed += restored_step == step
        with torch.no_grad():
            for index, parameter in enumerate(probe_model.parameters()):
                local = parameter.to_local()
                assert torch.equal(local, torch.full_like(local, restored_step + index / 1000)), \
                    f"restored step {restored_step}: parameter {index} is not that step's"
    Path(result).write_text(json.dumps({"kills": kills, "committed": committed,
                                        "kinds": kinds,
                                        "left": len(list(Path(directory).glob(".tmp-*")))}))


@check
def check_200_kills_during_torch_checkpoint_writes(tmp: Path):
    spawn(1, _kill_loop, str(tmp / "ckpt"), 200, str(tmp / "kills.json"), timeout_s=500)
    outcome = json.loads((tmp / "kills.json").read_text())
    # Some writes were cut off, some completed: both ends were exercised.
    assert outcome["left"] > 0 and outcome["committed"] > 10, outcome
    return outcome


# ------------------------------------------------------------- the examples


def _run(argv: list[str], env: dict, timeout_s: float = 240) -> str:
    result = subprocess.run(argv, env={**os.environ, "USE_LIBUV": "0", **env}, cwd=REPO,
                            capture_output=True, text=True, timeout=timeout_s)
    assert result.returncode == 0, (argv, result.stdout[-2000:], result.stderr[-4000:])
    return result.stdout + result.stderr


@check
def check_examples_under_torchrun_and_srun_style_rendezvous(tmp: Path):
    """examples.torch_fsdp under torchrun (c10d rendezvous: needs the node image's
    libuv fix), resumed on 3 ranks; examples.torch_ddp launched the way srun does
    (SLURM_PROCID...; env rendezvous)."""
    small = ["--hidden", "64", "--global-batch", "12", "--periodic-steps", "2"]
    env = {"SLURMKIT_CKPT_DIR": str(tmp / "fsdp")}
    torchrun = ["torchrun", "--nnodes=1", "--rdzv-backend=c10d",
                f"--rdzv-endpoint=127.0.0.1:{_free_port()}", "--rdzv-id=check"]
    _run([*torchrun, "--nproc-per-node=2", "-m", "examples.torch_fsdp", "--steps", "3",
          *small], env)
    out = _run([*torchrun, "--nproc-per-node=3", "-m", "examples.torch_fsdp", "--steps", "5",
                *small], env)
    assert "restored step 3 (final, 2 ranks -> 3)" in out and "done step 5" in out, out
    port = _free_port()
    processes = [subprocess.Popen(
        [sys.executable, "-m", "examples.torch_ddp", "--steps", "3", *small], cwd=REPO,
        env={**os.environ, "USE_LIBUV": "0", "SLURM_PROCID": str(rank), "SLURM_NTASKS": "2",
             "SLURM_LOCALID": str(rank), "SLURM_NNODES": "1", "MASTER_ADDR": "127.0.0.1",
             "MASTER_PORT": str(port), "SLURMKIT_CKPT_DIR": str(tmp / "ddp")},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in range(2)]
    outputs = [process.communicate(timeout=240) for process in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    assert "done step 3" in outputs[0][0], outputs


def _srun_like(world: int, directory: Path, hosts: list[str], attempt: int, args: list[str]):
    """``world`` ranks of examples.torch_fsdp started the way srun starts tasks."""
    port = _free_port()
    return [subprocess.Popen(
        [sys.executable, "-m", "examples.torch_fsdp", *args], cwd=REPO,
        env={**os.environ, "USE_LIBUV": "0", "SLURM_PROCID": str(rank),
             "SLURM_NTASKS": str(world), "SLURM_LOCALID": str(rank % 2),
             "SLURM_NNODES": str(len(set(hosts))), "MASTER_ADDR": "127.0.0.1",
             "MASTER_PORT": str(port), "SLURMKIT_CKPT_DIR": str(directory),
             "SLURMD_NODENAME": hosts[rank], "SLURMKIT_ATTEMPT": str(attempt)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in range(world)]


def _losses(directory: Path) -> dict[int, float]:
    from slurmkit.ckpt import store

    return {e["step"]: e["loss"] for e in store.read_events(directory) if e["event"] == "step"}


@check
def check_the_fsdp_example_survives_a_killed_node(tmp: Path):
    """No supervisor: node n1's two ranks are killed at step 6; the survivors' gloo
    collectives fail, they write the triggered checkpoint from their replicas and
    exit 85; the job goes on from it on 2 ranks with the fault-free losses."""
    args = ["--steps", "10", "--hidden", "64", "--global-batch", "24", "--periodic-steps", "4",
            "--step-seconds", "0.3"]
    hosts = ["n0", "n0", "n1", "n1"]
    for process in _srun_like(4, tmp / "ref", hosts, 0, args):
        assert process.wait(timeout=240) == 0
    ranks = _srun_like(4, tmp / "crash", hosts, 0, args)
    deadline = time.monotonic() + 240
    while max(_losses(tmp / "crash"), default=0) < 6:
        assert time.monotonic() < deadline and all(p.poll() is None for p in ranks), \
            [p.communicate()[0][-2000:] for p in ranks if p.poll() is not None]
        time.sleep(0.05)
    for process in ranks[2:]:
        process.kill()
    outputs = [process.communicate(timeout=120)[0] for process in ranks]
    assert [p.returncode for p in ranks[:2]] == [85, 85], outputs[:2]
    resumed = _srun_like(2, tmp / "crash", hosts[:2], 1, args)
    outputs = [process.communicate(timeout=240)[0] for process in resumed]
    assert [p.returncode for p in resumed] == [0, 0], outputs
    saved = [line for line in outputs[0].splitlines() if "restored step" in line]
    assert saved and "(triggered, 4 ranks -> 2)" in saved[0], outputs[0][-2000:]
    reference, losses = _losses(tmp / "ref"), _losses(tmp / "crash")
    assert sorted(losses) == sorted(reference) == list(range(1, 11))
    worst = max(abs(losses[s] - reference[s]) / reference[s] for s in reference)
    assert worst <= 1e-6, (worst, losses, reference)
    return {"restored": saved[0].split(": ", 1)[-1][:120], "max_rel_loss_diff": worst}


# ------------------------------------------------------------------ runner


def run_one(name: str) -> dict:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"{name}-") as tmp:
        try:
            detail = CHECKS[name](Path(tmp))
            return {"check": name, "ok": True, "seconds": round(time.monotonic() - started, 1),
                    "detail": detail}
        except Exception:
            return {"check": name, "ok": False, "seconds": round(time.monotonic() - started, 1),
                    "error": traceback.format_exc()[-6000:]}


def main(argv: list[str]) -> int:
    if argv[:1] == ["--one"]:
        print("RESULT " + json.dumps(run_one(argv[1])), flush=True)
        return 0
    # Images built before docker-slurm/torch-libuv.py ran at build time: apply it here
    # (a throwaway container; a no-op on a current image).
    subprocess.run([sys.executable, str(REPO / "docker-slurm" / "torch-libuv.py")], check=True)
    for name in argv or list(CHECKS):
        result = subprocess.run([sys.executable, "-m", "tests.unit.torch_inner", "--one", name],
                                cwd=REPO, capture_output=True, text=True)
        lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
        outcome = json.loads(lines[-1][7:]) if lines else {
            "check": name, "ok": False, "error": f"exit {result.returncode}"}
        if not outcome["ok"]:
            outcome["error"] = outcome.get("error", "") + "\n--- stderr ---\n" + \
                result.stderr[-6000:]
        print(json.dumps(outcome), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
