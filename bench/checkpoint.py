"""The stall a trainer sees for an async checkpoint against a synchronous write of
the same state, in one run.

- sync: ``write_checkpoint`` (every file fsynced, manifest, atomic rename).
- async: ``Checkpointer.maybe_checkpoint`` — the trainer is blocked only while the
  state is copied into reused host buffers (pinned, for CUDA tensors); a background
  thread writes. The stall is that copy.
On a GPU (when torch sees one) the state lives on the device: the stall is compared
with the floor size / pinned device-to-host bandwidth (measured here), and with
``torch.distributed.checkpoint.async_save`` on the same state.

Targets (issue 5): CPU stall <= 10 % of the sync write; GPU stall <= 1.25 x the D2H
floor and below DCP async_save's stall.
Final line: {"state_bytes", "stall_s", "sync_s", "stall_ratio", "device", ...}
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from slurmkit.ckpt import Checkpointer, store  # noqa: E402

STATE_BYTES = int(float(os.environ.get("BENCH_STATE_GB", "1")) * (1 << 30))
REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))
TENSORS = 8


def log(text: str) -> None:
    print(f"[bench/checkpoint] {text}", file=sys.stderr, flush=True)


def cpu_state() -> dict[str, np.ndarray]:
    per_tensor = STATE_BYTES // TENSORS // 4
    rng = np.random.default_rng(0)
    return {f"layer{i}": rng.standard_normal(per_tensor, dtype=np.float32)
            for i in range(TENSORS)}


def measure_stall(directory: Path, state, repeat: int, snapshotter=None) -> float:
    """Seconds the training loop stalls for one async checkpoint of ``state``."""
    extra = {"snapshotter": snapshotter} if snapshotter is not None else {}
    ckpt = Checkpointer(directory, periodic_steps=1, signals=(), keep=1, **extra)
    ckpt.register(lambda: state)
    ckpt.completed(repeat + 1)
    # Warm the reusable buffers once (as a long run would have), then measure.
    ckpt.maybe_checkpoint()
    ckpt.wait()
    ckpt.completed(repeat + 2)
    started = time.perf_counter()
    ckpt.maybe_checkpoint()
    stall_s = time.perf_counter() - started
    ckpt.close()
    return stall_s


def measure_cpu(directory: Path) -> dict:
    state = cpu_state()
    sync_times, stalls = [], []
    for repeat in range(REPEATS):
        started = time.perf_counter()
        store.write_checkpoint(directory / "sync", repeat, state)
        sync_times.append(time.perf_counter() - started)
        store.retain(directory / "sync", keep=1)
        stalls.append(measure_stall(directory / "async", state, repeat))
        log(f"repeat {repeat}: sync {sync_times[-1]:.3f} s, async stall {stalls[-1]:.4f} s")
    sync_s, stall_s = statistics.median(sync_times), statistics.median(stalls)
    return {"state_bytes": sum(a.nbytes for a in state.values()), "stall_s": round(stall_s, 4),
            "sync_s": round(sync_s, 3), "stall_ratio": round(stall_s / sync_s, 4),
            "device": "cpu", "target_ratio": 0.10, "meets_target": stall_s / sync_s <= 0.10}


def measure_gpu(directory: Path, torch) -> dict:
    from slurmkit.ckpt.torch_adapter import PinnedSnapshotter

    per_tensor = STATE_BYTES // TENSORS // 4
    state = {f"layer{i}": torch.randn(per_tensor, device="cuda") for i in range(TENSORS)}
    state_bytes = sum(t.numel() * t.element_size() for t in state.values())
    # The floor: pinned device-to-host bandwidth, measured on this GPU.
    pinned = torch.empty(per_tensor * TENSORS, dtype=torch.float32, pin_memory=True)
    flat = torch.cat(list(state.values()))
    torch.cuda.synchronize()
    floors = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        pinned.copy_(flat, non_blocking=True)
        torch.cuda.synchronize()
        floors.append(time.perf_counter() - started)
    del flat
    d2h_floor_s = min(floors)
    snapshotter = PinnedSnapshotter()
    stalls, sync_times = [], []
    for repeat in range(REPEATS):
        stalls.append(measure_stall(directory / "async", state, repeat, snapshotter))
        started = time.perf_counter()
        host = {name: tensor.cpu().numpy() for name, tensor in state.items()}
        store.write_checkpoint(directory / "sync", repeat, host)
        sync_times.append(time.perf_counter() - started)
        store.retain(directory / "sync", keep=1)
    dcp_stall_s = measure_dcp_async(directory, torch, state)
    stall_s = statistics.median(stalls)
    return {"state_bytes": state_bytes, "stall_s": round(stall_s, 4),
            "sync_s": round(statistics.median(sync_times), 3),
            "stall_ratio": round(stall_s / statistics.median(sync_times), 4),
            "device": torch.cuda.get_device_name(), "d2h_floor_s": round(d2h_floor_s, 4),
            "dcp_async_stall_s": dcp_stall_s,
            "meets_target": stall_s <= 1.25 * d2h_floor_s
            and (dcp_stall_s is None or stall_s < dcp_stall_s)}


def measure_dcp_async(directory: Path, torch, state) -> float | None:
    try:
        import torch.distributed as dist
        import torch.distributed.checkpoint as dcp
    except ImportError:
        return None
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29533")
        dist.init_process_group("gloo", rank=0, world_size=1)
    stalls = []
    for repeat in range(REPEATS):
        started = time.perf_counter()
        future = dcp.async_save(state, checkpoint_id=str(directory / f"dcp-{repeat}"))
        stalls.append(time.perf_counter() - started)
        future.result()
    return round(statistics.median(stalls), 4)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="slurmkit-bench-ckpt-", dir="/var/tmp") as work:
        directory = Path(work)
        try:
            import torch
            gpu = torch.cuda.is_available()
        except ImportError:
            torch, gpu = None, False
        result = measure_gpu(directory, torch) if gpu else measure_cpu(directory)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
