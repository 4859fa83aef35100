"""PyTorch jobs that survive node loss: DDP and FSDP2 state, sharded checkpoints,
peer replicas, resharding to a new world size on restore.

    import torch.distributed as dist
    from slurmkit.ckpt.torch_adapter import TorchCheckpointer

    ckpt = TorchCheckpointer.from_env(periodic_steps=50)  # first: signal handlers, heartbeat
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    model = DDP(net) or fully_shard(net); optimizer = ...
    ckpt.register(model, optimizer, data=sampler)       # collective: every rank calls it
    start = ckpt.restore()                              # step to resume from (0: none)
    for step in range(start, steps):
        loss = forward_backward(sampler.next_batch())
        with ckpt.update(step + 1):                     # the state changes only in here
            optimizer.step()
            optimizer.zero_grad()
        ckpt.maybe_checkpoint()                         # periodic, asynchronous
    ckpt.checkpoint("final")                            # every rank
    ckpt.close()

What is saved: the model and optimizer state (``torch.distributed.checkpoint``'s
``get_state_dict``: plain tensors under DDP, DTensor shards under FSDP2), the data
position (``data.state_dict()``), the CPU/CUDA, NumPy and Python RNG states, and
``extra()``. Plain tensors and objects are taken to be alike on every rank (as DDP
keeps them, and DCP assumes) and written once, in the ``shared`` part; DTensor shards
go to each rank's own part (``slurmkit.ckpt.sharded``). RNG states are the job's:
seed every rank alike and derive per-rank or per-sample randomness from the step, so
that a run on fewer ranks still sees the same numbers.

How each checkpoint is written:

- **periodic**: every ``periodic_steps`` steps each rank copies its part into reused
  host buffers (pinned for CUDA; the only stall) and a background thread writes it;
  rank 0 commits once every part is in.
- **peer replicas** (sharded state, ``replicate=True``): after every update each rank
  copies its shard into a host snapshot (two steps kept) and a background thread
  sends it over a gloo group to the same local rank on the next node, which keeps
  the last two it received. Before a rank's backward collectives of the next step it
  waits until that round is done, so no step completes anywhere before every shard
  of the previous step is held twice: after a node loss the survivors hold every
  shard of the last or second-to-last completed step.
- **triggered** (a peer lost, SIGTERM, the warning signal): the survivors write what
  they hold, their parts and their replicas, without collectives, and commit the
  newest step they complete together (``sharded.write_survivors``). When a shard and
  its replica are both lost (or replication is off) nothing completes: the event log
  and the next restore say so, and the job resumes from the last periodic checkpoint.

``restore`` (collective) verifies and loads the newest complete checkpoint with
``torch.distributed.checkpoint.load`` through ``ShardedReader``: DCP's planner
reshards each tensor to the current world size (8 ranks -> 6 or 3); the log names the
checkpoint, its kind, its world size, and what newer ones were passed over and why.
"""

from __future__ import annotations

import contextlib
import copy
import io
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.checkpoint import StorageReader
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import LoadItemType
from torch.distributed.tensor import DTensor

from slurmkit.ckpt import sharded, store
from slurmkit.ckpt.manager import Checkpointer
from slurmkit.ckpt.sharded import SHARED, Part, part_name
from slurmkit.ckpt.store import CheckpointError

_ALIGN = 64  # bytes: each tensor of a packed snapshot starts on a cache line
_HEADER = 64  # the step, at the head of a packed snapshot (replicas carry it)
#: Leaves a restore loads only when the checkpoint has them (saved on another device).
_OPTIONAL = ("rng.", "extra")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise CheckpointError(f"unknown tensor dtype {name!r} in the checkpoint")
    return dtype


def _flatten(prefix: str, value: Any, out: dict[str, Any],
             places: list[tuple[dict, Any, str]] | None = None, parent=None, key=None) -> None:
    """Nested dicts -> {"optim.state.fc.weight.exp_avg": leaf}; ``places`` records
    where each leaf sits, to put loaded objects back."""
    if isinstance(value, Mapping):
        for sub_key, sub_value in value.items():
            _flatten(f"{prefix}.{sub_key}", sub_value, out, places, value, sub_key)
        return
    out[prefix] = value
    if places is not None and parent is not None:
        places.append((parent, key, prefix))


def _bytes_view(tensor: torch.Tensor) -> np.ndarray:
    """The bytes of a CPU tensor as a NumPy array (no copy when contiguous)."""
    tensor = tensor.detach()
    if not tensor.is_contiguous():
        tensor = tensor.contiguous()
    return tensor.reshape(-1).view(torch.uint8).numpy()


def _serialize(value: Any) -> bytes:
    stream = io.BytesIO()
    torch.save(value, stream)
    return stream.getvalue()


