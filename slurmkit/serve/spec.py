"""ServiceSpec: an inference deployment, typed and validated.

A service spec is a TOML file::

    name = "tiny"                      # the service; its replica jobs are serve-<name>
    command = ["python3", "-m", "examples.serve_model", "--port", "{port}"]
    port = 8100                        # replicas listen on port .. port + 2 x MAX - 1 ({port} in
                                       # the command, $SLURMKIT_SERVICE_PORT)
    readiness_path = "/ready"          # 200 once the replica can take requests
    gpus_per_replica = 8
    replicas = "1-3"                   # MIN-MAX (or a fixed N)
    account = "team-a"                 # the queue
    qos = "inference"                  # the class
    latency_target_ms = 500            # the SLO: latency_percentile of requests within it
    latency_percentile = 99

    [router]                           # HAProxy on the login node
    listen_port = 8080
    slots_per_replica = 2              # requests a replica serves at once; more wait in HAProxy

    [scaling]
    signal = "rate"                    # rate | inflight | latency
    target_per_replica = 14            # requests/s (rate) or requests in flight (inflight)
    scale_down_below = 0.7             # hysteresis: scale down only below 70 % of the target
    down_cooldown_s = 20

Every problem is reported at once, each naming the key, the bad value and the fix;
unknown keys list the valid ones (as ``slurmkit.spec`` does for job specs).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slurmkit.errors import UserInputError
from slurmkit.spec import parse_min_max, parse_time_limit

SIGNALS = ("rate", "inflight", "latency")
#: The placeholder replaced by a replica's port in the server's argv.
PORT_PLACEHOLDER = "{port}"
#: Longest path of a UNIX socket (sun_path is 108 bytes on Linux, with the NUL).
MAX_SOCKET_PATH = 107
#: Most replicas one service may have (each holds a port of the range).
MAX_REPLICAS = 1000

_NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,30}")
_SLURM_NAME_RE = re.compile(r"[A-Za-z0-9_.+-]{1,64}")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_PATH_RE = re.compile(r"/[^\x00-\x1f\x7f]*")

_TOP_KEYS = {
    "name": "service name: 1-31 lowercase letters, digits and '-'",
    "command": "the server's argv, e.g. [\"python3\", \"-m\", \"server\", \"--port\", \"{port}\"]",
    "port": "first replica port; replicas use port .. port + 2 x MAX - 1",
    "readiness_path": "HTTP path answering 200 when a replica is ready, e.g. \"/ready\"",
    "gpus_per_replica": "GPUs each replica job asks for (per node)",
    "cpus_per_replica": "CPUs each replica job asks for",
    "replicas": "\"MIN-MAX\" (or a fixed N)",
    "account": "the queue (Slurm account) the replicas run in",
    "qos": "the workload class (QOS) of the replicas, e.g. \"inference\"",
    "partition": "partition(s) for the replicas (normally left to the policy)",
    "time_limit": "time limit of each replica job (Slurm time)",
    "latency_target_ms": "the latency objective in milliseconds",
    "latency_percentile": "the percentile the objective applies to (e.g. 99)",
    "env": "table of environment variables for the server",
    "chdir": "working directory of the replica jobs",
    "output": "output file of each replica job (default: <state_dir>/replicas/%j.out)",
    "state_dir": "the controller's directory (default: ~/.local/state/slurmkit/serve/<name>)",
    "ready_timeout_s": "a started replica not ready within this many seconds is replaced",
    "max_start_failures": "consecutive replicas that fail to start before the service stops",
    "drain_timeout_s": "longest wait for a draining replica's requests in flight",
    "router": "[router] table: HAProxy settings",
    "scaling": "[scaling] table: the scaling policy",
}
_ROUTER_KEYS = {
    "listen_port": "the port HAProxy listens on for the service",
    "bind_address": "the address HAProxy binds (default 0.0.0.0)",
    "slots_per_replica": "requests one replica serves at once (HAProxy maxconn)",
    "queue_timeout_s": "longest wait of a request in HAProxy's queue",
    "request_timeout_s": "longest wait for a replica's response",
    "connect_timeout_s": "longest wait for a connection to a replica",
    "health_interval_ms": "health check interval (the readiness path)",
    "health_fall": "failed checks before a replica is taken out",
    "health_rise": "passed checks before a replica is put back",
    "retries": "attempts on another replica after a failed one",
    "retry_idempotent": "also retry requests a replica failed to answer (safe for inference)",
    "haproxy": "the haproxy program (default: haproxy on PATH)",
}
_SCALING_KEYS = {
    "signal": "rate | inflight | latency",
    "target_per_replica": "requests/s (rate) or requests in flight (inflight) per replica",
    "scale_down_below": "scale down only while the load stays below this fraction of the target",
    "window_s": "the load is averaged over this many seconds",
    "interval_s": "seconds between two decisions",
    "up_cooldown_s": "seconds after a scale-up before another one",
    "down_cooldown_s": "seconds after any change before a scale-down",
    "down_stable_s": "seconds the load must stay low before a scale-down",
}


@dataclass(frozen=True)
class RouterSpec:
    listen_port: int
    bind_address: str = "0.0.0.0"
    slots_per_replica: int = 4
    queue_timeout_s: float = 30.0
    request_timeout_s: float = 10.0
    connect_timeout_s: float = 1.0
    health_interval_ms: int = 1000
    health_fall: int = 2
    health_rise: int = 1
    retries: int = 2
    retry_idempotent: bool = True
    haproxy: str = "haproxy"


@dataclass(frozen=True)
class ScalingSpec:
    signal: str = "rate"
    target_per_replica: float | None = None
    scale_down_below: float = 0.7
    window_s: float = 10.0
    interval_s: float = 1.0
    up_cooldown_s: float = 0.0
    down_cooldown_s: float = 30.0
    down_stable_s: float = 15.0


@dataclass(frozen=True)
class ServiceSpec:
    """A validated service. Times in seconds or milliseconds as named."""

    name: str
    command: tuple[str, ...]
    port: int
    replicas_min: int
    replicas_max: int
    router: RouterSpec
    scaling: ScalingSpec = field(default_factory=ScalingSpec)
    readiness_path: str = "/ready"
    gpus_per_replica: int = 0
    cpus_per_replica: int = 1
    account: str | None = None
    qos: str | None = None
    partition: str | None = None
    time_limit_min: int | None = None
    latency_target_ms: float = 1000.0
    latency_percentile: float = 99.0
    env: tuple[tuple[str, str], ...] = ()
    chdir: str | None = None
    output: str | None = None
    state_dir: str = ""
    ready_timeout_s: float = 300.0
    max_start_failures: int = 3
    drain_timeout_s: float = 30.0
    source: str = "the service spec"

    @property
    def job_name(self) -> str:
        """Every replica job's name: how the controller finds its jobs in squeue."""
        return f"serve-{self.name}"

    @property
    def backend(self) -> str:
        return f"serve-{self.name}"

    @property
    def ports(self) -> range:
        """The replicas' ports: twice MAX, as replicas still draining keep theirs while
        new ones start."""
        return range(self.port, self.port + 2 * self.replicas_max)

    def argv_for(self, port: int) -> tuple[str, ...]:
        """The server's argv for a replica listening on ``port``."""
        return tuple(arg.replace(PORT_PLACEHOLDER, str(port)) for arg in self.command)

    @property
    def replica_output(self) -> str:
        return self.output or str(Path(self.state_dir) / "replicas" / "%j.out")


