"""PyTorch adapter: state dicts in, checkpoint values out, and back; pinned-memory
snapshots for GPU state.

    from slurmkit.ckpt import Checkpointer
    from slurmkit.ckpt.torch_adapter import PinnedSnapshotter, flatten, unflatten_into

    ckpt = Checkpointer.from_env(periodic_steps=100, snapshotter=PinnedSnapshotter())
    ckpt.register(lambda: flatten({"model": model.state_dict(),
                                   "optimizer": optimizer.state_dict()}))
    restored = ckpt.restore()
    if restored:
        unflatten_into({"model": model.state_dict(), "optimizer": optimizer.state_dict()},
                       restored.values)

The snapshot of a CUDA tensor is one ``copy_(non_blocking=True)`` into a pinned host
buffer allocated once; the stall is bounded by the device-to-host bandwidth, not by
the file system. Optimizer state sharded over data-parallel ranks is resharded on load
by ``slurmkit.ckpt.reshard`` when the DP size changed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

_OBJECTS = "__objects__.json"
_SEPARATOR = "."


def _torch():
    import torch  # the optional extra: imported only when the adapter is used

    return torch


def flatten(state: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested state dicts -> {"model.layer.weight": tensor, ...}; plain values
    (ints, floats, strings, lists) go to one JSON entry."""
    torch = _torch()
    flat: dict[str, Any] = {}
    objects: dict[str, Any] = {}

    def walk(value: Any, key: str) -> None:
        if isinstance(value, torch.Tensor):
            flat[key] = value
        elif isinstance(value, Mapping):
            for sub_key, sub_value in value.items():
                walk(sub_value, f"{key}{_SEPARATOR}{sub_key}" if key else str(sub_key))
        else:
            objects[key] = value

    walk(state, prefix)
    if objects:
        flat[_OBJECTS] = json.dumps(objects, default=str).encode()
    return flat


def tensor_to_numpy(tensor) -> np.ndarray:
    """A CPU tensor as a NumPy array (bfloat16 travels as its raw 16 bits)."""
    torch = _torch()
    tensor = tensor.detach()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy()
    return tensor.numpy()


class PinnedSnapshotter:
    """Checkpointer snapshotter for tensors: CUDA tensors are copied into pinned host
    buffers (reused across snapshots) with non-blocking copies and one synchronize;
    CPU tensors are copied into reused buffers."""

    def __init__(self):
        self._pinned: dict[str, Any] = {}
        self.dtypes: dict[str, str] = {}

    def __call__(self, state: Mapping[str, Any], buffers: dict[str, np.ndarray]) -> dict:
        torch = _torch()
        snapshot: dict[str, Any] = {}
        pending_cuda = False
        for name, value in state.items():
            if not isinstance(value, torch.Tensor):
                snapshot[name] = bytes(value)
                continue
            buffer = self._pinned.get(name)
            if buffer is None or buffer.shape != value.shape or buffer.dtype != value.dtype:
                buffer = torch.empty(value.shape, dtype=value.dtype, device="cpu",
                                     pin_memory=value.is_cuda)
                self._pinned[name] = buffer
            buffer.copy_(value.detach(), non_blocking=value.is_cuda)
            pending_cuda |= value.is_cuda
            self.dtypes[name] = str(value.dtype).removeprefix("torch.")
            snapshot[name] = buffer
        if pending_cuda:
            torch.cuda.synchronize()
        return {name: tensor_to_numpy(value) if isinstance(value, torch.Tensor) else value
                for name, value in snapshot.items()}


def unflatten_into(state: Mapping[str, Any], values: Mapping[str, Any], prefix: str = "") -> None:
    """Copy restored values into the tensors of ``state`` (same nesting as saved),
    on whatever device they live."""
    torch = _torch()

    def walk(value: Any, key: str) -> None:
        if isinstance(value, torch.Tensor):
            if key not in values:
                raise KeyError(f"the checkpoint has no {key}")
            array = values[key]
            source = torch.from_numpy(np.array(array, copy=True))
            if value.dtype == torch.bfloat16:
                source = source.view(torch.bfloat16)
            with torch.no_grad():
                value.copy_(source.reshape(value.shape))
        elif isinstance(value, Mapping):
            for sub_key, sub_value in value.items():
                walk(sub_value, f"{key}{_SEPARATOR}{sub_key}" if key else str(sub_key))

    walk(state, prefix)


def restored_objects(values: Mapping[str, Any]) -> dict[str, Any]:
    raw = values.get(_OBJECTS)
    return json.loads(raw) if raw else {}
