"""`make mutation`'s own configuration stays in step with the code it mutates: each
hand-made mutation finds its text exactly once (a rename had made one of them refuse to
run), the modules it names exist, and pyproject.toml mutates the same files."""

import tomllib
from pathlib import Path

import pytest

from slurmkit.testing.mutation import HAND_MUTATIONS, MODULES, documented_survivors

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("mutation", HAND_MUTATIONS, ids=lambda m: m.name)
def test_each_hand_mutation_applies_once(mutation):
    source = (REPO / mutation.path).read_text()
    for old, _new in mutation.edits:
        assert source.count(old) == 1, (mutation.name, old)
    for test in mutation.tests:
        assert (REPO / test).is_file(), test


def test_the_mutated_modules_are_those_pyproject_names():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mutmut"]
    assert sorted(config["only_mutate"]) == sorted(MODULES.values())
    assert all((REPO / path).is_file() for path in MODULES.values())


def test_documented_survivors_are_read_from_rows_with_a_reason():
    text = ("| `slurmkit.render.x_a__mutmut_1` | `a` → `b` | *message*: shown nowhere |\n"
            "| `slurmkit.render.x_a__mutmut_2` | `a` → `c` | TODO |\n")
    assert documented_survivors(text) == {"slurmkit.render.x_a__mutmut_1":
                                          "*message*: shown nowhere"}
