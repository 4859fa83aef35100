from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"


@pytest.fixture(autouse=True, scope="session")
def _private_home_dirs(tmp_path_factory):
    """Unit tests never write into (or read from) the real home: the Jinja bytecode
    cache goes to XDG_CACHE_HOME under pytest's temporary directory, and the user's
    own templates (~/.config/slurmkit/templates) cannot change golden output."""
    from slurmkit import render

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        patch.setattr(render, "USER_TEMPLATES", tmp_path_factory.mktemp("no-user-templates"))
        yield


@pytest.fixture
def data():
    """Read a captured Slurm output from tests/unit/data (captured on docker-slurm,
    Slurm 24.11.5)."""
    return lambda name: (DATA / name).read_text(encoding="utf-8")



@pytest.fixture
def slurm(monkeypatch, data):
    """The CLI against the fake cluster (``fakes.fake_slurm``); the runner records the
    calls."""
    from tests.unit.fakes import fake_slurm, use_fake_slurm

    return use_fake_slurm(monkeypatch, fake_slurm(data))
