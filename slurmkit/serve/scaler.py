"""The scaling policy: load and replicas in, a replica count out. Pure.

The controller samples HAProxy every ``interval_s`` (``LoadSample``: cumulative
requests, requests at the replicas, requests waiting in HAProxy's queue) and collects
per-request latencies from HAProxy's log; ``window_load`` averages them over
``window_s`` into a ``Load``; ``decide`` turns that load and the replicas' states into
the number of replicas the service should have.

The rule, for ``signal = "rate"`` (requests/s) or ``"inflight"`` (requests in flight
or queued): *need* = load / ``target_per_replica``.

- **Up** at once to ``ceil(need)`` (at most MAX) when that is above the replicas
  the service has or is getting (pending and starting replicas count: a scale-up that
  waits for Slurm, or for a borrowed job's grace time, is not repeated), unless a
  scale-up happened less than ``up_cooldown_s`` ago. The latency objective is a
  guard: while the window's percentile is above ``latency_target_ms`` and requests
  queue, the service gets at least one replica more than it has serving.
- **Down** only to the count that would carry the load at ``scale_down_below`` of the
  target (hysteresis: between that and the target nothing moves), only after the load
  stayed that low for ``down_stable_s``, at least ``down_cooldown_s`` after the last
  change, and never while the latency objective is missed.

``signal = "latency"``: one replica more while the percentile is above the target and
requests queue; one fewer after the percentile stayed below ``scale_down_below`` x the
target for ``down_stable_s``.

``serve scale N`` pins the count (within MIN-MAX) until ``serve scale auto``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from slurmkit.serve.spec import ScalingSpec

#: A replica's life, as the controller sees it:
#: pending     queued in Slurm
#: reclaiming  queued while Slurm preempts borrowed work for it (waiting for a grace time)
#: starting    running, its readiness endpoint not answering 200 yet
#: ready       in HAProxy, serving
#: down        in HAProxy, failing its health checks (a dead node, a preempted replica)
#: draining    out of the balance, finishing the requests it has
STATES = ("pending", "reclaiming", "starting", "ready", "down", "draining")
#: The replicas a service has or is getting (what a scale-up must not repeat).
ACTIVE_STATES = frozenset({"pending", "reclaiming", "starting", "ready"})
_EPSILON = 1e-9


@dataclass(frozen=True)
class LoadSample:
    """One reading of HAProxy's counters (``show stat``) at ``t_s`` (monotonic)."""

    t_s: float
    requests_total: int  # cumulative requests the backend took
    inflight: int  # requests at the replicas now
    queued: int  # requests waiting in HAProxy's queue now


@dataclass(frozen=True)
class Load:
    """The load over the last window."""

    rate_per_s: float
    inflight: float  # mean requests at the replicas
    queued: float  # mean requests in HAProxy's queue
    latency_ms: float | None  # the objective's percentile over the window; None: no request
    requests: int  # requests completed in the window (latencies seen)


@dataclass(frozen=True)
class ReplicaView:
    job_id: int
    state: str
    borrowed: bool = False  # runs on borrowed (preemptible) capacity
    since_s: float = 0.0  # monotonic time it entered its state


@dataclass(frozen=True)
class ScalerState:
    """What the policy remembers between decisions."""

    last_up_s: float | None = None
    last_change_s: float | None = None
    low_since_s: float | None = None
    pinned: int | None = None


@dataclass(frozen=True)
class Decision:
    target: int
    action: str  # "up" | "down" | "hold"
    reason: str
    need: float | None = None  # replicas the load needs at the target (rate/inflight)


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile (the smallest value with at least pct % of the values at
    or below it); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def window_load(samples: Sequence[LoadSample], latencies: Iterable[tuple[float, float]], *,
                now_s: float, window_s: float, latency_percentile: float) -> Load:
    """Average ``samples`` and take the latency percentile over (now - window, now].
    ``latencies`` are (completion time, milliseconds). A counter that went backwards
    (HAProxy's backend re-created) restarts the rate from that sample."""
    start = now_s - window_s
    recent = [sample for sample in samples if start <= sample.t_s <= now_s]
    rate = 0.0
    if len(recent) >= 2:
        first = recent[0]
        for index in range(1, len(recent)):
            if recent[index].requests_total < recent[index - 1].requests_total:
                first = recent[index]
        last = recent[-1]
        if last.t_s > first.t_s:
            rate = (last.requests_total - first.requests_total) / (last.t_s - first.t_s)
    inflight = sum(s.inflight for s in recent) / len(recent) if recent else 0.0
    queued = sum(s.queued for s in recent) / len(recent) if recent else 0.0
    window = [ms for t_s, ms in latencies if start < t_s <= now_s]
    return Load(rate, inflight, queued, percentile(window, latency_percentile), len(window))


def _bounded(count: int, low: int, high: int) -> int:
    return max(low, min(high, count))


