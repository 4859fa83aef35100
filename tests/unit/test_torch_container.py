"""The PyTorch checks (tests/unit/torch_inner.py), run inside a container of the node
image: Debian's python3-torch is installed there, not on the host. They fail, never
skip, when docker or the image is missing: ``make test`` builds the image first
(``python -m slurmkit.testing.cluster up``); for ``make test-unit`` alone, build it
with ``python -m slurmkit.testing.cluster build``. SLURMKIT_NODE_IMAGE names another
image to use."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from slurmkit.testing.cluster import base_image_tag, node_image_tag

REPO = Path(__file__).resolve().parents[2]
INNER = Path(__file__).with_name("torch_inner.py")
ALL_CHECKS = [node.name for node in ast.parse(INNER.read_text()).body
              if isinstance(node, ast.FunctionDef) and node.name.startswith("check_")]
#: The examples end to end (torchrun, srun-style rendezvous, the FSDP example losing a
#: node): the same scenarios as tests/cluster/test_torch.py, so they run with it in
#: `make test-slow` (tests/unit/test_torch_examples.py), not in `make test`.
SLOW_CHECKS = ("check_examples_under_torchrun_and_srun_style_rendezvous",
               "check_the_fsdp_example_survives_a_killed_node")
CHECKS = [name for name in ALL_CHECKS if name not in SLOW_CHECKS]
TIMEOUT_S = 900

# One container for every check: these tests run on one xdist worker.
pytestmark = pytest.mark.xdist_group("torch-container")


def node_image() -> str:
    if os.environ.get("SLURMKIT_NODE_IMAGE"):
        return os.environ["SLURMKIT_NODE_IMAGE"]
    return node_image_tag(os.environ.get("SLURMKIT_BASE_IMAGE") or base_image_tag())


@pytest.fixture(scope="module")
def results() -> dict[str, dict]:
    return run_checks(CHECKS)


def run_checks(checks: list[str]) -> dict[str, dict]:
    """Run ``checks`` of torch_inner.py in one container; their outcomes by name."""
    if shutil.which("docker") is None:
        pytest.fail("docker is not installed: the torch checks run in the node image",
                    pytrace=False)
    image = node_image()
    probe = subprocess.run(["docker", "image", "inspect", image], capture_output=True,
                           text=True)
    if probe.returncode != 0:
        pytest.fail(f"node image {image} is missing (the torch checks run in it): build it "
                    "with `python -m slurmkit.testing.cluster build` (make test does)",
                    pytrace=False)
    # The default network, not --network none: gloo and torchrun's agents find their
    # address from the host name, which does not resolve without one (torchrun hung).
    # An eighth of the default CPU weight: the cluster tests beside it (make test), the
    # longer chain, keep the CPU their trainers and slurmd heartbeats need; idle CPU is
    # still all ours.
    result = subprocess.run(
        ["docker", "run", "--rm", "--cpu-shares=128", "--entrypoint", "python3",
         "-v", f"{REPO}:/opt/slurmkit:ro", "-w", "/opt/slurmkit", image,
         "-m", "tests.unit.torch_inner", *checks],
        capture_output=True, text=True, timeout=TIMEOUT_S)
    found = {}
    for line in result.stdout.splitlines():
        if line.startswith("{"):
            outcome = json.loads(line)
            found[outcome["check"]] = outcome
    if not found:
        pytest.fail(f"the container ran no check (exit {result.returncode}):\n"
                    f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}", pytrace=False)
    return found


def test_the_inner_checks_are_found():
    assert len(CHECKS) >= 5 and set(SLOW_CHECKS) < set(ALL_CHECKS), ALL_CHECKS


@pytest.mark.parametrize("name", CHECKS)
def test_in_the_node_image(results, name):
    outcome = results.get(name)
    assert outcome is not None, f"{name} did not report"
    assert outcome["ok"], outcome.get("error")
