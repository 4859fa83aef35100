"""``slurmkit goodput``: ETTR and where the rest of the GPU-hours went."""

from __future__ import annotations

import re
import sys

import click


@click.command()
@click.option("-S", "--since", default="now-7days", show_default=True,
              help="Start of the window (sacct --starttime).")
@click.option("-E", "--until", default=None, help="End of the window (sacct --endtime).")
@click.option("-A", "--account", "accounts", multiple=True, help="Only these queues (accounts).")
@click.option("-p", "--partition", "partitions", multiple=True, help="Only these partitions.")
@click.option("-j", "--job", "job_ids", multiple=True, callback=lambda ctx, param, values: [
    _job_id(value) for value in values], help="Only these jobs: 12 (a job, a whole array or het "
              "job), 12_3 (an array task), 7+1 (a het component).")
@click.option("--input", "input_path", type=click.Path(dir_okay=False, exists=True),
              help="A saved dump instead of live sacct: `sacct -D -X --json`, or `sacct -D -X "
                   "-P --format=...` with its header line (any column order).")
@click.option("--events", "events_dirs", multiple=True, type=click.Path(exists=True),
              help="Checkpoint directories (or a parent) with slurmkit events.jsonl files.")
@click.option("--policy", "policy_file", type=click.Path(dir_okay=False),
              help="A slurmkit policy TOML: its classes name the workload classes, and their "
                   "ranks say which jobs may preempt which.")
@click.option("--gpus-total", type=click.IntRange(1), default=None,
              help="GPU capacity for the utilisation plot (default: live node count).")
@click.option("--preempt-window", "window_s", type=click.IntRange(0, 86400), default=120,
              show_default=True,
              help="Seconds after a PREEMPTED run's end within which its preemptor starts on its "
                   "nodes (grace + KillWait); without one, the run is a spurious requeue.")
@click.option("--format", "output_format", type=click.Choice(["table", "json", "csv", "html"]),
              default="table", show_default=True)
@click.option("-o", "--output", "output_path", type=click.Path(dir_okay=False),
              help="Write to this file (default: stdout).")
@click.option("--progress/--no-progress", default=None,
              help="A progress bar on stderr while a dump is read (default: when stderr is a "
                   "terminal).")
@click.pass_obj
def goodput(connection, since, until, accounts, partitions, job_ids, input_path, events_dirs,
            policy_file, gpus_total, window_s, output_format, output_path, progress) -> None:
    """ETTR per job, queue, class and cluster; badput buckets; node failures and
    restarts in place; preemption cost; class utilisation; measured vs expected ETTR."""
    from slurmkit.goodput import analyse, write

    analysis = analyse(
        connection.client() if input_path is None else None, input_path=input_path,
        since=since, until=until, accounts=accounts, partitions=partitions, job_ids=job_ids,
        events_dirs=events_dirs, policy_file=policy_file, gpus_total=gpus_total,
        window_s=window_s, progress=sys.stderr.isatty() if progress is None else progress)
    stream = open(output_path, "w", encoding="utf-8", newline="") if output_path else \
        click.get_text_stream("stdout")
    try:
        write(analysis, output_format, stream)
        stream.flush()
    finally:
        if output_path:
            stream.close()
            click.echo(f"wrote {output_path}", err=True)


def _job_id(value: str) -> str:
    if not re.fullmatch(r"[0-9]{1,10}(?:_[0-9]{1,10}|\+[0-9]{1,10})?", value):
        raise click.BadParameter(f"{value!r} is not a job id: give 12, 12_3 (an array task) or "
                                 "7+1 (a het component)")
    return value
