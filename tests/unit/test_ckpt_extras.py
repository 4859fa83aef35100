"""Resharding and plan. (The PyTorch adapter: test_torch_container.py.)"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from slurmkit.ckpt.reshard import reshard, shard, shard_bounds
from slurmkit.ckpt.store import CheckpointError
from slurmkit.errors import UserInputError
from slurmkit.plan import plan, rank_order


@given(st.integers(min_value=0, max_value=5000), st.integers(min_value=1, max_value=17),
       st.integers(min_value=1, max_value=17))
def test_reshard_preserves_the_buffer(length, old_world, new_world):
    buffer = np.arange(length, dtype=np.float64)
    old = [shard(buffer, old_world, rank) for rank in range(old_world)]
    new = [reshard(old, length, new_world, rank) for rank in range(new_world)]
    assert np.array_equal(np.concatenate(new), buffer)
    assert all(part.size <= -(-length // new_world) for part in new)


def test_a_missing_shard_is_an_error():
    buffer = np.arange(10.0)
    with pytest.raises(CheckpointError, match="a shard is missing"):
        reshard([shard(buffer, 3, 0), shard(buffer, 3, 2)], 10, 2, 0)
    with pytest.raises(CheckpointError):
        shard_bounds(10, 2, 2)


def test_plan_keeps_the_global_batch_when_nodes_are_lost():
    before = plan(8, gpus_per_node=2, model_gb=0.001, gpu_memory_gb=1, global_batch=48,
                  micro_batch=2)
    after = plan(6, gpus_per_node=2, model_gb=0.001, gpu_memory_gb=1, global_batch=48,
                 micro_batch=2)
    assert (before.dp, before.grad_accum) == (8, 3) and (after.dp, after.grad_accum) == (6, 4)
    for layout in (before, after):
        assert layout.dp * layout.micro_batch * layout.grad_accum == 48


def test_plan_at_scale_1000_to_900_gpus():
    kwargs = dict(gpus_per_node=8, model_gb=1200, gpu_memory_gb=80, global_batch=4096,
                  micro_batch=2)
    before, after = plan(1000, **kwargs), plan(900, **kwargs)
    for layout in (before, after):
        assert layout.tp <= 8 and 1200 / (layout.tp * layout.pp) <= 60
        assert layout.dp * layout.micro_batch * layout.grad_accum == 4096
        assert layout.gpus_used <= layout.gpus
    assert after.gpus_used >= 0.9 * 900 * 0.95


def test_plan_refuses_what_cannot_hold_the_model():
    with pytest.raises(UserInputError, match="at least 20 GPUs are needed"):
        plan(16, gpus_per_node=8, model_gb=1200, gpu_memory_gb=80, global_batch=4096,
             micro_batch=2)
    with pytest.raises(UserInputError, match="not a multiple"):
        plan(8, gpus_per_node=8, model_gb=1, gpu_memory_gb=80, global_batch=10, micro_batch=4)


def test_rank_order_groups_nodes_by_leaf():
    leaf_of = {"a1": "l1", "a2": "l1", "b1": "l2", "b2": "l2", "b3": "l2"}
    assert rank_order(["a1", "b1", "a2", "b2", "b3"], leaf_of, pp=2) == \
        ["b1", "b2", "b3", "a1", "a2"]