def default_state_dir(name: str, environ: Mapping[str, str] | None = None) -> str:
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_STATE_HOME") or os.path.join(
        environ.get("HOME") or os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "slurmkit", "serve", name)


def load(path: str | os.PathLike, *, environ: Mapping[str, str] | None = None) -> ServiceSpec:
    """Read and validate a service spec file (bounded read: see ``slurmkit.files``)."""
    from slurmkit import files

    raw = files.load_toml(path, "service spec")
    return build(raw, source=str(path), environ=environ)


def build(raw: Any, *, source: str = "the service spec",
          environ: Mapping[str, str] | None = None) -> ServiceSpec:
    """Validate everything; raise UserInputError listing every problem (and nothing
    else, whatever ``raw`` holds)."""
    errors: list[str] = []
    if not isinstance(raw, Mapping):
        raise UserInputError(f"invalid service spec ({source}): expected a table of settings")
    _unknown(raw, _TOP_KEYS, "", errors)
    checker = _Checker(raw, "", errors)

    name = checker.get("name", _name, required=True, default="service")
    command = checker.get("command", _argv, required=True, default=("true",))
    port = checker.get("port", _int_range(1, 65535), required=True, default=8000)
    replicas = checker.get("replicas", _replicas, required=True, default=(1, 1))
    readiness_path = checker.get("readiness_path", _http_path, default="/ready")
    gpus = checker.get("gpus_per_replica", _int_range(0, 1024), default=0)
    cpus = checker.get("cpus_per_replica", _int_range(1, 4096), default=1)
    account = checker.get("account", _slurm_name("account"), default=None)
    qos = checker.get("qos", _slurm_name("QOS"), default=None)
    partition = checker.get("partition", _partitions, default=None)
    time_limit = checker.get("time_limit", parse_time_limit, default=None)
    target_ms = checker.get("latency_target_ms", _number(1, 3_600_000), default=1000.0)
    percentile = checker.get("latency_percentile", _number(1, 100), default=99.0)
    env = checker.get("env", _env, default=())
    chdir = checker.get("chdir", _abs_path("chdir"), default=None)
    output = checker.get("output", _abs_path("output"), default=None)
    state_dir = checker.get("state_dir", _abs_path("state_dir"), default=None)
    ready_timeout = checker.get("ready_timeout_s", _number(1, 86400), default=300.0)
    max_failures = checker.get("max_start_failures", _int_range(1, 100), default=3)
    drain_timeout = checker.get("drain_timeout_s", _number(0, 86400), default=30.0)

    router_raw = _table(raw, "router", errors)
    _unknown(router_raw, _ROUTER_KEYS, "[router] ", errors)
    rc = _Checker(router_raw, "[router] ", errors)
    router = RouterSpec(
        listen_port=rc.get("listen_port", _int_range(1, 65535), required=True, default=8080),
        bind_address=rc.get("bind_address", _address, default="0.0.0.0"),
        slots_per_replica=rc.get("slots_per_replica", _int_range(1, 10000), default=4),
        queue_timeout_s=rc.get("queue_timeout_s", _number(0.001, 3600), default=30.0),
        request_timeout_s=rc.get("request_timeout_s", _number(0.001, 3600), default=10.0),
        connect_timeout_s=rc.get("connect_timeout_s", _number(0.001, 600), default=1.0),
        health_interval_ms=rc.get("health_interval_ms", _int_range(100, 600_000), default=1000),
        health_fall=rc.get("health_fall", _int_range(1, 100), default=2),
        health_rise=rc.get("health_rise", _int_range(1, 100), default=1),
        retries=rc.get("retries", _int_range(0, 10), default=2),
        retry_idempotent=rc.get("retry_idempotent", _bool, default=True),
        haproxy=rc.get("haproxy", _program, default="haproxy"),
    )

    scaling_raw = _table(raw, "scaling", errors)
    _unknown(scaling_raw, _SCALING_KEYS, "[scaling] ", errors)
    sc = _Checker(scaling_raw, "[scaling] ", errors)
    signal = sc.get("signal", _choice(SIGNALS), default="rate")
    scaling = ScalingSpec(
        signal=signal,
        target_per_replica=sc.get("target_per_replica", _number(0.001, 1e9), default=None),
        scale_down_below=sc.get("scale_down_below", _number(0.05, 0.95), default=0.7),
        window_s=sc.get("window_s", _number(1, 3600), default=10.0),
        interval_s=sc.get("interval_s", _number(0.1, 600), default=1.0),
        up_cooldown_s=sc.get("up_cooldown_s", _number(0, 86400), default=0.0),
        down_cooldown_s=sc.get("down_cooldown_s", _number(0, 86400), default=30.0),
        down_stable_s=sc.get("down_stable_s", _number(0, 86400), default=15.0),
    )
    if signal in ("rate", "inflight") and scaling.target_per_replica is None \
            and "target_per_replica" not in scaling_raw:
        unit = "requests per second" if signal == "rate" else "requests in flight"
        errors.append(f"[scaling] target_per_replica is missing: signal = \"{signal}\" needs "
                      f"the {unit} one replica should carry (e.g. target_per_replica = 10)")
    if scaling.window_s < scaling.interval_s:
        errors.append(f"[scaling] window_s = {scaling.window_s:g} is shorter than interval_s = "
                      f"{scaling.interval_s:g}: the window must hold at least one interval")

    low, high = replicas
    if port + 2 * high - 1 > 65535:
        errors.append(f"port = {port} with up to {high} replicas needs ports up to "
                      f"{port + 2 * high - 1} (twice MAX: replicas still draining keep "
                      "theirs), beyond 65535: choose a lower port")
    state = state_dir or default_state_dir(name, environ)
    socket_path = os.path.join(state, "haproxy.sock")
    if len(socket_path.encode()) > MAX_SOCKET_PATH:
        errors.append(f"state_dir {state!r} is too long for a UNIX socket path "
                      f"({len(socket_path.encode())} bytes with /haproxy.sock, at most "
                      f"{MAX_SOCKET_PATH}): set state_dir to a shorter directory")
    if errors:
        raise UserInputError(f"invalid service spec ({source}):\n  " + "\n  ".join(errors))
    return ServiceSpec(
        name=name, command=command, port=port, replicas_min=low, replicas_max=high,
        router=router, scaling=scaling, readiness_path=readiness_path,
        gpus_per_replica=gpus, cpus_per_replica=cpus, account=account, qos=qos,
        partition=partition, time_limit_min=time_limit, latency_target_ms=float(target_ms),
        latency_percentile=float(percentile), env=env, chdir=chdir, output=output,
        state_dir=state, ready_timeout_s=float(ready_timeout),
        max_start_failures=max_failures, drain_timeout_s=float(drain_timeout), source=source)


