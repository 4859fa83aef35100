"""SlurmClient: the one place that runs Slurm commands.

Each query is ``query_*`` (argv in, text out, through a Runner) plus a ``parse_*``
from ``slurmkit.slurm.parse``; the client only adds the judgement of exit statuses:
which failures mean "controller unreachable", which are Slurm refusing a request.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from slurmkit.errors import ControllerUnreachableError, ParseError, SlurmCommandError
from slurmkit.slurm import parse
from slurmkit.slurm.models import AccountingRecord, Job, Node, Partition
from slurmkit.slurm.runner import CommandResult, LocalRunner, Runner

#: Messages with which Slurm's clients say slurmctld or slurmdbd did not answer.
_UNREACHABLE = re.compile(
    r"Unable to contact slurm controller|Socket timed out on send/recv|"
    r"Connection refused|Zero Bytes were transmitted or received|"
    r"Problem talking to the database|Communication connection failure|"
    r"No route to host|Connection timed out|Unable to resolve",
    re.IGNORECASE,
)

#: Query timeout. Slurm's own clients retry for about 20 s (MessageTimeout x
#: retries) before they give up on an unreachable controller; leave them room.
DEFAULT_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class SubmitResult:
    job_id: int
    cluster: str | None
    stdout: str
    stderr: str


class SlurmClient:
    """Queries and submits through a Runner. Not thread-safe (runners are not)."""

    def __init__(self, runner: Runner | None = None, *, timeout_s: float = DEFAULT_TIMEOUT_S):
        self.runner = runner or LocalRunner()
        self.timeout_s = timeout_s

    # ---------------------------------------------------------------- plumbing

    def run(self, argv: Sequence[str], *, input_text: str | None = None,
            timeout_s: float | None = None) -> CommandResult:
        """Run argv; raise the right SlurmkitError when it fails."""
        result = self.runner.run(argv, timeout_s=timeout_s or self.timeout_s,
                                 input_text=input_text)
        if result.returncode != 0:
            error_class = (ControllerUnreachableError
                           if _UNREACHABLE.search(result.stderr) else SlurmCommandError)
            raise error_class(list(argv), result.returncode, result.stderr or result.stdout,
                              result.where)
        return result

    # ---------------------------------------------------------------- queries

    def query_nodes(self) -> str:
        return self.run(["scontrol", "show", "nodes", "--json"]).stdout

    def nodes(self) -> list[Node]:
        return parse.parse_nodes_json(self.query_nodes())

    def node_states(self) -> dict[str, frozenset[str]]:
        """{node: state flags} from ``sinfo --json`` (e.g. {"DOWN", "NOT_RESPONDING"})."""
        return parse.parse_sinfo_json(self.run(["sinfo", "--json"]).stdout)

    def query_partitions(self) -> str:
        return self.run(["scontrol", "show", "partitions", "--json"]).stdout

    def partitions(self) -> list[Partition]:
        return parse.parse_partitions_json(self.query_partitions())

    def query_jobs(self, *, job_ids: Iterable[int | str] = (), users: Iterable[str] = (),
                   states: Iterable[str] = ()) -> str:
        argv = ["squeue", "--json"]
        if job_ids := [str(job_id) for job_id in job_ids]:
            argv.append(f"--jobs={','.join(job_ids)}")
        if users := list(users):
            argv.append(f"--user={','.join(users)}")
        if states := list(states):
            argv.append(f"--states={','.join(states)}")
        return self.run(argv).stdout

    def jobs(self, **filters) -> list[Job]:
        return parse.parse_jobs_json(self.query_jobs(**filters))

    def accounting_argv(self, *, since: str | None = "now-1days", until: str | None = None,
                        job_ids: Iterable[int | str] = (), users: Iterable[str] = (),
                        accounts: Iterable[str] = (), partitions: Iterable[str] = (),
                        states: Iterable[str] = (), steps: bool = False,
                        json_output: bool = True) -> list[str]:
        """sacct argv for every run (``-D``) of every user's jobs (``-a``) in a window."""
        argv = ["sacct", "--duplicates", "--allusers"]
        argv.append("--json" if json_output else "--parsable2")
        if not json_output:
            argv += ["--noheader", f"--format={','.join(parse.ACCOUNTING_COLUMNS)}"]
        if not steps:
            argv.append("--allocations")
        if since:
            argv.append(f"--starttime={since}")
        if until:
            argv.append(f"--endtime={until}")
        for flag, values in (("--jobs", job_ids), ("--user", users), ("--accounts", accounts),
                             ("--partition", partitions), ("--state", states)):
            values = [str(value) for value in values]
            if values:
                argv.append(f"{flag}={','.join(values)}")
        return argv

    def accounting(self, **options) -> list[AccountingRecord]:
        """Accounting records, one per run, via ``sacct --json`` (exact job names)."""
        text = self.run(self.accounting_argv(json_output=True, **options)).stdout
        return parse.parse_accounting_json(text)

    def accounting_parsable(self, **options) -> Iterator[AccountingRecord]:
        """The same records via ``--parsable2`` (cheaper for very large windows)."""
        text = self.run(self.accounting_argv(json_output=False, **options)).stdout
        return parse.parse_accounting_parsable2(text.splitlines())

    def node_events_text(self, since: str = "now-1days") -> str:
        """slurmdbd's node state events (DOWN, DRAIN...) since ``since``."""
        return self.run(["sacctmgr", "--noheader", "--parsable2", "show", "event",
                         f"start={since}", "format=NodeName,TimeStart,TimeEnd,State,Reason"]
                        ).stdout

    def ping(self) -> bool:
        """True when the primary slurmctld answers."""
        text = self.run(["scontrol", "ping", "--json"]).stdout
        payload = parse.load_json(text, "scontrol ping --json", "pings")
        return any(item.get("responding") and item.get("pinged") == "UP"
                   for item in payload["pings"] if isinstance(item, dict))

    def topology_text(self) -> str:
        """``scontrol show topology``: one ``SwitchName=... Level=... Nodes=...`` line
        per switch (key=value, machine-readable; there is no --json for it)."""
        return self.run(["scontrol", "show", "topology"]).stdout

    # ---------------------------------------------------------------- actions

    def submit(self, script: str, args: Sequence[str] = ()) -> SubmitResult:
        """``sbatch --parsable [args]`` with the script on stdin; returns the job id.

        Slurm's own error message (e.g. an invalid account) is raised unchanged in a
        SlurmCommandError.
        """
        result = self.run(["sbatch", "--parsable", *args], input_text=script)
        first = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
        job_id, _, cluster = first.partition(";")
        if not job_id.isdigit():
            raise ParseError("sbatch --parsable output", "no job id", result.stdout)
        return SubmitResult(int(job_id), cluster or None, result.stdout, result.stderr)

    def cancel(self, job_ids: Iterable[int | str], *, signal: str | None = None,
               batch_only: bool = False) -> None:
        job_ids = [str(job_id) for job_id in job_ids]
        if not job_ids:
            return
        argv = ["scancel"]
        if signal:
            argv.append(f"--signal={signal}")
        if batch_only:
            argv.append("--batch")
        self.run([*argv, *job_ids])

    def requeue(self, job_id: int | str) -> None:
        self.run(["scontrol", "requeue", str(job_id)])
