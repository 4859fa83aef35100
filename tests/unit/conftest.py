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


#: The topology of the captured four nodes (scontrol_nodes.json): two leaves of two.
TOPOLOGY_TEXT = ("SwitchName=leaf1 Level=0 LinkSpeed=1 Nodes=c[1-2]\n"
                 "SwitchName=leaf2 Level=0 LinkSpeed=1 Nodes=c[3-4]\n"
                 "SwitchName=spine Level=1 LinkSpeed=1 Nodes=c[1-4] Switches=leaf[1-2]\n")


def fake_slurm(data, *, job_id: int = 4242, sbatch_stderr: str = "",
               sacct: str = '{"jobs": []}', events: str = ""):
    """A responder for RecordingRunner: the captured nodes (c4 half busy), the
    topology above, ``sacct``'s and ``sacctmgr``'s output (no failures unless
    given), and sbatch answering ``job_id``."""
    from slurmkit.slurm.runner import CommandResult

    def respond(argv):
        if argv[:3] == ("scontrol", "show", "nodes"):
            return CommandResult(argv, 0, data("scontrol_nodes.json"), "", "fake")
        if argv[:3] == ("scontrol", "show", "topology"):
            return CommandResult(argv, 0, TOPOLOGY_TEXT, "", "fake")
        if argv[0] == "sacct":
            return CommandResult(argv, 0, sacct, "", "fake")
        if argv[0] == "sacctmgr":
            return CommandResult(argv, 0, events, "", "fake")
        if argv[:2] == ("sbatch", "--parsable"):
            return CommandResult(argv, 0, f"{job_id}\n", sbatch_stderr, "fake")
        return CommandResult(argv, 1, "", "unexpected command", "fake")

    return respond


@pytest.fixture
def slurm(monkeypatch, data):
    """The CLI against the fake cluster (``fake_slurm``); the runner records the calls."""
    from slurmkit.cli._context import Connection
    from slurmkit.slurm.runner import RecordingRunner

    runner = RecordingRunner(fake_slurm(data))
    monkeypatch.setattr(Connection, "runner", lambda self: runner)
    monkeypatch.setattr("slurmkit.cli.submit._have_slurm", lambda: True)
    return runner
