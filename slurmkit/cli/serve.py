"""``slurmkit serve SPEC`` and ``slurmkit serve check|status|scale|stop SPEC``."""

from __future__ import annotations

import getpass
import json
import signal
import threading
import time

import click

from slurmkit.cli._paths import PathArg

_SUBCOMMANDS = ("run", "check", "status", "scale", "stop")


class ServeGroup(click.Group):
    """``serve SPEC`` runs the controller (the ``run`` subcommand); ``serve status
    SPEC`` and the others do what their names say."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in _SUBCOMMANDS and args[0] not in ("-h", "--help"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


def _load(spec_path: str):
    from slurmkit.serve import spec as spec_module

    return spec_module.load(spec_path)


def _user(ctx: click.Context) -> str:
    host = getattr(ctx.obj, "host", None) if ctx.obj is not None else None
    if host and "@" in host:
        return host.split("@", 1)[0]
    return getpass.getuser()


def _controller(ctx: click.Context, service, **extra):
    from slurmkit.serve.controller import Controller

    return Controller(spec=service, client=ctx.obj.client(), user=_user(ctx),
                      say=lambda text: click.echo(text), **extra)


@click.group(cls=ServeGroup, invoke_without_command=False)
def serve() -> None:
    """Run an inference service on Slurm behind HAProxy, scaled with its traffic.

    \b
    slurmkit serve SPEC          run the controller (until `serve stop`, SIGTERM or ^C)
    slurmkit serve check SPEC    validate the spec (with --policy: as the policy decides)
    slurmkit serve status SPEC   replicas, load and the last scaling decision
    slurmkit serve scale SPEC N  pin the replica count (`auto`: the scaler decides again)
    slurmkit serve stop SPEC     drain and cancel every replica, stop HAProxy
    """


@serve.command("run", hidden=True)
@click.argument("spec_path", metavar="SPEC", type=PathArg(dir_okay=False))
@click.pass_context
def run(ctx: click.Context, spec_path: str) -> None:
    """Run the controller of SPEC in the foreground."""
    from pathlib import Path

    from slurmkit.serve.state import ControllerLock, StateDir

    service = _load(spec_path)
    lock = ControllerLock(StateDir(Path(service.state_dir)))
    lock.acquire()
    stop = threading.Event()

    def on_signal(signum, frame):
        click.echo(f"serve {service.name}: signal {signum}: stopping the service", err=True)
        stop.set()

    previous = {signum: signal.signal(signum, on_signal)
                for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        _controller(ctx, service).run(stop_requested=stop.is_set)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        lock.release()


@serve.command()
@click.argument("spec_path", metavar="SPEC", type=PathArg(dir_okay=False))
@click.option("--policy", "policy_path", type=PathArg(dir_okay=False),
              help="Also decide a replica job as this job-submit policy would.")
@click.option("--user", default=None, help="Submitting user for --policy (default: you).")
@click.option("--script", is_flag=True, help="Print a replica's sbatch script.")
@click.pass_context
def check(ctx: click.Context, spec_path: str, policy_path: str | None, user: str | None,
          script: bool) -> None:
    """Validate SPEC; with --policy, also whether the policy admits its replicas."""
    from slurmkit.errors import UserInputError
    from slurmkit.output import escape

    service = _load(spec_path)
    click.echo(f"{escape(spec_path)}: valid: service {service.name}, replicas "
               f"{service.replicas_min}-{service.replicas_max} x {service.gpus_per_replica} "
               f"GPU(s), ports {service.ports.start}-{service.ports.stop - 1}, "
               f"router port {service.router.listen_port}, scaling on {service.scaling.signal}")
    if policy_path:
        from slurmkit.policy import config as config_module
        from slurmkit.policy.decide import decide

        policy = config_module.load(policy_path)
        job = {"user": user or getpass.getuser(), "account": service.account,
               "qos": service.qos, "partition": service.partition, "min_nodes": 1,
               "max_nodes": 1, "num_tasks": 1,
               "tres_per_node": f"gres/gpu:{service.gpus_per_replica}"
               if service.gpus_per_replica else None,
               "time_limit": service.time_limit_min}
        decision = decide(policy, job, 1000)
        if decision.action != "accept":
            raise UserInputError(f"the policy would refuse the replicas of {service.name}: "
                                 f"{decision.message}")
        click.echo(f"policy: replicas run as {decision.queue}/{decision.job_class} on "
                   f"{decision.changes.get('partition')}"
                   f"{' (may borrow: preemptible beyond the guarantee)' if decision.may_borrow else ''}")
    if script:
        controller = _controller(ctx, service)
        click.echo(controller.replica_script(service.port), nl=False)


@serve.command()
@click.argument("spec_path", metavar="SPEC", type=PathArg(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(spec_path: str, as_json: bool) -> None:
    """Replicas, load and the last decision of SPEC's service."""
    from pathlib import Path

    from slurmkit.output import escape, table
    from slurmkit.serve.state import StateDir, controller_alive, read_json

    service = _load(spec_path)
    state = StateDir(Path(service.state_dir))
    alive = controller_alive(state)
    current = read_json(state.status) or {}
    if as_json:
        click.echo(json.dumps({"service": service.name, "controller_alive": alive,
                               "status": current}, indent=2, sort_keys=True))
        return
    age = (f"{time.time() - current['updated_epoch_s']:.0f} s ago"
           if isinstance(current.get("updated_epoch_s"), (int, float)) else "never")
    click.echo(f"service {service.name}: controller "
               f"{'running' if alive else 'NOT running'} (status written {age})")
    if not current:
        return
    load = current.get("load") or {}
    latency = load.get("latency_ms")
    click.echo(f"target {current.get('target')} ({current.get('action')}: "
               f"{escape(str(current.get('reason')))})"
               + (f", pinned at {current['pinned']}" if current.get("pinned") is not None else ""))
    click.echo(f"load: {load.get('rate_per_s', 0):.1f} requests/s, {load.get('inflight', 0):.1f} "
               f"in flight, {load.get('queued', 0):.1f} queued, p{load.get('latency_percentile', 99):g} "
               f"latency {'-' if latency is None else f'{latency:.0f} ms'} (objective "
               f"{load.get('latency_target_ms', service.latency_target_ms):g} ms)")
    if current.get("reclaiming"):
        click.echo("scale-up waiting: Slurm is preempting borrowed jobs (their grace time)")
    if current.get("last_failure"):
        click.echo(f"last failed start: {escape(current['last_failure'])}")
    rows = [(r.get("job_id"), r.get("state"), r.get("node") or "-", r.get("port"),
             "yes" if r.get("borrowed") else "no") for r in current.get("replicas", [])]
    click.echo(table(["JOBID", "STATE", "NODE", "PORT", "BORROWED"], rows))


