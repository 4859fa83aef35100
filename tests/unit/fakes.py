"""A fake Slurm for the CLI and submission unit tests: captured output of four nodes
(tests/unit/data/scontrol_nodes.json) on two leaf switches."""

from slurmkit.slurm.runner import CommandResult, RecordingRunner

#: The topology of the captured four nodes (scontrol_nodes.json): two leaves of two.
TOPOLOGY_TEXT = ("SwitchName=leaf1 Level=0 LinkSpeed=1 Nodes=c[1-2]\n"
                 "SwitchName=leaf2 Level=0 LinkSpeed=1 Nodes=c[3-4]\n"
                 "SwitchName=spine Level=1 LinkSpeed=1 Nodes=c[1-4] Switches=leaf[1-2]\n")


def fake_slurm(data, *, job_id: int = 4242, sbatch_stderr: str = "",
               sacct: str = '{"jobs": []}', events: str = ""):
    """A responder for RecordingRunner: the captured nodes (c4 half busy), the
    topology above, ``sacct``'s and ``sacctmgr``'s output (no failures unless
    given), and sbatch answering ``job_id``."""
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



def use_fake_slurm(monkeypatch, respond) -> RecordingRunner:
    """Every CLI command talks to ``respond``; returns the runner (its ``calls``)."""
    from slurmkit.cli._context import Connection

    runner = RecordingRunner(respond)
    monkeypatch.setattr(Connection, "runner", lambda self: runner)
    monkeypatch.setattr("slurmkit.cli.submit._have_slurm", lambda: True)
    return runner
