"""Slurm-shaped flags for every JobSpec field, shared by ``submit`` and ``render``."""

from __future__ import annotations

import re

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


class SacctTime(click.ParamType):
    """A time sacct/sacctmgr understand (``now-1days``, ``2026-01-31T08:00``,
    ``midnight``), or ``off``: checked to be one plain word before it reaches them."""

    name = "TIME|off"

    def convert(self, value, param, ctx):
        text = str(value).strip()
        if not re.fullmatch(r"[A-Za-z0-9:/.+-]{1,64}", text, re.ASCII):
            self.fail(f"{value!r}: expected a sacct time such as now-1days, "
                      "2026-01-31T08:00:00 or midnight, or off", param, ctx)
        return text


#: Default lemon threshold (slurmkit.topology.health.DEFAULT_MIN_INCIDENTS; not
#: imported here to keep start-up light).
LEMON_FAILURES = 2


def health_options(function):
    """--health-since and --max-node-failures, shared by submit and topology."""
    function = click.option(
        "--max-node-failures", default=LEMON_FAILURES, show_default=True,
        type=click.IntRange(1, 1000),
        help="Blamed failures in the window that make a node a lemon (avoided and "
             "excluded). A node that failed once and is back in service is not one.")(function)
    function = click.option(
        "--health-since", default="now-1days", show_default=True, type=SacctTime(),
        help="Count node failures since then (sacct time); 'off' to ignore health.")(function)
    return function


#: Largest --mem, as the spec's mem_per_node_mb allows (1 EiB).
MAX_MEM_MB = 1 << 40


class MemoryMB(click.ParamType):
    """sbatch's --mem spelling (4000, 4000M, 64G, 1T) -> MB."""

    name = "SIZE[K|M|G|T]"

    def convert(self, value, param, ctx):
        if isinstance(value, int) and not isinstance(value, bool):
            text = str(value)
        else:
            text = str(value).strip().upper()
        units = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}
        number, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "M")
        # sbatch takes a decimal number and a unit: no inf, nan, exponents or digits of
        # other scripts (float() would take all of them).
        if not re.fullmatch(r"[0-9]{1,16}(\.[0-9]{1,6})?", number):
            self.fail(f"{value!r}: expected a size like 4000, 4000M, 64G", param, ctx)
        mb = int(float(number) * units[unit])
        if not 1 <= mb <= MAX_MEM_MB:
            self.fail(f"{value!r}: must be between 1M and {MAX_MEM_MB}M", param, ctx)
        return mb


def _flag(key: spec_module.Key) -> tuple[tuple[str, ...], dict]:
    """Click declarations and keyword arguments of a spec key's flag, from the spec's
    table: the type from its converter (the same bounds and choices), the help from
    its description."""
    kwargs: dict = {"help": key.describe()}
    convert = key.convert
    if key.flag_type == "memory":
        kwargs["type"] = MemoryMB()
    elif convert is spec_module.to_bool:
        kwargs["default"] = None  # neither flag given: the spec's default
    elif convert is spec_module.env_table:
        kwargs.update(type=EnvAssignment(), multiple=True)
    elif convert is spec_module.parse_nodes:
        kwargs["type"] = NodeRange()
    elif convert is spec_module.parse_time_limit:
        kwargs["type"] = TimeLimit()
    elif isinstance(convert, spec_module.IntRange):
        kwargs["type"] = click.IntRange(convert.low, convert.high)
    elif isinstance(convert, spec_module.Choice):
        kwargs["type"] = click.Choice(convert.choices)
    return (*key.flags, key.name), kwargs


#: (declarations with the parameter name last, click kwargs), one per spec key with flags
SPEC_FLAGS = [_flag(key) for key in spec_module.KEYS.values() if key.flags]


def spec_flags(function):
    """Add every spec flag, plus the COMMAND after --."""
    function = click.argument("command", nargs=-1, type=click.UNPROCESSED)(function)
    for declarations, kwargs in reversed(SPEC_FLAGS):
        function = click.option(*declarations, **kwargs)(function)
    return function


def overrides_from_flags(params: dict) -> dict:
    """Flag values as spec keys (None = not given on the command line)."""
    overrides = {declarations[-1]: params.get(declarations[-1])
                 for declarations, _ in SPEC_FLAGS}
    overrides["env"] = list(overrides["env"]) if overrides.get("env") else None
    if params.get("command"):
        overrides["command"] = list(params["command"])
    return overrides
