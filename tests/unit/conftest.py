from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"


@pytest.fixture
def data():
    """Read a captured Slurm output from tests/unit/data (captured on docker-slurm,
    Slurm 24.11.5)."""
    return lambda name: (DATA / name).read_text(encoding="utf-8")
