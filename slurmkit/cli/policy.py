"""``slurmkit policy check|simulate|install|uninstall|show``."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from slurmkit.cli._paths import PathArg

DEFAULT_CONF_DIR = Path(os.environ.get("SLURMKIT_SLURM_CONF_DIR", "/etc/slurm"))
INSTALLED_POLICY = "slurmkit-policy.toml"


@click.group()
def policy() -> None:
    """Virtual GPU queues with guaranteed quotas that lend and reclaim capacity."""


@policy.command()
@click.argument("policy_file", type=PathArg(dir_okay=False))
@click.option("--module", type=PathArg(dir_okay=False),
              help="Also import this job_submit.py and check its entry points.")
def check(policy_file, module) -> None:
    """Validate POLICY_FILE (and the shim's policy module)."""
    from slurmkit.policy import config as config_module

    config = config_module.load(policy_file)
    if module:
        _check_module(module)
    ranks = sorted(config.classes.values(), key=lambda c: -c.rank)
    click.echo(f"{policy_file}: valid")
    click.echo("classes (borrowed work of a higher rank preempts lower ranks): " + ", ".join(
        f"{c.name} rank {c.rank} priority {c.priority} grace {c.grace_s}s" for c in ranks))
    for queue in config.queues.values():
        click.echo(f"queue {queue.name}: {queue.guaranteed_gpus} GPUs guaranteed, borrows up to "
                   f"{queue.borrow_limit_gpus}; classes {', '.join(queue.classes)}; users "
                   f"{', '.join(queue.users)}")


def _check_module(path: str) -> None:
    import importlib.util

    from slurmkit import files
    from slurmkit.errors import UserInputError

    # Refuse a FIFO, a device or a huge file before the import machinery reads it.
    files.read_text(path, "policy module")
    spec = importlib.util.spec_from_file_location("slurmkit_policy_check", path)
    if spec is None or spec.loader is None:
        raise UserInputError(f"{path}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        raise UserInputError(f"{path}: importing it fails: {type(error).__name__}: {error}") \
            from None
    missing = [name for name in ("job_submit", "job_modify")
               if not callable(getattr(module, name, None))]
    if missing:
        raise UserInputError(f"{path}: does not define {' and '.join(missing)}")


#: Largest job-description file (or stdin) simulate reads: a million descriptions.
MAX_JOBS_BYTES = 256 << 20


@policy.command()
@click.argument("policy_file", type=PathArg(dir_okay=False))
@click.argument("jobs", type=PathArg(dir_okay=False, allow_dash=True), default="-")
def simulate(policy_file, jobs) -> None:
    """Print the decision for each job description in JOBS (JSON lines; - = stdin)."""
    from slurmkit import files
    from slurmkit.errors import UserInputError
    from slurmkit.policy import config as config_module
    from slurmkit.policy.simulate import read_descriptions
    from slurmkit.policy.simulate import simulate as run

    config = config_module.load(policy_file)
    if jobs == "-":
        data = getattr(sys.stdin, "buffer", sys.stdin).read(MAX_JOBS_BYTES + 1)
        if len(data) > MAX_JOBS_BYTES:
            raise UserInputError(f"standard input holds more than {MAX_JOBS_BYTES} bytes "
                                 "of job descriptions; split it")
        text = files.decode(data, "standard input")
    else:
        text = files.read_text(jobs, "job description file", max_bytes=MAX_JOBS_BYTES)
    source = "standard input" if jobs == "-" else jobs
    for result in run(config, read_descriptions(text.splitlines(), source)):
        click.echo(json.dumps(result, sort_keys=True))


@policy.command()
@click.argument("policy_file", type=PathArg(dir_okay=False))
@click.option("--conf-dir", type=PathArg(file_okay=False), default=str(DEFAULT_CONF_DIR),
              show_default=True, help="Where slurm.conf lives (its Include policy.conf).")
@click.option("--cluster", default=None, help="Cluster name (default: slurm.conf's ClusterName).")
@click.option("--fail-mode", type=click.Choice(["closed", "open"]), default="closed",
              show_default=True, help="What the shim does while the policy cannot run.")
@click.option("--no-job-submit", is_flag=True,
              help="Configure queues and partitions without the job_submit/python plugin.")
@click.option("--reconfigure/--no-reconfigure", default=True, show_default=True,
              help="Run `scontrol reconfigure` afterwards.")
@click.option("--dry-run", is_flag=True, help="Print what would be written and run.")
@click.pass_obj
def install(connection, policy_file, conf_dir, cluster, fail_mode, no_job_submit, reconfigure,
            dry_run) -> None:
    """Install POLICY_FILE on the controller: slurm.conf fragment (policy.conf), the
    shim's module and config, QOS/accounts/associations through sacctmgr
    (idempotent), then `scontrol reconfigure`."""
    from slurmkit.policy import config as config_module
    from slurmkit.policy.install import install_policy

    config = config_module.load(policy_file)
    report = install_policy(connection.client(), config, Path(policy_file), Path(conf_dir),
                            cluster=cluster, fail_mode=fail_mode,
                            job_submit=not no_job_submit, reconfigure=reconfigure,
                            dry_run=dry_run)
    for line in report:
        click.echo(line)


@policy.command()
@click.option("--conf-dir", type=PathArg(file_okay=False), default=str(DEFAULT_CONF_DIR),
              show_default=True)
@click.option("--reconfigure/--no-reconfigure", default=True, show_default=True)
@click.pass_obj
def uninstall(connection, conf_dir, reconfigure) -> None:
    """Back to one plain partition and no job_submit plugin (accounts and QOS stay)."""
    from slurmkit.policy.install import uninstall_policy

    for line in uninstall_policy(connection.client(), Path(conf_dir), reconfigure=reconfigure):
        click.echo(line)


@policy.command()
@click.option("--policy", "policy_file", type=PathArg(dir_okay=False),
              default=str(DEFAULT_CONF_DIR / INSTALLED_POLICY), show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def show(connection, policy_file, as_json) -> None:
    """Live queues: guaranteed quota, GPUs in use, GPUs borrowed, jobs waiting."""
    from slurmkit import output
    from slurmkit.policy import config as config_module
    from slurmkit.policy.usage import queue_usage

    config = config_module.load(policy_file)
    rows = queue_usage(config, connection.client().jobs())
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(output.table(
        ["QUEUE", "GUARANTEED", "IN_USE", "BORROWED", "BORROW_LIMIT", "RUNNING", "PENDING"],
        [(r["queue"], r["guaranteed_gpus"], r["guaranteed_in_use_gpus"], r["borrowed_gpus"],
          r["borrow_limit_gpus"], r["running_jobs"], r["pending_jobs"]) for r in rows]))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(policy())
