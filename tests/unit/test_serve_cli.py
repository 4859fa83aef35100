"""`slurmkit serve check|status|scale|stop` through Click's runner (Slurm answered from
a replay directory), and `serve SPEC` refusing bad input before anything runs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from slurmkit.cli import cli
from slurmkit.serve.state import ControllerLock, StateDir, read_json, write_json

SPEC = """\
name = "tiny"
command = ["python3", "-m", "examples.serve_model", "--port", "{{port}}"]
port = 8100
replicas = "{replicas}"
gpus_per_replica = 8
account = "{account}"
qos = "inference"
state_dir = "{state}"
[router]
listen_port = 18080
[scaling]
target_per_replica = 10
"""


@pytest.fixture
def world(tmp_path):
    def spec(replicas="1-3", account="team-a") -> str:
        path = tmp_path / f"svc-{replicas}-{account}.toml"
        path.write_text(SPEC.format(replicas=replicas, account=account,
                                    state=tmp_path / "state"))
        return str(path)

    replay = tmp_path / "replay"
    replay.mkdir()
    (replay / "squeue.json").write_text('{"jobs": []}')
    (replay / "manifest.json").write_text(json.dumps([
        {"argv": ["squeue"], "stdout": "squeue.json"},
        {"argv": ["scancel"], "stdout": "squeue.json"}]))
    return {"spec": spec, "state": StateDir(tmp_path / "state"), "replay": str(replay)}


def invoke(*args, replay=None):
    argv = (["--replay", replay] if replay else []) + ["serve", *args]
    return CliRunner().invoke(cli, argv)


def test_check_validates_and_simulates_the_policy(world):
    result = invoke("check", world["spec"](), "--policy", "examples/policy/policy.toml",
                    "--user", "alice")
    assert result.exit_code == 0, result.output
    assert "valid: service tiny, replicas 1-3 x 8 GPU(s), ports 8100-8105" in result.output
    assert "policy: replicas run as team-a/inference" in result.output
    refused = invoke("check", world["spec"](account="team-b"), "--policy",
                     "examples/policy/policy.toml", "--user", "bob")
    assert refused.exit_code == 2
    assert "queue team-b does not run inference jobs" in refused.stderr
    script = invoke("check", world["spec"](), "--script")
    assert "#SBATCH --gpus-per-node=\"8\"" in script.output
    assert "srun --kill-on-bad-exit=0 python3 -m examples.serve_model --port 8100" in script.output


def test_serve_refuses_bad_specs_before_anything_runs(world, tmp_path):
    result = invoke(world["spec"](replicas="3-1"))
    assert result.exit_code == 2 and "MIN (3) is above MAX (1)" in result.stderr
    assert not (tmp_path / "state").exists()  # no state, no HAProxy, no job
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (str(fifo), "/dev/zero", str(tmp_path / "missing.toml")):
        result = invoke(path)
        assert result.exit_code == 2 and result.stderr.startswith("error: "), result.output
        assert len(result.stderr.strip().splitlines()) == 1


def test_a_second_controller_is_refused(world):
    lock = ControllerLock(world["state"])
    lock.acquire()
    try:
        result = invoke(world["spec"]())
        assert result.exit_code == 2 and "already controlled by pid" in result.stderr
    finally:
        lock.release()


def test_status_without_and_with_a_controller_status(world):
    result = invoke("status", world["spec"]())
    assert result.exit_code == 0 and "controller NOT running (status written never)" in \
        result.output
    world["state"].ensure()
    write_json(world["state"].status, {
        "updated_epoch_s": 1.0, "target": 2, "action": "up", "reason": "r\x1b[2J", "pinned": 2,
        "reclaiming": True, "last_failure": "",
        "load": {"rate_per_s": 12.5, "inflight": 3, "queued": 1, "latency_ms": 140.0,
                 "latency_percentile": 99, "latency_target_ms": 500},
        "replicas": [{"job_id": 7, "state": "ready", "node": "c1", "port": 8100,
                      "borrowed": False},
                     {"job_id": 8, "state": "reclaiming", "node": "", "port": 8101,
                      "borrowed": False}]})
    result = invoke("status", world["spec"]())
    assert result.exit_code == 0
    assert "target 2 (up: r\\x1b[2J), pinned at 2" in result.output  # escaped
    assert "12.5 requests/s" in result.output and "p99 latency 140 ms" in result.output
    assert "Slurm is preempting borrowed jobs" in result.output
    assert "8      reclaiming  -" in result.output
    as_json = json.loads(invoke("status", world["spec"](), "--json").output)
    assert as_json["controller_alive"] is False and as_json["status"]["target"] == 2


def test_scale_pins_within_the_range(world):
    result = invoke("scale", world["spec"](), "2")
    assert result.exit_code == 0 and "pinned at 2 (no controller runs now" in result.output
    assert read_json(world["state"].control) == {"pinned": 2}
    assert invoke("scale", world["spec"](), "auto").exit_code == 0
    assert read_json(world["state"].control) == {"pinned": None}
    for bad, fragment in (("7", "outside tiny's range 1-3"), ("0", "outside"),
                          ("x", "expected a replica count or 'auto'"),
                          ("9" * 50, "expected a replica count")):
        result = invoke("scale", world["spec"](), bad)
        assert result.exit_code == 2 and fragment in result.stderr, result.output


def test_stop_without_a_controller_cleans_up_itself(world):
    result = invoke("stop", world["spec"](), replay=world["replay"])
    assert result.exit_code == 0, result.output
    assert "stopped; no replica job left" in result.output
    events = [json.loads(line) for line in
              Path(world["state"].events).read_text().splitlines()]
    assert events[-1]["event"] == "stopped" and events[-1]["left"] == []
