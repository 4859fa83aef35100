"""The scaling policy (pure): up at once, down only after the load stayed low, with
hysteresis, cooldowns, a latency guard, pins, and pending replicas counted."""

import pytest

from slurmkit.serve.scaler import (
    Load,
    LoadSample,
    ReplicaView,
    ScalerState,
    decide,
    percentile,
    victims,
    window_load,
)
from slurmkit.serve.spec import ScalingSpec

RATE = ScalingSpec(signal="rate", target_per_replica=10, scale_down_below=0.7,
                   up_cooldown_s=0, down_cooldown_s=20, down_stable_s=10)


def load(rate=0.0, inflight=0.0, queued=0.0, latency_ms=None):
    return Load(rate, inflight, queued, latency_ms, 100)


def ready(count, start=1):
    return [ReplicaView(job_id=start + i, state="ready") for i in range(count)]


def run(spec=RATE, *, lo=1, hi=4, target_ms=500, current=None, state=None, now=100.0, **kw):
    return decide(spec, replicas_min=lo, replicas_max=hi, latency_target_ms=target_ms,
                  load=load(**kw), replicas=ready(2) if current is None else current,
                  state=state or ScalerState(), now_s=now)


def test_scales_up_at_once_to_what_the_rate_needs():
    decision, state = run(rate=31)
    assert (decision.action, decision.target) == ("up", 4)
    assert decision.need == pytest.approx(3.1)
    assert state.last_up_s == 100.0 and "31.0 requests/s" in decision.reason


def test_never_above_max_nor_below_min():
    assert run(rate=1000)[0].target == 4
    decision, _ = run(rate=0, current=[])
    assert (decision.action, decision.target) == ("up", 1)
    assert "below MIN" in decision.reason


def test_pending_and_reclaiming_replicas_count_so_a_scale_up_is_not_repeated():
    current = ready(2) + [ReplicaView(3, "reclaiming"), ReplicaView(4, "pending")]
    decision, _ = run(rate=31, current=current)
    assert decision.action == "hold" and decision.target == 4


def test_draining_and_down_replicas_do_not_count():
    current = ready(2) + [ReplicaView(3, "draining"), ReplicaView(4, "down")]
    decision, _ = run(rate=25, current=current)
    assert (decision.action, decision.target) == ("up", 3)


def test_hysteresis_band_holds():
    # 2 replicas: up above 20/s, down only at or below 0.7 x 10 per remaining replica.
    for rate in (7.5, 14, 19.9):
        decision, state = run(rate=rate)
        assert decision.action == "hold", rate
        assert state.low_since_s is None, rate


def test_scales_down_only_after_the_load_stayed_low_and_the_cooldown():
    state = ScalerState(last_change_s=80.0)
    decision, state = run(rate=6, state=state, now=100.0)
    assert decision.action == "hold" and state.low_since_s == 100.0
    assert "once low for 10 s (0 s so far)" in decision.reason
    decision, state = run(rate=6, state=state, now=105.0)
    assert decision.action == "hold" and state.low_since_s == 100.0
    decision, state = run(rate=6, state=state, now=110.0)
    assert (decision.action, decision.target) == ("down", 1)
    assert state.last_change_s == 110.0 and state.low_since_s is None


def test_a_load_spike_restarts_the_low_period():
    _, state = run(rate=6, state=ScalerState(), now=100.0)
    _, state = run(rate=15, state=state, now=105.0)
    assert state.low_since_s is None
    decision, state = run(rate=6, state=state, now=112.0)
    assert decision.action == "hold" and state.low_since_s == 112.0


def test_the_down_cooldown_counts_from_the_last_change():
    state = ScalerState(last_change_s=95.0, low_since_s=50.0)
    decision, _ = run(rate=6, state=state, now=100.0)
    assert decision.action == "hold" and "after the cooldown (15 s left)" in decision.reason
    decision, _ = run(rate=6, state=state, now=115.0)
    assert decision.action == "down"


def test_down_jumps_to_the_count_that_carries_the_load_at_the_threshold():
    state = ScalerState(low_since_s=0.0)
    decision, _ = run(rate=13, current=ready(4), state=state)
    assert (decision.action, decision.target) == ("down", 2)  # 13 / 7 -> 2


