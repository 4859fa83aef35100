"""An open-loop load generator: requests at a fixed arrival rate that follows a
profile (a compressed day: trough, ramp, peak, ramp), whatever the service answers.

Open loop: request *n* is sent at its scheduled time even when earlier requests have
not been answered (a closed-loop client would slow down with the service and hide its
latency). Latency is measured from the scheduled send time, so a generator that falls
behind shows up as latency, never as a gentler load. Arrivals are deterministic: the
*n*-th request goes out when the integral of the rate reaches *n*.

    python3 -m slurmkit.serve.loadgen --url http://login:8080/v1/predict \\
        --day 300:8:48 --out day.jsonl --slo-ms 500

prints a summary (requests, failures, latency percentiles, SLO attainment, per phase)
as one JSON line; ``--out`` keeps one JSON line per request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from slurmkit.serve.scaler import percentile

#: The body of every request: 64 numbers for the example model.
BODY = json.dumps({"x": [round(math.sin(i) * 0.5, 4) for i in range(64)]}).encode()


@dataclass(frozen=True)
class Phase:
    name: str
    duration_s: float
    start_rps: float
    end_rps: float


def tidal_day(duration_s: float, trough_rps: float, peak_rps: float, *,
              trough: float = 0.35, ramp_up: float = 0.2, peak: float = 0.25) -> list[Phase]:
    """A compressed day: trough, ramp up, peak, ramp down (the rest of the day)."""
    ramp_down = 1.0 - trough - ramp_up - peak
    if min(trough, ramp_up, peak, ramp_down) < 0 or duration_s <= 0:
        raise ValueError("the phases must be non-negative fractions of a positive duration")
    return [Phase("trough", duration_s * trough, trough_rps, trough_rps),
            Phase("ramp-up", duration_s * ramp_up, trough_rps, peak_rps),
            Phase("peak", duration_s * peak, peak_rps, peak_rps),
            Phase("ramp-down", duration_s * ramp_down, peak_rps, trough_rps)]


def parse_profile(text: str) -> list[Phase]:
    """``NAME:SECONDS:RPS[-RPS],...`` (a rate range ramps linearly)."""
    phases = []
    for part in text.split(","):
        try:
            name, seconds, rates = part.split(":")
            low, _, high = rates.partition("-")
            phase = Phase(name, float(seconds), float(low), float(high or low))
        except ValueError:
            raise ValueError(f"bad phase {part!r}: expected NAME:SECONDS:RPS or "
                             "NAME:SECONDS:RPS-RPS") from None
        if not (phase.duration_s > 0 and phase.start_rps >= 0 and phase.end_rps >= 0
                and all(map(math.isfinite, (phase.duration_s, phase.start_rps, phase.end_rps)))):
            raise ValueError(f"bad phase {part!r}: positive seconds, rates of at least 0")
        phases.append(phase)
    return phases


def arrivals(phases: Sequence[Phase]) -> list[tuple[float, str]]:
    """(offset in seconds, phase name) of every request: the n-th when the integral of
    the rate reaches n (rates linear within a phase)."""
    out: list[tuple[float, str]] = []
    begin, cumulative = 0.0, 0.0  # time and requests (the rate's integral) so far
    for phase in phases:
        a, b, length = phase.start_rps, phase.end_rps, phase.duration_s
        slope = (b - a) / length
        total = (a + b) / 2 * length
        k = math.floor(cumulative + 1e-9) + 1
        while k <= cumulative + total + 1e-9:
            m = k - cumulative  # requests into this phase
            if abs(slope) < 1e-12:
                t = m / a
            else:  # a t + slope t^2 / 2 = m
                t = (-a + math.sqrt(max(0.0, a * a + 2 * slope * m))) / slope
            out.append((begin + min(t, length), phase.name))
            k += 1
        cumulative += total
        begin += length
    return out


@dataclass
class Result:
    offset_s: float
    phase: str
    latency_ms: float
    status: int  # 0: no HTTP answer
    error: str = ""
    replica: str = ""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


async def _request(host: str, port: int, path: str, timeout_s: float) -> tuple[int, str, str]:
    """POST BODY; (status, error, replica)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: " + host.encode()
                     + b"\r\nContent-Type: application/json\r\nContent-Length: "
                     + str(len(BODY)).encode() + b"\r\nConnection: close\r\n\r\n" + BODY)
        await writer.drain()
        status_line = await reader.readline()
        parts = status_line.split()
        status = int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else 0
        length = None
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        body = await (reader.readexactly(length) if length is not None else reader.read())
        replica = ""
        if status == 200:
            try:
                replica = str(json.loads(body).get("replica", ""))
            except ValueError:
                return status, "bad body", ""
        return status, "" if status == 200 else f"HTTP {status}", replica
    finally:
        writer.close()