def decide(spec: ScalingSpec, *, replicas_min: int, replicas_max: int,
           latency_target_ms: float, load: Load, replicas: Sequence[ReplicaView],
           state: ScalerState, now_s: float) -> tuple[Decision, ScalerState]:
    """The replica count the service should have now, and the policy's new memory."""
    active = sum(1 for replica in replicas if replica.state in ACTIVE_STATES)
    serving = sum(1 for replica in replicas if replica.state == "ready")
    if state.pinned is not None:
        target = _bounded(state.pinned, replicas_min, replicas_max)
        action = "up" if target > active else "down" if target < active else "hold"
        new_state = replace(state, low_since_s=None)
        if action != "hold":
            new_state = replace(new_state, last_change_s=now_s,
                                last_up_s=now_s if action == "up" else state.last_up_s)
        return Decision(target, action, f"pinned at {target} (slurmkit serve scale)"), new_state
    if active < replicas_min:
        return (Decision(replicas_min, "up", f"{active} replica(s), below MIN {replicas_min}"),
                replace(state, last_up_s=now_s, last_change_s=now_s, low_since_s=None))

    slow = (load.latency_ms is not None and load.latency_ms > latency_target_ms
            and load.queued > _EPSILON)
    need: float | None = None
    if spec.signal == "latency":
        wanted_up = active
        if slow:
            wanted_up = max(active, serving + 1)
        low = load.latency_ms is None or load.latency_ms < spec.scale_down_below * latency_target_ms
        wanted_down = active - 1 if low and not load.queued > _EPSILON else active
        what = ("no requests" if load.latency_ms is None else
                f"latency {load.latency_ms:.0f} ms (objective {latency_target_ms:g} ms)")
    else:
        per_replica = spec.target_per_replica or 1.0
        measured = load.rate_per_s if spec.signal == "rate" else load.inflight + load.queued
        need = measured / per_replica
        wanted_up = math.ceil(need - _EPSILON)
        if slow:
            wanted_up = max(wanted_up, serving + 1)
        wanted_down = math.ceil(need / spec.scale_down_below - _EPSILON)
        unit = "requests/s" if spec.signal == "rate" else "requests in flight"
        what = f"{measured:.1f} {unit}, {need:.2f} replicas at {per_replica:g} each"
        if load.latency_ms is not None:
            what += f", latency {load.latency_ms:.0f} ms"

    wanted_up = _bounded(wanted_up, replicas_min, replicas_max)
    if wanted_up > active:
        if state.last_up_s is not None and now_s - state.last_up_s < spec.up_cooldown_s:
            left = spec.up_cooldown_s - (now_s - state.last_up_s)
            return (Decision(active, "hold", f"{what}: up to {wanted_up} after the up cooldown "
                                             f"({left:.0f} s left)", need),
                    replace(state, low_since_s=None))
        cause = "latency above the objective" if slow and spec.signal != "latency" else what
        return (Decision(wanted_up, "up", f"{cause}: {active} -> {wanted_up}", need),
                replace(state, last_up_s=now_s, last_change_s=now_s, low_since_s=None))

    wanted_down = _bounded(wanted_down, replicas_min, replicas_max)
    if wanted_down >= active or slow:
        return Decision(active, "hold", what, need), replace(state, low_since_s=None)
    low_since = state.low_since_s if state.low_since_s is not None else now_s
    stable_for = now_s - low_since
    if stable_for < spec.down_stable_s:
        return (Decision(active, "hold", f"{what}: down to {wanted_down} once low for "
                                         f"{spec.down_stable_s:g} s ({stable_for:.0f} s so far)",
                         need), replace(state, low_since_s=low_since))
    if state.last_change_s is not None and now_s - state.last_change_s < spec.down_cooldown_s:
        left = spec.down_cooldown_s - (now_s - state.last_change_s)
        return (Decision(active, "hold", f"{what}: down to {wanted_down} after the cooldown "
                                         f"({left:.0f} s left)", need),
                replace(state, low_since_s=low_since))
    return (Decision(wanted_down, "down", f"{what}: {active} -> {wanted_down}", need),
            replace(state, last_change_s=now_s, low_since_s=None))


def victims(replicas: Sequence[ReplicaView], count: int) -> list[int]:
    """The ``count`` replicas to remove first: those not serving yet (they cost no
    request), then those failing checks, then serving ones on borrowed capacity (the
    ones reclaim would take anyway), newest first within each group."""
    order = {"pending": 0, "reclaiming": 0, "starting": 1, "down": 2, "ready": 3}
    candidates = [r for r in replicas if r.state in order]
    candidates.sort(key=lambda r: (order[r.state], 0 if r.borrowed else 1, -r.since_s,
                                   -r.job_id))
    return [replica.job_id for replica in candidates[:max(0, count)]]