def test_the_up_cooldown():
    spec = ScalingSpec(signal="rate", target_per_replica=10, up_cooldown_s=5)
    decision, state = run(spec, rate=31, state=ScalerState(last_up_s=97.0))
    assert decision.action == "hold" and "(2 s left)" in decision.reason
    decision, _ = run(spec, rate=31, state=ScalerState(last_up_s=94.0))
    assert decision.action == "up"


def test_latency_above_the_objective_with_a_queue_adds_a_replica_and_blocks_down():
    decision, _ = run(rate=12, queued=3, latency_ms=800)
    assert (decision.action, decision.target) == ("up", 3)
    assert "latency above the objective" in decision.reason
    # Slow but nothing queues (the replicas themselves are slow): no replica helps.
    assert run(rate=12, queued=0, latency_ms=800)[0].action == "hold"
    decision, _ = run(rate=1, queued=2, latency_ms=800, state=ScalerState(low_since_s=0))
    assert decision.action == "up"


def test_inflight_signal():
    spec = ScalingSpec(signal="inflight", target_per_replica=2)
    decision, _ = run(spec, inflight=4, queued=3)
    assert (decision.action, decision.target) == ("up", 4)
    assert "7.0 requests in flight" in decision.reason


def test_latency_signal():
    spec = ScalingSpec(signal="latency", scale_down_below=0.5, down_stable_s=0,
                       down_cooldown_s=0)
    decision, _ = run(spec, latency_ms=700, queued=1)
    assert (decision.action, decision.target) == ("up", 3)
    decision, _ = run(spec, latency_ms=400)
    assert decision.action == "hold"
    decision, _ = run(spec, latency_ms=200)
    assert (decision.action, decision.target) == ("down", 1)
    decision, _ = run(spec, latency_ms=None)
    assert (decision.action, decision.target) == ("down", 1)


def test_a_pin_wins_within_bounds():
    decision, state = run(rate=100, state=ScalerState(pinned=2))
    assert (decision.action, decision.target) == ("hold", 2) and "pinned" in decision.reason
    decision, _ = run(rate=0, state=ScalerState(pinned=9))
    assert (decision.action, decision.target) == ("up", 4)
    decision, _ = run(rate=100, state=ScalerState(pinned=1))
    assert (decision.action, decision.target) == ("down", 1)


def test_window_load_rate_mean_and_percentile():
    samples = [LoadSample(t, 10 * t, 2, 1 if t == 10 else 0) for t in range(0, 11)]
    latencies = [(t, float(t)) for t in range(1, 11)]
    result = window_load(samples, latencies, now_s=10, window_s=5, latency_percentile=99)
    assert result.rate_per_s == pytest.approx(10.0)
    assert result.inflight == 2 and result.queued == pytest.approx(1 / 6)
    assert result.latency_ms == 10.0 and result.requests == 5


def test_window_load_survives_a_counter_reset_and_empty_input():
    samples = [LoadSample(0, 500, 0, 0), LoadSample(1, 510, 0, 0), LoadSample(2, 5, 0, 0),
               LoadSample(4, 25, 0, 0)]
    assert window_load(samples, [], now_s=4, window_s=10,
                       latency_percentile=50).rate_per_s == pytest.approx(10.0)
    empty = window_load([], [], now_s=4, window_s=10, latency_percentile=50)
    assert empty == Load(0.0, 0.0, 0.0, None, 0)


def test_percentile_is_nearest_rank():
    values = list(range(1, 101))
    assert percentile(values, 99) == 99 and percentile(values, 100) == 100
    assert percentile(values, 50) == 50 and percentile([5.0], 99) == 5.0
    assert percentile([], 99) is None


def test_victims_not_serving_first_then_borrowed_then_newest():
    replicas = [ReplicaView(1, "ready", False, 1.0), ReplicaView(2, "ready", True, 2.0),
                ReplicaView(3, "ready", False, 3.0), ReplicaView(4, "starting", False, 4.0),
                ReplicaView(5, "pending", False, 5.0), ReplicaView(6, "draining", False, 6.0),
                ReplicaView(7, "down", False, 0.5)]
    assert victims(replicas, 6) == [5, 4, 7, 2, 3, 1]
    assert victims(replicas, 0) == []
