"""Slurm-shaped flags for every JobSpec field, shared by ``submit`` and ``render``."""

from __future__ import annotations

import click

from slurmkit import spec as spec_module


class NodeRange(click.ParamType):
    name = "N|MIN-MAX"

    def convert(self, value, param, ctx):
        try:
            low, high = spec_module.parse_nodes(value)
        except ValueError as error:
            self.fail(f"{value!r}: {error}", param, ctx)
        return f"{low}-{high}" if high != low else str(low)


class TimeLimit(click.ParamType):
    name = "TIME"

    def convert(self, value, param, ctx):
        try:
            spec_module.parse_time_limit(value)
        except ValueError as error:
            self.fail(f"{value!r}: {error}", param, ctx)
        return value


class EnvAssignment(click.ParamType):
    name = "NAME=VALUE"

    def convert(self, value, param, ctx):
        try:
            return spec_module.parse_env_assignment(value)
        except ValueError as error:
            self.fail(f"{value!r}: {error}", param, ctx)


class MemoryMB(click.ParamType):
    """sbatch's --mem spelling (4000, 4000M, 64G, 1T) -> MB."""

    name = "SIZE[K|M|G|T]"

    def convert(self, value, param, ctx):
        text = str(value).strip().upper()
        units = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}
        number, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "M")
        try:
            mb = int(float(number) * units[unit])
        except ValueError:
            self.fail(f"{value!r}: expected a size like 4000, 4000M, 64G", param, ctx)
        if mb < 1:
            self.fail(f"{value!r}: must be at least 1M", param, ctx)
        return mb


#: (flag declarations, spec key, click kwargs)
SPEC_FLAGS = [
    (("--kind",), "kind", dict(type=click.Choice(spec_module.KINDS), help="Workload kind.")),
    (("-J", "--job-name"), "job_name", dict(help="Job name.")),
    (("-N", "--nodes"), "nodes", dict(type=NodeRange(), help="Nodes: N or elastic MIN-MAX.")),
    (("-p", "--partition"), "partition", dict(help="Partition(s).")),
    (("-t", "--time"), "time_limit", dict(type=TimeLimit(), help="Time limit (Slurm format).")),
    (("-A", "--account"), "account", dict(help="Account (queue). Env: SLURMKIT_ACCOUNT.")),
    (("-q", "--qos"), "qos", dict(help="QOS. Env: SLURMKIT_QOS.")),
    (("--gpus-per-node",), "gpus_per_node", dict(type=click.IntRange(0, 64), help="GPUs per node.")),
    (("--ntasks-per-node",), "ntasks_per_node", dict(type=click.IntRange(1), help="Tasks per node.")),
    (("-c", "--cpus-per-task"), "cpus_per_task", dict(type=click.IntRange(1), help="CPUs per task.")),
    (("--mem",), "mem_per_node_mb", dict(type=MemoryMB(), help="Memory per node (sbatch --mem).")),
    (("--exclusive/--shared",), "exclusive", dict(default=None, help="Whole nodes or shared.")),
    (("--requeue/--no-requeue",), "requeue", dict(default=None, help="Requeue on failure/preemption.")),
    (("-o", "--output"), "output", dict(help="Output file (a literal path; % is not a pattern).")),
    (("-D", "--chdir"), "chdir", dict(help="Working directory of the job.")),
    (("--constraint",), "constraint", dict(help="Node features.")),
    (("--signal",), "signal", dict(help="Warning signal before the time limit (never USR1).")),
    (("--signal-lead",), "signal_lead_s", dict(type=click.IntRange(1), help="Seconds of warning.")),
    (("--checkpoint-dir",), "checkpoint_dir", dict(help="Checkpoint directory (training).")),
    (("--launcher",), "launcher", dict(type=click.Choice(spec_module.LAUNCHERS), help="srun or torchrun (training).")),
    (("--nproc-per-node",), "nproc_per_node", dict(type=click.IntRange(1), help="torchrun processes per node.")),
    (("--log-dir",), "log_dir", dict(help="Per-run task logs (training).")),
    (("--replicas",), "replicas", dict(type=click.IntRange(1), help="Service replicas (inference).")),
    (("--port",), "port", dict(type=click.IntRange(1, 65535), help="Service port (inference).")),
    (("--array",), "array", dict(help="Array spec, e.g. 0-99%%10 (batch).")),
    (("--placement",), "placement", dict(type=click.Choice(spec_module.PLACEMENTS), help="auto: topology-aware; none: leave it to Slurm.")),
]


def spec_flags(function):
    """Add every spec flag, plus --export (repeatable) and the COMMAND after --."""
    function = click.argument("command", nargs=-1, type=click.UNPROCESSED)(function)
    function = click.option("--export", "exports", type=EnvAssignment(), multiple=True,
                            help="Export NAME=VALUE to the job (repeatable).")(function)
    for declarations, key, kwargs in reversed(SPEC_FLAGS):
        function = click.option(*declarations, key, **kwargs)(function)
    return function


def overrides_from_flags(params: dict) -> dict:
    """Flag values as spec keys (None = not given on the command line)."""
    overrides = {key: params.get(key) for _, key, _ in SPEC_FLAGS}
    if params.get("command"):
        overrides["command"] = list(params["command"])
    if params.get("exports"):
        overrides["env"] = list(params["exports"])
    return overrides


def merge_env(file_env, flag_env) -> list:
    merged = dict(file_env.items() if isinstance(file_env, dict) else file_env or ())
    merged.update(dict(flag_env))
    return list(merged.items())