class _Packer:
    """Where each tensor of a part sits in one flat host buffer, and how to read the
    part back out of such a buffer (a snapshot, or a replica received from a peer)."""

    def __init__(self, entries: list[tuple[str, torch.Tensor, tuple, tuple]]):
        self.spec: list[dict[str, Any]] = []
        offset = _HEADER
        for fqn, tensor, offsets, global_shape in entries:
            nbytes = tensor.numel() * tensor.element_size()
            self.spec.append({"fqn": fqn, "dtype": _dtype_name(tensor.dtype),
                              "shape": list(tensor.shape), "offsets": list(offsets),
                              "global_shape": list(global_shape), "start": offset,
                              "nbytes": nbytes})
            offset += -(-nbytes // _ALIGN) * _ALIGN
        self.nbytes = offset
        if self.spec:
            self.spec[-1]["end"] = offset  # the buffer's size, for the peer

    def key(self) -> tuple:
        return tuple((e["fqn"], e["dtype"], tuple(e["shape"])) for e in self.spec)

    def allocate(self, pin: bool) -> torch.Tensor:
        return torch.empty(self.nbytes, dtype=torch.uint8, pin_memory=pin)

    def pack(self, step: int, tensors: list[torch.Tensor], buffer: torch.Tensor) -> None:
        buffer[:8].view(torch.int64)[0] = step
        cuda = False
        for entry, tensor in zip(self.spec, tensors, strict=True):
            if not entry["nbytes"]:
                continue
            view = buffer[entry["start"]:entry["start"] + entry["nbytes"]]
            view.view(tensor.dtype).view(tensor.shape).copy_(tensor.detach(),
                                                             non_blocking=tensor.is_cuda)
            cuda |= tensor.is_cuda
        if cuda:
            torch.cuda.synchronize()

    @staticmethod
    def step_of(buffer: torch.Tensor) -> int:
        return int(buffer[:8].view(torch.int64)[0])

    def values(self, buffer: torch.Tensor) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return _unpack(self.spec, buffer)


def _unpack(spec: list[dict], buffer: torch.Tensor
            ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A packed buffer as store values (views into it) and the reader's description."""
    array = buffer.numpy()
    values, tensors = {}, {}
    for index, entry in enumerate(spec):
        name = f"t{index:05d}"
        values[name] = array[entry["start"]:entry["start"] + entry["nbytes"]]
        tensors[entry["fqn"]] = {"file": name, **{k: entry[k] for k in (
            "dtype", "shape", "offsets", "global_shape")}}
    return values, {"tensors": tensors}


def _live_values(entries: list[tuple[str, torch.Tensor, tuple, tuple]]
                 ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A part straight from the live tensors (copied to the host when on a GPU)."""
    values, tensors = {}, {}
    for index, (fqn, tensor, offsets, global_shape) in enumerate(entries):
        name = f"t{index:05d}"
        values[name] = _bytes_view(tensor.cpu() if tensor.is_cuda else tensor)
        tensors[fqn] = {"file": name, "dtype": _dtype_name(tensor.dtype),
                        "shape": list(tensor.shape), "offsets": list(offsets),
                        "global_shape": list(global_shape)}
    return values, {"tensors": tensors}


def _with_objects(values: dict, metadata: dict, objects: Mapping[str, Any]) -> None:
    names = {}
    for index, (fqn, value) in enumerate(objects.items()):
        name = f"o{index:05d}"
        values[name] = value if isinstance(value, bytes) else _serialize(value)
        names[fqn] = name
    metadata["objects"] = names


class _Snapshot:
    """One step of this rank's state in host memory: its own shard and the shared
    part (packed), and the shared objects (serialized)."""

    def __init__(self, own: _Packer, shared: _Packer, pin: bool):
        self.own_packer, self.shared_packer = own, shared
        self.own, self.shared = own.allocate(pin), shared.allocate(pin)
        self.objects: dict[str, bytes] = {}
        self.step: int | None = None
        self.with_shared = True

    def fits(self, own: _Packer, shared: _Packer) -> bool:
        return own.key() == self.own_packer.key() and shared.key() == self.shared_packer.key()

    def parts(self, rank: int, sharded_state: bool) -> list[Part]:
        parts = []
        if self.with_shared:
            values, metadata = self.shared_packer.values(self.shared)
            _with_objects(values, metadata, self.objects)
            parts.append(Part(SHARED, self.step, values, metadata))
        if sharded_state:
            values, metadata = self.own_packer.values(self.own)
            parts.append(Part(part_name(rank), self.step, values, metadata))
        return parts


class _Replicator:
    """Sends this rank's packed shard to its peer (another node) and keeps the last
    two of its source's, in a background thread, over a gloo group of its own (no
    other thread uses that group, so its sends and receives never interleave with
    the training's collectives). Rounds run in the order they were started; every
    rank starts one per completed step."""

    def __init__(self, group, peer: int, source: int, log: Callable[[str], None]):
        self.group, self.peer, self.source, self._log = group, peer, source, log
        self._queue: list[tuple[int, torch.Tensor, list]] = []
        self._cond = threading.Condition()
        self._busy = False
        self._stopped = False
        self.failed: str | None = None
        self.source_spec: list[dict] | None = None
        self._buffers: list[torch.Tensor] = []
        self.replicas: dict[int, torch.Tensor] = {}  # step -> buffer, the last two
        self.round_s: list[float] = []
        threading.Thread(target=self._run, name="slurmkit-replicate", daemon=True).start()

    def start(self, step: int, buffer: torch.Tensor, spec: list[dict]) -> None:
        with self._cond:
            if not self._stopped and self.failed is None:
                self._queue.append((step, buffer, spec))
                self._cond.notify_all()

    def stop(self) -> None:
        """Start no more rounds (the one in flight, if any, ends in the spare buffer)."""
        with self._cond:
            self._stopped = True
            del self._queue[1 if self._busy else 0:]
            self._cond.notify_all()

    def wait(self, timeout_s: float) -> bool:
        """Until every started round is done (True), failed or ``timeout_s`` passed."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while (self._queue or self._busy) and self.failed is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return self.failed is None

    def held(self) -> list[tuple[int, torch.Tensor]]:
        with self._cond:
            return sorted(self.replicas.items(), reverse=True)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                    if self._stopped and not self._queue:
                        return
                step, buffer, spec = self._queue[0]
                self._busy = True
            started = time.perf_counter()
            try:
                self._round(buffer, spec)
            except Exception as error:  # a dead peer: the trigger is coming
                with self._cond:
                    self.failed = repr(error)
                    self._busy = False
                    self._cond.notify_all()
                self._log(f"replication stopped at step {step}: {error!r}")
                return
            with self._cond:
                self._queue.pop(0)
                self._busy = False
                self.round_s.append(time.perf_counter() - started)
                self._cond.notify_all()

    def _round(self, buffer: torch.Tensor, spec: list[dict]) -> None:
        if self.source_spec is None:  # once: what the source's buffers hold
            specs: list[Any] = [None] * dist.get_world_size(self.group)
            dist.all_gather_object(specs, spec, group=self.group)
            self.source_spec = specs[dist.get_group_rank(self.group, self.source)]
            size = self.source_spec[-1]["end"] if self.source_spec else _HEADER
            self._buffers = [torch.empty(size, dtype=torch.uint8) for _ in range(3)]
        with self._cond:
            busy = {id(b) for b in self.replicas.values()}
        spare = next(b for b in self._buffers if id(b) not in busy)
        requests = [dist.isend(buffer, self.peer, group=self.group),
                    dist.irecv(spare, self.source, group=self.group)]
        for request in requests:
            request.wait()
        step = _Packer.step_of(spare)
        with self._cond:
            self.replicas[step] = spare
            for old in sorted(self.replicas)[:-2]:
                del self.replicas[old]

    def parts(self) -> list[Part]:
        """The replicas held, as parts of the source's name."""
        return [Part(part_name(self.source), step, *_unpack(self.source_spec or [], buffer))
                for step, buffer in self.held()]


def _ring(hosts: list[str]) -> tuple[list[int], list[int]]:
    """peer[r] (who keeps rank r's replica) and source[r] (whose replica r keeps): the
    same local rank on the next node, so that a node's shards live on another node.
    One node: the next rank (a node loss then loses both; said in the log)."""
    world = len(hosts)
    nodes = list(dict.fromkeys(hosts))
    order = sorted(range(world), key=lambda r: (nodes.index(hosts[r]), r))
    shift = world // len(nodes) if len(nodes) > 1 else 1
    peer, source = [0] * world, [0] * world
    for index, rank in enumerate(order):
        target = order[(index + shift) % world]
        peer[rank], source[target] = target, rank
    return peer, source


class TorchCheckpointer(Checkpointer):
    """See the module docstring. Create it in the main thread, before
    ``init_process_group`` and before starting other threads; ``register``,
    ``restore``, ``checkpoint`` are collective (every rank calls them)."""

    def __init__(self, directory: str | Path, *, replicate: bool = True,
                 grace_s: float = 3.0, replication_timeout_s: float = 60.0,
                 periodic_timeout_s: float = 1800.0, **options):
        if options.get("periodic_seconds"):
            # Every rank writes its own part: they must agree on which steps, without
            # talking. Clocks do not; step counts do.
            raise CheckpointError("sharded checkpoints are periodic in steps: use "
                                  "periodic_steps, not periodic_seconds")
        super().__init__(directory, **options)
        self.replicate, self.grace_s = replicate, grace_s
        self.replication_timeout_s = replication_timeout_s
        self.periodic_timeout_s = periodic_timeout_s
        self._model = None
        self._optimizers: tuple = ()
        self._data = None
        self._rng = True
        self._extra: Callable[[], Any] | None = None
        self._group = None
        self._sharded = False
        self._replicator: _Replicator | None = None
        self._ring: list[_Snapshot | None] = [None, None]
        self._periodic: _Snapshot | None = None
        self._pin = False
        self.restored: dict[str, Any] | None = None
        #: (step, the loop's state and module buffers at that step): see ``_step_state``
        self._at_step: tuple[int, tuple[dict, dict]] | None = None
        self.stall_s: list[float] = []  # the trainer's stall of each periodic checkpoint

    # ---------------------------------------------------------------- trainer API

    def register(self, model, optimizer=None, *, data=None, rng: bool = True,
                 extra: Callable[[], Any] | None = None) -> None:
        """What to checkpoint: ``model`` (plain, DDP or FSDP2), ``optimizer`` (one or a
        list), ``data`` (anything with ``state_dict``/``load_state_dict``: the sample
        position), the RNG states, ``extra()`` (objects). Collective."""
        self._model = model
        self._optimizers = tuple(optimizer) if isinstance(optimizer, (list, tuple)) \
            else ((optimizer,) if optimizer is not None else ())
        self._data, self._rng, self._extra = data, rng, extra
        self._pin = torch.cuda.is_available() and any(
            p.is_cuda for p in model.parameters())
        if dist.is_available() and dist.is_initialized():
            self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
            self._group = dist.new_group(backend="gloo")
        self._sharded = any(isinstance(p, DTensor) for p in model.parameters())
        if self._sharded and self.replicate and self.world_size > 1:
            hosts: list[Any] = [None] * self.world_size
            dist.all_gather_object(hosts, self.host, group=self._group)
            peer, source = _ring(hosts)
            if hosts[peer[self.rank]] == self.host:
                self._log(f"the replica of rank {self.rank} is kept on its own node "
                          f"{self.host}: a loss of that node loses both")
            group = dist.new_group(backend="gloo",
                                   timeout=timedelta(seconds=self.replication_timeout_s))
            self._replicator = _Replicator(group, peer[self.rank], source[self.rank],
                                           self._log)
            # Wait for the previous step's round before this step's backward can
            # reach a collective (see the module docstring).
            model.register_forward_hook(self._hold_backward)

    def restore(self, step: int | None = None) -> int:
        """Load the newest checkpoint that verifies (or exactly ``step``), resharded to
        this world size; return the step to resume from (0 when there is none).
        Collective. ``self.restored`` describes what was loaded."""
        candidates = [(s, path) for s, path in store.committed_steps(self.directory)
                      if step is None or s == step] if self.rank == 0 else None
        candidates = self._broadcast(candidates)
        skipped = []
        for candidate, path in candidates:
            reader = ShardedReader(path, candidate)
            try:
                self._load(reader)
                failure = None
            except Exception as error:  # noqa: BLE001 - DCP wraps every rank's error
                failure = _reason(error)
            # DCP's own steps fail on every rank at once; what follows them (applying
            # the state) could fail on one: all ranks take the same checkpoint or none.
            failures = [f for f in self._gather(failure) if f is not None]
            if failures:
                skipped.append((path.name, failures[0]))
                self._log(f"cannot restore {path.name}: {failures[0]}")
                continue
            shared = reader.parts[SHARED]
            self.restored = {
                "step": candidate, "path": str(path), "kind": shared.get("kind"),
                "world_size": shared["metadata"].get("world_size"),
                "writers": sorted({m.get("writer", {}).get("rank") for m in
                                   reader.parts.values()} - {None}),
                "skipped": skipped,
                "incomplete": [{"step": s, "tag": tag, "missing": missing} for s, tag, missing
                               in sharded.incomplete_after(self.directory, candidate)]}
            self._completed_step = self._last_periodic_step = candidate
            if self.triggered_enabled:
                self._at_step = (candidate, self._step_state())
            self._event("restore", step=candidate, kind=self.restored["kind"],
                        world_size_saved=self.restored["world_size"],
                        world_size=self.world_size, skipped=[why for _, why in skipped],
                        incomplete=self.restored["incomplete"])
            if self.rank == 0:
                self._log(describe(self.restored, self.world_size))
            return candidate
        if skipped:
            raise CheckpointError(f"no valid checkpoint in {self.directory}: " + "; ".join(
                f"{name}: {why}" for name, why in skipped))
        return 0

    @contextlib.contextmanager
    def update(self, step: int):
        if self._replicator is not None:
            self._wait_replication()
        with self._lock:
            yield
            snapshot = self._snapshot_ring(step) if self._replicator is not None else None
            if snapshot is None and self.triggered_enabled:
                self._at_step = (step, self._step_state())
            self._completed_step = step
        if snapshot is not None:
            self._replicator.start(step, snapshot.own, snapshot.own_packer.spec)

    def maybe_checkpoint(self) -> None:
        """The periodic checkpoint, every ``periodic_steps`` steps (every rank)."""
        step = self._completed_step
        if not self.periodic_steps or step is None or step == self._last_periodic_step \
                or step - (self._last_periodic_step or 0) < self.periodic_steps:
            return
        started = time.perf_counter()
        self.wait()  # the previous write: its buffers are about to be reused
        with self._lock:
            step = self._completed_step
            parts = self._snapshot_periodic(step)
        stall_s = time.perf_counter() - started
        self.stall_s.append(stall_s)
        self._last_periodic_step = step
        self._writer = threading.Thread(target=self._write_periodic, name="slurmkit-ckpt-writer",
                                        args=(step, parts, "periodic", stall_s), daemon=True)
        self._writer.start()

    def checkpoint(self, kind: str = "final") -> str | None:
        """Write the last completed step now, from every rank (collective); rank 0
        commits. Returns the commit's outcome on rank 0."""
        self.wait()
        with self._lock:
            step = self._completed_step
            if step is None or self._model is None:
                return None
            parts = self._parts_to_write(self._live_parts(step))
            return self._write_periodic(step, parts, kind, 0.0)

    # ---------------------------------------------------------------- internals

    def _gather(self, value) -> list:
        if self._group is None:
            return [value]
        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value, group=self._group)
        return values

    def _broadcast(self, value):
        if self._group is None:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0, group=self._group)
        return box[0]

    def _hold_backward(self, _module, _args, output) -> None:
        """Forward hook: make the backward of this output first wait for replication."""
        tensors = [t for t in _tensors(output) if t.requires_grad]
        if tensors:
            tensors[0].register_hook(lambda _grad: self._wait_replication())

    def _wait_replication(self) -> None:
        replicator = self._replicator
        if replicator.failed is None and not replicator.wait(self.replication_timeout_s):
            self._log(f"replication round not done after {self.replication_timeout_s:g} s: "
                      "going on without it")

    def _state(self) -> tuple[dict[str, Any], list[tuple[dict, Any, str]], tuple]:
        """The flat state (fqn -> tensor, DTensor or object), where each model and
        optimizer leaf sits, and the nested model and optimizer state dicts."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

        if self._optimizers:
            model_sd, optim_sd = get_state_dict(self._model, self._optimizers)
        else:
            model_sd, optim_sd = get_model_state_dict(self._model), {}
        flat: dict[str, Any] = {}
        places: list[tuple[dict, Any, str]] = []
        _flatten("model", model_sd, flat, places)
        _flatten("optim", optim_sd, flat, places)
        flat.update(self._loop_state())
        return flat, places, (model_sd, optim_sd)

    def _loop_state(self) -> dict[str, Any]:
        """The state the training loop moves outside ``optimizer.step``: the data
        position, the RNG states, ``extra()``."""
        flat: dict[str, Any] = {}
        if self._data is not None:
            flat["data"] = self._data.state_dict()
        if self._rng:
            flat["rng.torch"] = torch.get_rng_state()
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                flat["rng.cuda"] = torch.cuda.get_rng_state()
            kind, key, position, has_gauss, gauss = np.random.get_state()
            flat["rng.numpy"] = (kind, key.tolist(), position, has_gauss, gauss)
            flat["rng.python"] = random.getstate()
        if self._extra is not None:
            flat["extra"] = self._extra()
        return flat

    def _step_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """What a triggered checkpoint written from the live state needs as it was when
        the step completed (without a snapshot ring: DDP, or FSDP without replicas).
        Weights and optimizer state change only inside ``update``; the loop's own
        state and module buffers (BatchNorm statistics: the next forward updates them)
        do not: a copy of them, by value. Small: no weights."""
        loop = {fqn: value.clone() if isinstance(value, torch.Tensor) else copy.deepcopy(value)
                for fqn, value in self._loop_state().items()}
        # By the module's own buffer names: a forward may replace a buffer rather than
        # update it (new storage, and a freed address another buffer may then take).
        buffers = {name: buffer.detach().clone()
                   for name, buffer in self._model.named_buffers() if buffer.numel() > 0}
        return loop, buffers

    def _split(self, flat: Mapping[str, Any]):
        """(own shard entries, shared tensor entries, shared objects)."""
        own, shared, objects = [], [], {}
        for fqn, value in flat.items():
            if isinstance(value, DTensor):
                for chunk in value.__create_chunk_list__():
                    own.append((fqn, value.to_local(), tuple(chunk.offsets), tuple(value.shape)))
            elif isinstance(value, torch.Tensor):
                shared.append((fqn, value, (0,) * value.dim(), tuple(value.shape)))
            else:
                objects[fqn] = value
        return own, shared, objects

    def _take_snapshot(self, slot: _Snapshot | None, step: int, with_shared: bool = True
                       ) -> _Snapshot:
        own, shared, objects = self._split(self._state()[0])
        if not self._sharded:
            own = []
        if not with_shared:
            shared, objects = [], {}
        own_packer, shared_packer = _Packer(own), _Packer(shared)
        if slot is None or not slot.fits(own_packer, shared_packer):
            slot = _Snapshot(own_packer, shared_packer, self._pin)
        slot.own_packer.pack(step, [t for _, t, _, _ in own], slot.own)
        slot.shared_packer.pack(step, [t for _, t, _, _ in shared], slot.shared)
        slot.objects = {fqn: _serialize(value) for fqn, value in objects.items()}
        slot.step, slot.with_shared = step, with_shared
        return slot

    def _snapshot_ring(self, step: int) -> _Snapshot:
        index = step % 2
        self._ring[index] = self._take_snapshot(self._ring[index], step)
        return self._ring[index]

    def _snapshot_periodic(self, step: int) -> list[Part]:
        """Rank 0 copies the shared part too (it writes it); every rank its shard."""
        if not self._sharded and self.rank != 0:
            return []  # nothing to write (DDP: rank 0 writes the whole state)
        self._periodic = self._take_snapshot(self._periodic, step, with_shared=self.rank == 0)
        return self._periodic.parts(self.rank, self._sharded)

    def _live_parts(self, step: int) -> list[Part]:
        flat = self._state()[0]
        at_step = self._at_step
        if at_step is not None and at_step[0] == step:
            # Between two updates the loop has moved on (the next batch drawn, the
            # buffers of the next forward): the completed step's copies replace them.
            loop, buffers = at_step[1]
            flat.update(loop)
            # The state dict holds the module's buffers under names that depend on the
            # wrapper: they are found by where each buffer is now (address, shape, dtype).
            kept = {(now.data_ptr(), now.shape, now.dtype): buffers[name]
                    for name, now in self._model.named_buffers() if name in buffers}
            for fqn, value in flat.items():
                if isinstance(value, torch.Tensor) and not isinstance(value, DTensor) \
                        and value.numel() > 0:
                    saved = kept.get((value.data_ptr(), value.shape, value.dtype))
                    if saved is not None and saved.shape == value.shape:
                        flat[fqn] = saved
        own, shared, objects = self._split(flat)
        values, metadata = _live_values(shared)
        _with_objects(values, metadata, objects)
        parts = [Part(SHARED, step, values, metadata)]
        if self._sharded:
            values, metadata = _live_values(own)
            parts.append(Part(part_name(self.rank), step, values, metadata))
        return parts

    def _parts_to_write(self, parts: list[Part]) -> list[Part]:
        """Rank 0 writes the shared part; each rank its own shard."""
        return [part for part in parts if part.name != SHARED or self.rank == 0]

    @property
    def required(self) -> tuple[str, ...]:
        return sharded.required_parts(self.world_size, self._sharded)

    def _info(self, kind: str) -> dict[str, Any]:
        return {"kind": kind, "run": self.run, "attempt": self.attempt, "job_id": self.job_id,
                "writer": {"host": self.host, "rank": self.rank}}

    def _metadata(self, part: Part) -> Part:
        return Part(part.name, part.step, part.values,
                    {**part.metadata, "world_size": self.world_size})

    def _write_periodic(self, step: int, parts: list[Part], kind: str, stall_s: float
                        ) -> str | None:
        tag = f"{kind[:3]}-{self.run}-{self.attempt}"
        started = time.perf_counter()
        try:
            if self._fenced():
                return "fenced"
            written = 0
            for part in parts:
                written += sharded.write_part(self.directory, tag, self._metadata(part),
                                              required=self.required,
                                              info=self._info(kind)).bytes_written
            if self.rank != 0:
                if parts:
                    self._event("checkpoint-part", kind=kind, step=step, bytes=written,
                                parts=[part.name for part in parts])
                return None
            outcome = sharded.wait_and_commit(self.directory, step, tag, self.required,
                                              timeout_s=self.periodic_timeout_s,
                                              fenced=self._fenced)
            if outcome == "committed":
                store.retain(self.directory, self.keep)
            self._event("checkpoint", kind=kind, step=step, bytes=written,
                        write_s=round(time.perf_counter() - started, 4),
                        stall_s=round(stall_s, 4), committed=outcome == "committed",
                        outcome=outcome, parts=len(self.required))
            return outcome
        except Exception as error:
            self._event("checkpoint-failed", kind=kind, step=step, error=repr(error))
            self._log(f"{kind} checkpoint of step {step} failed: {error!r}")
            return "failed"

    def _holdings(self) -> list[Part]:
        """Everything this survivor holds: its snapshots of the last two steps (or its
        live state) and the replicas of its source's shard."""
        ring = [slot for slot in self._ring if slot is not None and slot.step is not None]
        if ring:
            parts = [part for slot in ring for part in slot.parts(self.rank, self._sharded)]
        else:
            parts = self._live_parts(self._completed_step)
        if self._replicator is not None:
            parts += self._replicator.parts()
        return [self._metadata(part) for part in parts]

    def _write_triggered(self) -> str:
        """The survivors' checkpoint: this rank's parts and replicas, no collectives."""
        if not self._lock.acquire(timeout=self.lock_timeout_s):
            self._event("checkpoint-failed", kind="triggered",
                        error="the update window did not close in time")
            return "failed"
        try:
            if self._completed_step is None or self._model is None:
                return "nothing"
            if self._fenced():
                return "fenced"
            started = time.perf_counter()
            if self._replicator is not None:
                self._replicator.stop()  # no new round may reuse a buffer we write from
            holdings = self._holdings()
            result = sharded.write_survivors(
                self.directory, f"trig-{self.run}-{self.attempt}", holdings,
                required=self.required, info=self._info("triggered"), grace_s=self.grace_s,
                owner={"host": self.host, "rank": self.rank}, fenced=self._fenced)
            self._saved_step = result.step
            held = sorted({(part.name, part.step) for part in holdings})
            fields = dict(kind="triggered", step=result.step, bytes=result.bytes_written,
                          write_s=round(time.perf_counter() - started, 4),
                          written=[f"{name}@{step}" for name, step in result.written],
                          held=[f"{name}@{step}" for name, step in held])
            if result.outcome == "committed":
                store.retain(self.directory, self.keep)
                self._event("checkpoint", committed=True, **fields)
            elif result.outcome == "by-peer":
                self._event("checkpoint-by-peer", **fields)
            elif result.outcome == "incomplete":
                missing = {str(step): names for step, names in result.missing.items()}
                self._event("checkpoint-incomplete", missing=missing, **fields)
                self._log("triggered checkpoint incomplete: " + "; ".join(
                    f"step {step} lacks {', '.join(names)}" for step, names in missing.items())
                    + (" (replication is off)" if self._sharded and not self.replicate else "")
                    + ": the next run resumes from the last periodic checkpoint")
            self._log(f"triggered checkpoint: {result.outcome}"
                      + (f" step {result.step}" if result.step is not None else ""))
            return result.outcome
        finally:
            if not self.exit_on_trigger:
                self._lock.release()

    def _load(self, reader: ShardedReader) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict

        kept, places, (model_sd, optim_sd) = self._state()
        # Tensors are loaded in place (into the model's and optimizer's own), objects
        # replace their placeholders in ``kept``.
        dcp.load(kept, storage_reader=reader, planner=_planner(), process_group=self._group)
        for parent, key, fqn in places:
            parent[key] = kept[fqn]
        if self._optimizers:
            set_state_dict(self._model, self._optimizers, model_state_dict=model_sd,
                           optim_state_dict=optim_sd)
        else:
            set_model_state_dict(self._model, model_sd)
        if self._data is not None:
            self._data.load_state_dict(kept["data"])
        if "rng.torch" in kept:
            torch.set_rng_state(kept["rng.torch"])
        if "rng.cuda" in kept and torch.cuda.is_available():
            torch.cuda.set_rng_state(kept["rng.cuda"])
        if "rng.numpy" in kept:
            kind, key, position, has_gauss, gauss = kept["rng.numpy"]
            np.random.set_state((kind, np.asarray(key, dtype=np.uint32), position, has_gauss,
                                 gauss))
        if "rng.python" in kept:
            random.setstate(_tuples(kept["rng.python"]))
        self._restored_extra = kept.get("extra")

    @property
    def restored_extra(self) -> Any:
        """What ``extra()`` returned when the restored checkpoint was written."""
        return getattr(self, "_restored_extra", None)


def _planner():
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    class Planner(DefaultLoadPlanner):
        """DCP's planner (it reshards), on our flat state as it is; optional leaves
        (the RNG of a device the checkpoint did not use, ``extra``) are dropped when
        the checkpoint lacks them."""

        def set_up_planner(self, state_dict, metadata=None, is_coordinator=False):
            for fqn in [fqn for fqn in state_dict if fqn.startswith(_OPTIONAL)
                        and fqn not in metadata.state_dict_metadata]:
                del state_dict[fqn]
            super().set_up_planner(state_dict, metadata, is_coordinator)

    return Planner(flatten_state_dict=False, flatten_sharded_tensors=False)


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def _tensors(value) -> Iterable[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)


def _reason(error: BaseException) -> str:
    """One line for a failed load: DCP's CheckpointException wraps each rank's error."""
    failures = getattr(error, "failures", None)
    if isinstance(failures, Mapping) and failures:
        rank, failure = sorted(failures.items())[0]
        inner = getattr(failure, "args", [failure])
        return f"rank {rank}: {inner[0] if inner else failure}"
    return str(error) or repr(error)


def describe(restored: Mapping[str, Any], world_size: int) -> str:
    """"restored step 57 (triggered, 8 ranks -> 6) from ...; passed over: ..."."""
    text = (f"restored step {restored['step']} ({restored['kind']}, "
            f"{restored['world_size']} ranks -> {world_size}) from {restored['path']}")
    passed = [f"{name} ({why})" for name, why in restored["skipped"]]
    passed += [f"step {item['step']} {item['tag'].split('-')[0]} (incomplete: "
               f"{', '.join(item['missing'])} missing)" for item in restored["incomplete"]]
    return text + ("; passed over " + "; ".join(passed) if passed else "")


class ShardedReader(StorageReader):
    """``torch.distributed.checkpoint`` storage reader for a sharded checkpoint of
    ``slurmkit.ckpt.sharded``: DCP's planner asks for the pieces each rank needs in
    its own layout (resharding), the reader verifies (CRC-32) and serves them. Also
    usable by hand: ``dcp.load(state_dict, storage_reader=ShardedReader(path, step))``."""

    def __init__(self, path: str | Path, step: int):
        super().__init__()
        self.path, self.step = Path(path), step
        self.parts: dict[str, dict[str, Any]] = {}
        self._where: dict[tuple[str, tuple], tuple[str, str, dict]] = {}

    def reset(self, checkpoint_id=None) -> None:
        pass

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id) -> bool:
        return False

    def read_metadata(self) -> Metadata:
        self.parts = sharded.read_parts(self.path, self.step)
        tensors: dict[str, TensorStorageMetadata] = {}
        objects: dict[str, BytesStorageMetadata] = {}
        for name, manifest in self.parts.items():
            metadata = manifest["metadata"]
            for fqn, entry in metadata.get("tensors", {}).items():
                offsets = tuple(entry["offsets"])
                if (fqn, offsets) in self._where:
                    continue  # the same chunk in two parts (a replicated DTensor)
                self._where[(fqn, offsets)] = (name, entry["file"], entry)
                md = tensors.setdefault(fqn, TensorStorageMetadata(
                    properties=TensorProperties(dtype=_dtype(entry["dtype"])),
                    size=torch.Size(entry["global_shape"]), chunks=[]))
                md.chunks.append(ChunkStorageMetadata(offsets=torch.Size(offsets),
                                                      sizes=torch.Size(entry["shape"])))
            for fqn, file in metadata.get("objects", {}).items():
                self._where.setdefault((fqn, ()), (name, file, {}))
                objects[fqn] = BytesStorageMetadata()
        return Metadata(state_dict_metadata={**tensors, **objects})

    def set_up_storage_reader(self, metadata: Metadata, is_coordinator: bool) -> None:
        pass

    def prepare_local_plan(self, plan):
        return plan

    def prepare_global_plan(self, plans):
        return plans

    def read_data(self, plan, planner):
        # Every part this rank reads is verified before anything is copied.
        wanted = {self._locate(item)[0] for item in plan.items}
        loaded = {name: store.load_dir(self.path, name, self.step)[1] for name in sorted(wanted)}
        for item in plan.items:
            name, file, entry = self._locate(item)
            data = loaded[name][file]
            if item.type == LoadItemType.BYTE_IO:
                planner.load_bytes(item, io.BytesIO(data))
                continue
            stored = torch.from_numpy(data).view(_dtype(entry["dtype"])).reshape(entry["shape"])
            for dim, (offset, length) in enumerate(zip(item.storage_offsets, item.lengths,
                                                       strict=True)):
                stored = stored.narrow(dim, offset, length)
            target = planner.resolve_tensor(item).detach()
            if target.shape != stored.shape:
                raise CheckpointError(f"{item.dest_index.fqn}: stored piece {tuple(stored.shape)}"
                                      f" does not fit {tuple(target.shape)}")
            target.copy_(stored)
            planner.commit_tensor(item, target)
        future = torch.futures.Future()
        future.set_result(None)
        return future

    def _locate(self, item) -> tuple[str, str, dict]:
        index = item.storage_index
        key = (index.fqn, tuple(index.offset) if index.offset is not None else ())
        try:
            return self._where[key]
        except KeyError:
            raise CheckpointError(f"no stored piece of {index.fqn} at {key[1]}") from None


def read_full(path: str | Path, step: int) -> dict[str, Any]:
    """Every tensor of a sharded checkpoint gathered whole (and every object), on one
    process without collectives: for tests, conversions and inspection."""
    reader = ShardedReader(path, step)
    reader.read_metadata()
    parts = {name: store.load_dir(reader.path, name, step)[1] for name in reader.parts}
    full: dict[str, Any] = {}
    for (fqn, offsets), (name, file, entry) in reader._where.items():
        data = parts[name][file]
        if not entry:
            full[fqn] = torch.load(io.BytesIO(data), weights_only=False)
            continue
        dtype = _dtype(entry["dtype"])
        tensor = full.setdefault(fqn, torch.empty(entry["global_shape"], dtype=dtype))
        if not data.size:
            continue  # an empty shard (uneven sharding)
        piece = tensor
        for dim, (offset, length) in enumerate(zip(offsets, entry["shape"], strict=True)):
            piece = piece.narrow(dim, offset, length)
        piece.copy_(torch.from_numpy(data).view(dtype).reshape(entry["shape"]))
    return full
