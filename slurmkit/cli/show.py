"""``slurmkit show``: what Slurm knows, parsed, as a table or JSON."""

from __future__ import annotations

import click

from slurmkit import output
from slurmkit.slurm import hostlist

_json_option = click.option("--json", "as_json", is_flag=True,
                            help="Print the parsed records as JSON.")


@click.group()
def show() -> None:
    """Show nodes, partitions, jobs and accounting runs."""


@show.command()
@_json_option
@click.pass_obj
def nodes(connection, as_json: bool) -> None:
    """Compute nodes with their state, CPUs and GPUs."""
    records = connection.client().nodes()
    if as_json:
        click.echo(output.dumps(records))
        return
    click.echo(output.table(
        ["NODE", "STATE", "CPUS", "ALLOC", "GPUS", "GPUS_USED", "PARTITIONS", "REASON"],
        [(n.name, n.state, n.cpus, n.alloc_cpus, n.gpus, n.gpus_used, n.partitions, n.reason)
         for n in records]))


@show.command()
@_json_option
@click.pass_obj
def partitions(connection, as_json: bool) -> None:
    """Partitions with their nodes and limits."""
    records = connection.client().partitions()
    if as_json:
        click.echo(output.dumps(records))
        return
    click.echo(output.table(
        ["PARTITION", "STATE", "TIER", "MAX_TIME_MIN", "NODES", "QOS"],
        [(p.name, p.state, p.priority_tier, p.max_time_min or "unlimited",
          hostlist.compress(p.nodes), p.qos) for p in records]))


@show.command()
@_json_option
@click.option("-u", "--user", "users", multiple=True, help="Only these users' jobs.")
@click.option("-t", "--state", "states", multiple=True, help="Only jobs in these states.")
@click.option("-j", "--job", "job_ids", multiple=True, help="Only these job ids.")
@click.pass_obj
def jobs(connection, as_json: bool, users, states, job_ids) -> None:
    """Jobs in the queue, pending and running."""
    records = connection.client().jobs(users=users, states=states, job_ids=job_ids)
    if as_json:
        click.echo(output.dumps(records))
        return
    click.echo(output.table(
        ["JOBID", "NAME", "USER", "ACCOUNT", "PARTITION", "STATE", "NODES", "REASON"],
        [(j.display_id, j.name, j.user, j.account, j.partition, j.state,
          hostlist.compress(j.nodes) or j.node_count, j.reason) for j in records]))


@show.command()
@_json_option
@click.option("-S", "--since", default="now-1days", show_default=True,
              help="Start of the window (any sacct --starttime value).")
@click.option("-E", "--until", default=None, help="End of the window (sacct --endtime).")
@click.option("-j", "--job", "job_ids", multiple=True, help="Only these job ids.")
@click.option("-A", "--account", "accounts", multiple=True, help="Only these accounts.")
@click.option("-u", "--user", "users", multiple=True, help="Only these users.")
@click.option("--parsable", is_flag=True,
              help="Read sacct --parsable2 instead of --json (faster on huge windows).")
@click.pass_obj
def runs(connection, as_json: bool, since, until, job_ids, accounts, users, parsable) -> None:
    """Accounting records: every run of every job, requeued runs included."""
    client = connection.client()
    options = dict(since=since, until=until, job_ids=job_ids, accounts=accounts, users=users)
    records = list(client.accounting_parsable(**options) if parsable
                   else client.accounting(**options))
    if as_json:
        click.echo(output.dumps(records))
        return
    click.echo(output.table(
        ["JOBID", "RUN", "NAME", "USER", "ACCOUNT", "STATE", "EXIT", "ELAPSED_S", "NODES"],
        [(r.display_id, r.restarts, r.name, r.user, r.account, r.state,
          f"{r.exit_code}:{r.exit_signal or 0}", r.elapsed_s, hostlist.compress(r.nodes))
         for r in records]))
