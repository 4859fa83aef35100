"""A small model behind HTTP: the example inference server of `slurmkit serve`.

A two-layer NumPy MLP (fixed weights from a seed) answers ``POST /v1/predict`` with a
JSON body ``{"x": [64 floats]}`` (or ``GET /v1/predict?seed=N``, which makes the
input from N). Each request costs a fixed ``--cost-ms``: the forward pass, then a wait
for the rest of it (what a GPU's kernel time would be; the model itself is tiny). At
most ``--slots`` requests are computed at once (a GPU's batch); more wait for a slot.

``GET /ready`` answers 200 once the model is loaded (``--load-s`` stands for loading
weights) and 503 while loading or stopping; ``GET /health`` 200 while the process runs.

On SIGTERM, SIGUSR2 (Slurm's warning before a preemption) or SIGINT the server stops
being ready, keeps answering what it gets until HAProxy's health checks have taken it
out (no request for ``--linger-s``; at most ``--drain-s``), then exits 0.

    python3 -m examples.serve_model --port 8100 --cost-ms 100 --slots 2
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import numpy as np

IN, HIDDEN, OUT = 64, 256, 16
MAX_BODY = 1 << 16


class Model:
    """y = W2 relu(W1 x + b1) + b2, weights from a fixed seed (same on every replica)."""

    def __init__(self, seed: int = 7):
        rng = np.random.default_rng(seed)
        self.w1 = rng.standard_normal((HIDDEN, IN)) / np.sqrt(IN)
        self.b1 = rng.standard_normal(HIDDEN) * 0.1
        self.w2 = rng.standard_normal((OUT, HIDDEN)) / np.sqrt(HIDDEN)
        self.b2 = rng.standard_normal(OUT) * 0.1

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.w2 @ np.maximum(self.w1 @ x + self.b1, 0.0) + self.b2


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, address, *, cost_s: float, slots: int, name: str):
        super().__init__(address, Handler)
        self.model = Model()
        self.cost_s = cost_s
        self.slots = threading.BoundedSemaphore(slots)
        self.name = name
        self.ready = False
        self.stopping = False
        self.lock = threading.Lock()
        self.inflight = 0
        self.served = 0
        self.last_request = time.monotonic()

    def handle_error(self, request, client_address):
        # HAProxy's health checks close as soon as they have the status line: a reset
        # while the body is written is normal, not worth a traceback.
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)

    def predict(self, x: np.ndarray) -> list[float]:
        with self.slots:
            began = time.monotonic()
            y = self.model(x)
            left = self.cost_s - (time.monotonic() - began)
            if left > 0:
                time.sleep(left)
        return [round(float(v), 6) for v in y]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server

    def log_message(self, format, *args):  # health checks every second: stay quiet
        pass

    def _reply(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802 - http.server's naming
        url = urlsplit(self.path)
        if url.path == "/ready":
            ok = self.server.ready and not self.server.stopping
            self._reply(200 if ok else 503, {"ready": ok, "replica": self.server.name})
        elif url.path == "/health":
            self._reply(200, {"alive": True, "served": self.server.served})
        elif url.path == "/v1/predict":
            try:
                seed = int(parse_qs(url.query).get("seed", ["0"])[0])
            except ValueError:
                self._reply(400, {"error": "seed must be an integer"})
                return
            self._predict(np.random.default_rng(seed).standard_normal(IN))
        else:
            self._reply(404, {"error": f"no such path {url.path}"})

    def do_POST(self):  # noqa: N802
        if urlsplit(self.path).path != "/v1/predict":
            self._reply(404, {"error": "POST /v1/predict"})
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
            if not 0 < length <= MAX_BODY:
                raise ValueError(f"a body of 1 to {MAX_BODY} bytes")
            x = np.asarray(json.loads(self.rfile.read(length))["x"], dtype=float)
            if x.shape != (IN,) or not np.all(np.isfinite(x)):
                raise ValueError(f"x must be {IN} finite numbers")
        except (ValueError, KeyError, TypeError) as error:
            self._reply(400, {"error": f"expected {{\"x\": [{IN} numbers]}}: {error}"})
            return
        self._predict(x)

    def _predict(self, x: np.ndarray) -> None:
        server = self.server
        with server.lock:
            server.inflight += 1
        try:
            y = server.predict(x)
        finally:
            with server.lock:
                server.inflight -= 1
                server.served += 1
                server.last_request = time.monotonic()
        self._reply(200, {"y": y, "replica": server.name})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m examples.serve_model")
    parser.add_argument("--port", type=int,
                        default=int(os.environ.get("SLURMKIT_SERVICE_PORT", "8100")))
    parser.add_argument("--bind", default="0.0.0.0")
    parser.add_argument("--cost-ms", type=float, default=100.0,
                        help="fixed time each request takes (forward pass + simulated GPU time)")
    parser.add_argument("--slots", type=int, default=2, help="requests computed at once")
    parser.add_argument("--load-s", type=float, default=1.0,
                        help="time to load the model before the server is ready")
    parser.add_argument("--linger-s", type=float, default=1.0,
                        help="after a stop signal, exit once no request came for this long")
    parser.add_argument("--drain-s", type=float, default=20.0,
                        help="after a stop signal, exit after this long at the latest")
    parser.add_argument("--never-ready", action="store_true",
                        help="never answer 200 on /ready (to test a service that cannot start)")
    args = parser.parse_args(argv)

    name = f"{socket.gethostname()}:{args.port}"
    try:
        server = Server((args.bind, args.port), cost_s=args.cost_ms / 1000, slots=args.slots,
                        name=name)
    except OSError as error:
        print(f"serve_model: cannot listen on {args.bind}:{args.port}: {error.strerror or error}",
              file=sys.stderr, flush=True)
        return 98
    stop = threading.Event()

    def on_signal(signum, frame):
        if not server.stopping:
            print(f"serve_model: {name} got signal {signum}: not ready any more, draining",
                  flush=True)
        server.stopping = True
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT):
        signal.signal(signum, on_signal)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                     daemon=True).start()
    print(f"serve_model: {name} listening, loading the model ({args.load_s:g} s)", flush=True)
    if not stop.wait(args.load_s) and not args.never_ready:
        server.ready = True
        print(f"serve_model: {name} ready", flush=True)
    # Wake up now and then: Python runs signal handlers in the main thread only, and a
    # signal the kernel hands to another thread (e.g. one queued while the process was
    # stopped) must not leave the main thread blocked for ever.
    while not stop.wait(0.2):
        pass
    stopped_at = time.monotonic()
    while time.monotonic() - stopped_at < args.drain_s:
        with server.lock:
            idle = server.inflight == 0 and \
                time.monotonic() - server.last_request >= args.linger_s
        if idle and time.monotonic() - stopped_at >= args.linger_s:
            break
        time.sleep(0.05)
    server.shutdown()
    print(f"serve_model: {name} stopped after {server.served} requests", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
