"""The service spec of `slurmkit serve`: valid specs, and every bad input named with
its fix."""

import pytest

from slurmkit.errors import UserInputError
from slurmkit.serve import spec as spec_module

BASE = {
    "name": "tiny",
    "command": ["python3", "-m", "examples.serve_model", "--port", "{port}"],
    "port": 8100,
    "replicas": "1-3",
    "gpus_per_replica": 8,
    "account": "team-a",
    "qos": "inference",
    "router": {"listen_port": 8080},
    "scaling": {"target_per_replica": 10},
}


def build(tmp_path, **changes):
    raw = {**BASE, "state_dir": str(tmp_path / "state"), **changes}
    return spec_module.build({k: v for k, v in raw.items() if v is not None}, source="svc.toml")


def problems(tmp_path, **changes) -> str:
    with pytest.raises(UserInputError) as caught:
        build(tmp_path, **changes)
    return str(caught.value)


def test_a_valid_spec_with_defaults(tmp_path):
    spec = build(tmp_path)
    assert (spec.replicas_min, spec.replicas_max) == (1, 3)
    assert spec.job_name == "serve-tiny" and spec.backend == "serve-tiny"
    assert spec.argv_for(8102)[-1] == "8102"
    assert spec.readiness_path == "/ready" and spec.router.slots_per_replica == 4
    assert spec.scaling.signal == "rate" and spec.scaling.target_per_replica == 10.0
    assert spec.replica_output == str(tmp_path / "state" / "replicas" / "%j.out")


def test_a_fixed_count_and_the_default_state_dir(tmp_path):
    raw = {**BASE, "replicas": 2}
    spec = spec_module.build(raw, environ={"HOME": "/home/alice"})
    assert (spec.replicas_min, spec.replicas_max) == (2, 2)
    assert spec.state_dir == "/home/alice/.local/state/slurmkit/serve/tiny"
    spec = spec_module.build(raw, environ={"XDG_STATE_HOME": "/var/st", "HOME": "/h"})
    assert spec.state_dir == "/var/st/slurmkit/serve/tiny"


def test_min_above_max_says_how_to_write_it(tmp_path):
    message = problems(tmp_path, replicas="4-2")
    assert "MIN (4) is above MAX (2)" in message and '"2-4"' in message
    assert "svc.toml" in message


@pytest.mark.parametrize("value, fragment", [
    ("0-2", "MIN must be at least 1"),
    ("a-b", 'expected N or "MIN-MAX"'),
    (True, 'expected N or "MIN-MAX"'),
    ("1-5000", "at most 1000 replicas"),
    ([1, 2], 'expected N or "MIN-MAX"'),
])
def test_bad_replica_ranges(tmp_path, value, fragment):
    assert fragment in problems(tmp_path, replicas=value)


def test_every_problem_is_reported_at_once(tmp_path):
    message = problems(tmp_path, name="Bad Name", command="python3 server.py", port=0,
                       replicas="3-1", readiness_path="ready", latency_target_ms=-1,
                       colour="blue", router={"listen_port": 8080, "slots": 2},
                       scaling={"signal": "cpu"})
    for fragment in ("name = 'Bad Name'", "a single string would need a shell",
                     "port = 0: expected an integer between 1 and 65535",
                     "MIN (3) is above MAX (1)", "readiness_path = 'ready'",
                     "latency_target_ms = -1", "unknown key 'colour'; valid keys:",
                     "[router] unknown key 'slots'", "[scaling] signal = 'cpu'"):
        assert fragment in message, (fragment, message)


def test_required_keys_are_named_with_what_they_mean(tmp_path):
    raw = {"router": {}}
    with pytest.raises(UserInputError) as caught:
        spec_module.build(raw, environ={"HOME": "/h"})
    message = str(caught.value)
    for fragment in ("name is missing", "command is missing", "port is missing",
                     "replicas is missing", "[router] listen_port is missing",
                     "[scaling] target_per_replica is missing"):
        assert fragment in message, (fragment, message)


def test_the_latency_signal_needs_no_per_replica_target(tmp_path):
    spec = build(tmp_path, scaling={"signal": "latency"})
    assert spec.scaling.target_per_replica is None


def test_ports_beyond_65535_and_a_window_shorter_than_an_interval(tmp_path):
    assert "beyond 65535" in problems(tmp_path, port=65530, replicas="1-4")
    assert build(tmp_path, port=65528, replicas="1-4").ports == range(65528, 65536)
    assert "window must hold at least one interval" in problems(
        tmp_path, scaling={"target_per_replica": 1, "window_s": 1, "interval_s": 2})


def test_types_are_strict(tmp_path):
    message = problems(tmp_path, gpus_per_replica="8", env={"A": True},
                       router={"listen_port": 8080.0, "retry_idempotent": "yes"})
    assert "gpus_per_replica = '8'" in message
    assert "A: expected a string value" in message
    assert "[router] listen_port = 8080.0" in message
    assert "[router] retry_idempotent = 'yes'" in message


def test_a_state_dir_too_long_for_a_socket(tmp_path):
    message = problems(tmp_path, state_dir="/" + "d" * 120)
    assert "too long for a UNIX socket path" in message and "set state_dir" in message


def test_not_a_table(tmp_path):
    with pytest.raises(UserInputError, match="expected a table"):
        spec_module.build(["x"])
    assert "expected a [router] table" in problems(tmp_path, router="8080")


def test_load_reads_the_file_bounded(tmp_path):
    path = tmp_path / "svc.toml"
    path.write_text('name = "tiny"\ncommand = ["srv"]\nport = 9000\nreplicas = "1-2"\n'
                    '[router]\nlisten_port = 8080\n[scaling]\nsignal = "inflight"\n'
                    'target_per_replica = 2\n')
    spec = spec_module.load(path, environ={"HOME": "/h"})
    assert spec.name == "tiny" and spec.scaling.signal == "inflight"
    with pytest.raises(UserInputError, match="does not exist"):
        spec_module.load(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("name = \n")
    with pytest.raises(UserInputError, match="not valid TOML"):
        spec_module.load(tmp_path / "bad.toml")


def test_the_cluster_tests_and_bench_write_valid_specs():
    """The specs tests/cluster/test_serve.py and bench/tidal.py write on the login node
    (checked here: those only run with the cluster)."""
    import tomllib

    from slurmkit.testing.serving import Service

    for service in (Service(None, "burst", replicas="1-2", listen_port=18081, port=8110),
                    Service(None, "never", replicas="1-1", top={"ready_timeout_s": 8,
                                                                "max_start_failures": 2}),
                    Service(None, "tidal-mixed", top={"latency_target_ms": 500.0}),
                    Service(None, "refused", user="bob", account="team-b")):
        spec = spec_module.build(tomllib.loads(service.toml()), source=service.spec_path)
        assert spec.state_dir == service.state_dir and spec.job_name == f"serve-{service.name}"
        assert spec.router.request_timeout_s == 2 and spec.scaling.target_per_replica == 10
    with pytest.raises(UserInputError, match=r"MIN \(3\) is above MAX \(1\)"):
        spec_module.build(tomllib.loads(Service(None, "x", replicas="3-1").toml()))
