"""The PyTorch examples end to end in the node image (tests/unit/torch_inner.py's
``SLOW_CHECKS``): under torchrun and srun-style rendezvous, and the FSDP example losing a
node. Run by `make test-slow` beside tests/cluster/test_torch.py, which runs the same
examples on the cluster; `make test` runs the other torch checks
(tests/unit/test_torch_container.py)."""

from __future__ import annotations

import pytest

from tests.unit.test_torch_container import SLOW_CHECKS, run_checks

pytestmark = pytest.mark.xdist_group("torch-container")


@pytest.fixture(scope="module")
def results() -> dict[str, dict]:
    return run_checks(list(SLOW_CHECKS))


@pytest.mark.parametrize("name", SLOW_CHECKS)
def test_in_the_node_image(results, name):
    outcome = results.get(name)
    assert outcome is not None, f"{name} did not report"
    assert outcome["ok"], outcome.get("error")