async def _run(url: str, schedule: list[tuple[float, str]], *, timeout_s: float,
               max_inflight: int, on_result=None) -> list[Result]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    loop = asyncio.get_running_loop()
    results: list[Result] = []
    inflight = 0
    start = loop.time() + 0.2
    wall_start = time.time() + 0.2
    done = asyncio.Event()
    remaining = len(schedule)

    async def one(offset: float, phase: str) -> None:
        nonlocal inflight, remaining
        scheduled = start + offset
        status, error, replica = 0, "", ""
        if inflight >= max_inflight:
            error = f"generator overloaded ({max_inflight} requests in flight)"
        else:
            inflight += 1
            try:
                status, error, replica = await asyncio.wait_for(
                    _request(host, port, path, timeout_s), timeout_s)
            except TimeoutError:
                error = f"no answer within {timeout_s:g} s"
            except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
                error = f"{type(exc).__name__}: {exc}"[:200]
            finally:
                inflight -= 1
        result = Result(round(offset, 4), phase, round((loop.time() - scheduled) * 1000, 2),
                        status, error, replica)
        results.append(result)
        if on_result:
            on_result(result, wall_start)
        remaining -= 1
        if remaining == 0:
            done.set()

    for offset, phase in schedule:
        loop.call_at(start + offset, lambda o=offset, p=phase: loop.create_task(one(o, p)))
    if schedule:
        await done.wait()
    return results


def run(url: str, phases: Sequence[Phase], *, timeout_s: float = 10.0,
        max_inflight: int = 2000, on_result=None) -> list[Result]:
    """Send the whole profile; return every request's result (in completion order)."""
    return asyncio.run(_run(url, arrivals(phases), timeout_s=timeout_s,
                            max_inflight=max_inflight, on_result=on_result))


def summarize(results: Sequence[Result], slo_ms: float) -> dict:
    """Requests, failures, latency percentiles (answered requests) and SLO attainment
    (answered with 2xx within ``slo_ms``, over every request sent), overall and per
    phase."""
    def block(rows: Sequence[Result]) -> dict:
        latencies = [r.latency_ms for r in rows if r.ok]
        good = sum(1 for r in rows if r.ok and r.latency_ms <= slo_ms)
        return {"requests": len(rows), "failed": sum(1 for r in rows if not r.ok),
                "p50_ms": percentile(latencies, 50), "p95_ms": percentile(latencies, 95),
                "p99_ms": percentile(latencies, 99),
                "slo_attainment": round(good / len(rows), 5) if rows else None}

    summary = {"slo_ms": slo_ms, **block(results)}
    phases: dict[str, list[Result]] = {}
    for row in results:
        phases.setdefault(row.phase, []).append(row)
    summary["phases"] = {name: block(rows) for name, rows in phases.items()}
    errors: dict[str, int] = {}
    for row in results:
        if not row.ok:
            key = row.error or f"HTTP {row.status}"
            errors[key] = errors.get(key, 0) + 1
    summary["errors"] = dict(sorted(errors.items(), key=lambda item: -item[1])[:10])
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m slurmkit.serve.loadgen",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    shape = parser.add_mutually_exclusive_group(required=True)
    shape.add_argument("--day", metavar="SECONDS:TROUGH_RPS:PEAK_RPS",
                       help="a compressed day: trough 35 %%, ramp 20 %%, peak 25 %%, ramp 20 %%")
    shape.add_argument("--profile", metavar="NAME:SECONDS:RPS[-RPS],...")
    parser.add_argument("--timeout-s", type=float, default=10.0)
    parser.add_argument("--slo-ms", type=float, default=500.0)
    parser.add_argument("--max-inflight", type=int, default=2000)
    parser.add_argument("--out", help="one JSON line per request (offset, latency, status)")
    args = parser.parse_args(argv)
    try:
        if args.day:
            seconds, trough, peak = (float(v) for v in args.day.split(":"))
            phases = tidal_day(seconds, trough, peak)
        else:
            phases = parse_profile(args.profile)
    except ValueError as error:
        parser.error(str(error))
    handle = open(args.out, "w", encoding="utf-8") if args.out else None

    def record(result: Result, wall_start: float) -> None:
        if handle:
            handle.write(json.dumps({"t_epoch_s": round(wall_start + result.offset_s, 3),
                                     **result.__dict__}) + "\n")

    try:
        results = run(args.url, phases, timeout_s=args.timeout_s,
                      max_inflight=args.max_inflight, on_result=record)
    finally:
        if handle:
            handle.close()
    print(json.dumps(summarize(results, args.slo_ms)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