# ----------------------------------------------------------------- helpers


class _Checker:
    """Converts one key at a time, recording each problem with its key and fix."""

    def __init__(self, table: Mapping[str, Any], where: str, errors: list[str]):
        self.table, self.where, self.errors = table, where, errors

    def get(self, key: str, convert, *, default, required: bool = False):
        if key not in self.table:
            if required:
                hint = {**_SCALING_KEYS, **_ROUTER_KEYS, **_TOP_KEYS}.get(key, "")
                self.errors.append(f"{self.where}{key} is missing: {hint}")
            return default
        value = self.table[key]
        try:
            return convert(value)
        except (ValueError, TypeError, OverflowError) as error:
            self.errors.append(f"{self.where}{key} = {_shown(value)}: {error}")
            return default


def _shown(value: Any) -> str:
    import reprlib

    shown = reprlib.Repr()
    shown.maxstring, shown.maxother, shown.maxlist, shown.maxlevel = 60, 60, 6, 3
    try:
        return shown.repr(value)
    except Exception:  # an int too long to print
        return f"<{type(value).__name__}>"


def _table(raw: Mapping[str, Any], key: str, errors: list[str]) -> Mapping[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, Mapping):
        errors.append(f"{key} = {_shown(value)}: expected a [{key}] table")
        return {}
    return value


