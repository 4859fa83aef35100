"""``python3 -m slurmkit.launch [options] -- COMMAND...``: the options of the
in-allocation restart loop (argparse: it starts in every job, so no Click import)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from slurmkit.launch import heartbeat
from slurmkit.launch.supervisor import SLURMD_PORT, LaunchConfig, Supervisor


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 < value < 86400:
        raise argparse.ArgumentTypeError("expected seconds between 0 and 86400")
    return value


def parse_args(argv: Sequence[str] | None = None) -> LaunchConfig:
    parser = argparse.ArgumentParser(
        prog="python3 -m slurmkit.launch",
        description="Run COMMAND as srun steps of this --no-kill job, restarting it in "
                    "place on the surviving nodes (or a spare) when a rank is lost.")
    parser.add_argument("--ckpt-dir", type=Path, default=os.environ.get("SLURMKIT_CKPT_DIR"),
                        help="checkpoint directory (events, fencing); default "
                             "$SLURMKIT_CKPT_DIR")
    parser.add_argument("--nodes-min", type=_positive_int, default=1,
                        help="fewer nodes than this: fall back to a requeue")
    parser.add_argument("--nodes-max", type=_positive_int, default=None,
                        help="train on at most this many nodes (the rest are spares)")
    parser.add_argument("--spares", type=_count, default=0,
                        help="nodes of the allocation kept as hot spares")
    parser.add_argument("--ntasks-per-node", type=_positive_int, default=1)
    parser.add_argument("--launcher", choices=("srun", "torchrun"), default="srun")
    parser.add_argument("--nproc-per-node", type=_positive_int, default=1,
                        help="torchrun workers per node")
    parser.add_argument("--master-port", type=int, default=29500)
    parser.add_argument("--log-prefix", default=None,
                        help="srun --output prefix; '.ATTEMPT-%%t.log' is appended")
    parser.add_argument("--slurmd-port", type=int, default=SLURMD_PORT)
    parser.add_argument("--heartbeat-s", type=_seconds,
                        default=heartbeat.interval_from_env())
    parser.add_argument("--peer-timeout-s", type=_seconds,
                        default=heartbeat.timeout_from_env(),
                        help="a rank silent this long is lost (default 1.5 s)")
    parser.add_argument("--restart-window-s", type=_seconds, default=60.0)
    parser.add_argument("--max-restarts", type=_count, default=16)
    parser.add_argument("--start-timeout-s", type=_seconds, default=300.0)
    parser.add_argument("--srun-arg", action="append", default=[],
                        help="extra srun option (repeatable)")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command after --")
    if args.ckpt_dir is None:
        parser.error("no checkpoint directory: --ckpt-dir or $SLURMKIT_CKPT_DIR")
    if args.peer_timeout_s <= 2 * args.heartbeat_s:
        parser.error("--peer-timeout-s must be more than twice --heartbeat-s")
    return LaunchConfig(
        command=command, ckpt_dir=args.ckpt_dir, nodes_min=args.nodes_min,
        nodes_max=args.nodes_max, spares=args.spares, ntasks_per_node=args.ntasks_per_node,
        launcher=args.launcher, nproc_per_node=args.nproc_per_node,
        master_port=args.master_port, log_prefix=args.log_prefix,
        slurmd_port=args.slurmd_port, interval_s=args.heartbeat_s,
        timeout_s=args.peer_timeout_s, restart_window_s=args.restart_window_s,
        max_restarts=args.max_restarts, start_timeout_s=args.start_timeout_s,
        srun_args=list(args.srun_arg))


def main(argv: Sequence[str] | None = None) -> int:
    return Supervisor(parse_args(argv)).run_job()