@serve.command()
@click.argument("spec_path", metavar="SPEC", type=PathArg(dir_okay=False))
@click.argument("count", metavar="N|auto")
def scale(spec_path: str, count: str) -> None:
    """Pin SPEC's service at N replicas (within MIN-MAX), or back to `auto`."""
    from pathlib import Path

    from slurmkit.errors import UserInputError
    from slurmkit.serve.state import StateDir, controller_alive, request

    service = _load(spec_path)
    if count == "auto":
        pinned = None
    elif count.isascii() and count.isdigit() and len(count) <= 6:
        pinned = int(count)
        if not service.replicas_min <= pinned <= service.replicas_max:
            raise UserInputError(f"{pinned} replicas is outside {service.name}'s range "
                                 f"{service.replicas_min}-{service.replicas_max} (replicas in "
                                 "the spec): choose a count within it")
    else:
        raise UserInputError(f"N = {count!r}: expected a replica count or 'auto'")
    state = StateDir(Path(service.state_dir))
    request(state, pinned=pinned)
    shown = "the scaler decides" if pinned is None else f"pinned at {pinned}"
    suffix = "" if controller_alive(state) else \
        " (no controller runs now: it applies when `slurmkit serve SPEC` starts)"
    click.echo(f"service {service.name}: {shown}{suffix}")


@serve.command()
@click.argument("spec_path", metavar="SPEC", type=PathArg(dir_okay=False))
@click.option("--timeout-s", type=click.FloatRange(1, 86400), default=None,
              help="Longest wait for the service to stop (default: its drain timeout + 90 s).")
@click.pass_context
def stop(ctx: click.Context, spec_path: str, timeout_s: float | None) -> None:
    """Drain and cancel every replica of SPEC's service and stop its HAProxy. With no
    controller running, does it itself: nothing is left running either way."""
    from pathlib import Path

    from slurmkit.errors import SlurmkitError
    from slurmkit.serve.state import ControllerLock, StateDir, controller_alive, request

    service = _load(spec_path)
    state = StateDir(Path(service.state_dir))
    timeout_s = timeout_s or service.drain_timeout_s + 90
    if controller_alive(state):
        request(state, stop=True)
        click.echo(f"service {service.name}: asked the controller to stop it")
        deadline = time.monotonic() + timeout_s
        while controller_alive(state) and time.monotonic() < deadline:
            time.sleep(0.2)
        if controller_alive(state):
            raise SlurmkitError(f"the controller of {service.name} did not stop within "
                                f"{timeout_s:g} s; `slurmkit serve status SPEC` shows it")
    lock = ControllerLock(state)
    lock.acquire()  # no controller may start while the leftovers are cleaned up
    try:
        controller = _controller(ctx, service)
        controller.stop_service(timeout_s=timeout_s)  # whatever is still there
        request(state, stop=False)
    finally:
        lock.release()
    click.echo(f"service {service.name}: stopped; no replica job left")
