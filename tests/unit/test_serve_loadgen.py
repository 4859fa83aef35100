"""The open-loop load generator and the example model server (local processes, no
HAProxy): arrivals follow the profile whatever the server does, latency counts from the
scheduled time, failures are counted."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slurmkit.serve import loadgen
from slurmkit.serve.loadgen import Phase, arrivals, parse_profile, summarize, tidal_day

REPO = Path(__file__).resolve().parents[2]


def test_arrivals_follow_the_rate_integral():
    schedule = arrivals([Phase("flat", 10, 1, 1), Phase("ramp", 10, 1, 3), Phase("p", 2, .5, .5)])
    assert len(schedule) == 10 + 20 + 1
    offsets = [offset for offset, _ in schedule]
    assert offsets == sorted(offsets) and offsets[0] == 1.0 and offsets[9] == 10.0
    assert [name for _, name in schedule].count("ramp") == 20
    # In a ramp from 1 to 3 requests/s the gaps shrink.
    ramp = [o for o, name in schedule if name == "ramp"]
    assert ramp[1] - ramp[0] > ramp[-1] - ramp[-2]


def test_a_tidal_day_and_profiles():
    day = tidal_day(300, 8, 48)
    assert [p.name for p in day] == ["trough", "ramp-up", "peak", "ramp-down"]
    assert sum(p.duration_s for p in day) == pytest.approx(300)
    assert len(arrivals(day)) == round(105 * 8 + 60 * 28 + 75 * 48 + 60 * 28)
    assert parse_profile("a:5:2,b:4:2-6") == [Phase("a", 5, 2, 2), Phase("b", 4, 2, 6)]
    for bad in ("a:5", "a:x:1", "a:-1:2", "a:5:-2", "a:5:nan"):
        with pytest.raises(ValueError, match="bad phase"):
            parse_profile(bad)
    with pytest.raises(ValueError):
        tidal_day(300, 1, 2, trough=0.9, ramp_up=0.2)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def model_server():
    """The example server on a free port: 200 ms a request, one slot."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "examples.serve_model", "--port", str(port),
                                "--bind", "127.0.0.1", "--cost-ms", "200", "--slots", "1",
                                "--load-s", "0"], cwd=REPO, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if "ready" in line:
            break
    yield port, process
    process.terminate()
    process.wait(timeout=30)


def test_open_loop_sends_on_schedule_while_the_server_is_slow(model_server):
    # 10 requests/s for 1 s at a server that takes 200 ms each, one at a time: a closed
    # loop would send 5; the open loop sends 10 and the queue shows as latency.
    port, _ = model_server
    results = loadgen.run(f"http://127.0.0.1:{port}/v1/predict",
                          [Phase("burst", 1.0, 10, 10)], timeout_s=10)
    assert len(results) == 10 and all(r.ok for r in results), results
    by_offset = sorted(results, key=lambda r: r.offset_s)
    assert by_offset[-1].latency_ms > 700  # the last waited for ~9 others
    assert by_offset[0].latency_ms < 600
    assert results[0].replica.endswith(f":{port}")
    summary = summarize(results, slo_ms=500)
    assert summary["requests"] == 10 and summary["failed"] == 0
    assert 0 < summary["slo_attainment"] < 1


def test_failures_are_counted_not_retried():
    port = free_port()  # nothing listens
    results = loadgen.run(f"http://127.0.0.1:{port}/v1/predict", [Phase("x", 0.5, 10, 10)],
                          timeout_s=2)
    summary = summarize(results, slo_ms=500)
    assert summary["requests"] == 5 and summary["failed"] == 5
    assert summary["slo_attainment"] == 0 and "ConnectionRefusedError" in next(iter(summary["errors"]))


def test_the_example_server_readiness_and_draining(model_server):
    import http.client
    import json

    port, process = model_server

    def get(path):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, json.loads(response.read())

    assert get("/ready")[0] == 200
    status, body = get("/v1/predict?seed=3")
    assert status == 200 and len(body["y"]) == 16
    assert get("/v1/predict?seed=x")[0] == 400 and get("/nowhere")[0] == 404
    # Slurm's warning before a preemption: not ready any more, still answering, then
    # gone once no request came for --linger-s (1 s).
    process.send_signal(signal.SIGUSR2)
    deadline = time.monotonic() + 5
    while get("/ready")[0] != 503:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert get("/v1/predict?seed=3")[0] == 200
    assert process.wait(timeout=10) == 0


def test_the_example_server_exits_on_a_signal_queued_while_it_was_stopped():
    """A SIGTERM sent while the process is stopped (SIGSTOP, a frozen node) may be taken
    by any thread when it resumes; the server once blocked its main thread for ever
    (Python runs handlers in the main thread only)."""
    for _ in range(3):
        port = free_port()
        process = subprocess.Popen([sys.executable, "-m", "examples.serve_model", "--port",
                                    str(port), "--bind", "127.0.0.1", "--load-s", "0"],
                                   cwd=REPO, stdout=subprocess.PIPE, text=True)
        assert "listening" in process.stdout.readline()
        process.send_signal(signal.SIGSTOP)
        process.send_signal(signal.SIGTERM)
        process.send_signal(signal.SIGCONT)
        try:
            assert process.wait(timeout=10) == 0
        finally:
            process.kill()
            process.wait()