def _unknown(table: Mapping[str, Any], valid: Mapping[str, str], where: str,
             errors: list[str]) -> None:
    for key in sorted(set(table) - set(valid), key=str):
        errors.append(f"{where}unknown key {_shown(key)}; valid keys: {', '.join(sorted(valid))}")


def _name(value: Any) -> str:
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise ValueError("expected 1-31 lowercase letters, digits and '-', starting with a "
                         "letter (it names the HAProxy backend and the replica jobs)")
    return value


def _argv(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        raise ValueError("expected a list of arguments, e.g. [\"python3\", \"server.py\"]; a "
                         "single string would need a shell")
    if not isinstance(value, list) or not value:
        raise ValueError("expected a non-empty list of arguments")
    for item in value:
        if not isinstance(item, str):
            raise ValueError(f"argument {_shown(item)} is not a string")
        if "\x00" in item:
            raise ValueError("an argument contains a NUL byte")
    if not value[0]:
        raise ValueError("the program name is empty")
    return tuple(value)


def _int_range(low: int, high: int):
    def convert(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"expected an integer between {low} and {high}")
        return value
    return convert


def _number(low: float, high: float):
    def convert(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or not low <= value <= high:
            raise ValueError(f"expected a number between {low:g} and {high:g}")
        return float(value)
    return convert


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("expected true or false (TOML booleans, without quotes)")
    return value


def _choice(choices: tuple[str, ...]):
    def convert(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return value
    return convert


def _replicas(value: Any) -> tuple[int, int]:
    return parse_min_max(value, noun="replicas", most=MAX_REPLICAS)


def _http_path(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"/[A-Za-z0-9._~!$&'()*+,;=:@%/?-]{0,1023}",
                                                      value):
        raise ValueError("expected an HTTP path starting with '/', e.g. \"/ready\" (no spaces "
                         "or control characters)")
    return value


def _slurm_name(what: str):
    def convert(value: Any) -> str:
        if not isinstance(value, str) or not _SLURM_NAME_RE.fullmatch(value):
            raise ValueError(f"expected a Slurm {what} name (letters, digits, _ . + -)")
        return value
    return convert


def _partitions(value: Any) -> str:
    if not isinstance(value, str) or not all(_SLURM_NAME_RE.fullmatch(part)
                                             for part in value.split(",")):
        raise ValueError("expected partition names separated by commas")
    return value


def _env(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, Mapping):
        raise ValueError("expected a table of NAME = \"value\"")
    result = []
    for name, item in value.items():
        if not isinstance(name, str) or not _ENV_NAME_RE.fullmatch(name):
            raise ValueError(f"{_shown(name)} is not an environment variable name")
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            raise ValueError(f"{name}: expected a string value")
        text = str(item)
        if "\x00" in text:
            raise ValueError(f"{name}: the value contains a NUL byte")
        result.append((name, text))
    return tuple(result)


def _abs_path(what: str):
    def convert(value: Any) -> str:
        if not isinstance(value, str) or not _PATH_RE.fullmatch(value):
            raise ValueError(f"expected an absolute path for {what} (starting with '/', "
                             "no control characters)")
        return value
    return convert


def _address(value: Any) -> str:
    import ipaddress

    try:
        return str(ipaddress.ip_address(value if isinstance(value, str) else ""))
    except ValueError:
        raise ValueError("expected an IP address, e.g. \"0.0.0.0\" or \"127.0.0.1\"") from None


def _program(value: Any) -> str:
    if not isinstance(value, str) or not value or "\x00" in value or "\n" in value:
        raise ValueError("expected a program name or path, e.g. \"haproxy\"")
    return value
