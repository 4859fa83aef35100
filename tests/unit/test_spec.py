import pytest

from slurmkit.errors import UserInputError
from slurmkit.spec import build_spec, parse_nodes, parse_time_limit, valid_keys


@pytest.mark.parametrize("text, minutes", [
    ("90", 90), ("1:30", 2), ("01:00:00", 60), ("2-0", 2880), ("1-12", 2160),
    ("1-00:30", 1470), ("1-00:00:01", 1441), (45, 45), ("UNLIMITED", None),
])
def test_time_limits_in_every_slurm_format(text, minutes):
    assert parse_time_limit(text) == minutes


@pytest.mark.parametrize("bad", ["", "1h", "-5", "0", "1:60:00", "1-2-3", "abc", True])
def test_bad_time_limits(bad):
    with pytest.raises(ValueError):
        parse_time_limit(bad)


def test_nodes():
    assert parse_nodes(4) == (4, 4) and parse_nodes("2-4") == (2, 4)
    for bad in ("0", "4-2", "x", "2-", True):
        with pytest.raises(ValueError):
            parse_nodes(bad)


def test_training_defaults():
    spec = build_spec({"kind": "training", "command": ["python", "train.py"], "nodes": "2-4",
                       "gpus_per_node": 8})
    assert (spec.nodes_min, spec.nodes_max, spec.elastic) == (2, 4, True)
    assert spec.requeue and spec.exclusive and spec.signal == "USR2"
    assert spec.tasks_per_node == 8  # one task per GPU with the srun launcher
    assert spec.job_name == "python"


def test_flags_override_file_and_env_sits_between():
    spec = build_spec({"command": ["x"], "account": "from-file", "qos": "from-file"},
                      {"qos": "from-flag", "partition": None},
                      environ={"SLURMKIT_ACCOUNT": "from-env", "SLURMKIT_QOS": "from-env"})
    assert spec.account == "from-env" and spec.qos == "from-flag"


def test_unknown_keys_list_the_valid_ones_and_name_the_file():
    with pytest.raises(UserInputError) as caught:
        build_spec({"command": ["x"], "gpus": 8}, source="job.toml")
    message = str(caught.value)
    assert "job.toml" in message and "unknown key 'gpus'" in message
    assert "gpus_per_node" in message  # the valid keys are listed


def test_every_problem_is_reported_at_once():
    with pytest.raises(UserInputError) as caught:
        build_spec({"command": "python train.py", "nodes": "4-2", "time_limit": "soon",
                    "signal": "USR1", "kind": "training"})
    message = str(caught.value)
    for fragment in ("a single string would need a shell", "MIN (4) is above MAX (2)",
                     "time_limit = 'soon'", "SIGUSR1 is used by NCCL"):
        assert fragment in message


def test_kind_specific_keys_are_checked():
    with pytest.raises(UserInputError, match="'array' applies to kind = 'batch'"):
        build_spec({"kind": "training", "command": ["x"], "array": "0-9"})


def test_missing_command_says_how_to_give_one():
    with pytest.raises(UserInputError, match="after -- on the command line"):
        build_spec({"kind": "batch"})


def test_single_line_values_reject_newlines():
    with pytest.raises(UserInputError, match="job_name .* must be a single line"):
        build_spec({"command": ["x"], "job_name": "a\nb"})


def test_env_table_validates_names():
    with pytest.raises(UserInputError, match="not a valid environment variable name"):
        build_spec({"command": ["x"], "env": {"BAD-NAME": "1"}})
    spec = build_spec({"command": ["x"], "env": {"A": "multi\nline $(ok)"}})
    assert spec.env == (("A", "multi\nline $(ok)"),)


def test_inference_replicas_set_the_node_count():
    spec = build_spec({"kind": "inference", "command": ["serve"], "replicas": 3})
    assert (spec.nodes_min, spec.nodes_max, spec.requeue) == (3, 3, True)


def test_signal_lead_must_fit_in_the_time_limit():
    with pytest.raises(UserInputError, match="not shorter than time_limit"):
        build_spec({"kind": "training", "command": ["x"], "time_limit": "1",
                    "signal_lead_s": 120})


def test_valid_keys_per_kind():
    assert "array" in valid_keys("batch") and "array" not in valid_keys("training")
    assert "checkpoint_dir" in valid_keys("training")


# ----------------------------------------------------------------- one schema


def test_every_field_is_a_key_or_filled_by_one():
    """The dataclass is the table: each field a user sets carries its Key, and the
    only other field is filled by a key (nodes -> nodes_min, nodes_max)."""
    from dataclasses import fields

    from slurmkit.spec import KEYS, JobSpec

    targets = [target for key in KEYS.values() for target in key.targets]
    assert sorted(targets) == sorted(spec_field.name for spec_field in fields(JobSpec))
    assert valid_keys() == sorted(KEYS)
    with pytest.raises(UserInputError) as caught:
        build_spec({"command": ["x"], "bogus": 1})
    assert f"valid keys: {', '.join(sorted(KEYS))}" in str(caught.value)


@pytest.mark.parametrize("kind, expected", [
    ("batch", dict(exclusive=False, requeue=False, signal=None, signal_lead_s=60,
                   restart="requeue", job_name="train.py", nodes_min=1, switches_wait_min=30)),
    ("training", dict(exclusive=True, requeue=True, signal="USR2", signal_lead_s=120,
                      restart="requeue", launcher="srun", master_port=29500, spares=0)),
    ("inference", dict(exclusive=False, requeue=True, signal="USR2", signal_lead_s=60)),
])
def test_defaults_per_kind(kind, expected):
    spec = build_spec({"kind": kind, "command": ["/opt/train.py", "--x"]})
    assert {name: getattr(spec, name) for name in expected} == expected
    assert build_spec({"kind": "training", "command": ["x"],
                       "checkpoint_dir": "/ck"}).restart == "in-place"


#: A valid value per key, as a spec file gives it and as a flag does.
SAMPLES = {
    "kind": ("training", "training"), "job_name": ("run 1", "run 1"),
    "nodes": ("2-4", "2-4"), "partition": ("gpu,spot", "gpu,spot"),
    "time_limit": ("1-00:00:00", "1-00:00:00"), "account": ("team-a", "team-a"),
    "qos": ("high", "high"), "gpus_per_node": (8, "8"), "ntasks_per_node": (2, "2"),
    "cpus_per_task": (4, "4"), "mem_per_node_mb": (65536, "64G"),
    "exclusive": (False, None), "requeue": (False, None), "output": ("/o/%j.out", "/o/%j.out"),
    "chdir": ("/w", "/w"), "constraint": ("h100", "h100"), "signal": ("TERM", "TERM"),
    "signal_lead_s": (300, "300"), "placement": ("none", "none"),
    "env": ({"A": "1"}, "A=1"), "checkpoint_dir": ("/ck", "/ck"),
    "launcher": ("torchrun", "torchrun"), "nproc_per_node": (4, "4"),
    "log_dir": ("/logs", "/logs"), "restart": ("in-place", "in-place"), "spares": (1, "1"),
}


def test_every_flag_gives_what_its_key_gives_in_a_spec_file(tmp_path):
    """The flags are derived from the same table: each one sets the same field to the
    same value as the key in a TOML file (on a training spec; the inference and batch
    keys are checked by the golden scripts)."""
    from click.testing import CliRunner

    from slurmkit.cli import cli
    from slurmkit.cli._spec_options import SPEC_FLAGS
    from slurmkit.spec import KEYS, load_spec

    flagged = {declarations[-1]: declarations[:-1] for declarations, _ in SPEC_FLAGS}
    assert set(flagged) == {name for name, key in KEYS.items() if key.flags}
    assert set(flagged) - {"replicas", "port", "array"} == set(SAMPLES)
    base = {"kind": "training", "command": ["python", "t.py"], "checkpoint_dir": "/c"}
    base_file = tmp_path / "base.toml"
    base_file.write_text(_toml(base))
    for name, (in_file, on_command_line) in SAMPLES.items():
        path = tmp_path / f"{name}.toml"
        path.write_text(_toml({**base, name: in_file}))
        if on_command_line is None:  # the negative of a switch: --shared, --no-requeue
            argv = ["render", "-f", str(base_file), flagged[name][0].split("/")[1]]
        else:
            argv = ["render", "-f", str(base_file), flagged[name][-1], on_command_line]
        assert load_spec(base_file, _overrides(argv)) == load_spec(path), name
        result = CliRunner().invoke(cli, argv)
        assert result.exit_code == 0, (name, result.output)


def _toml(values: dict) -> str:
    import json

    lines, tables = [], []
    for key, value in values.items():
        if isinstance(value, dict):
            tables += [f"[{key}]"] + [f"{k} = {json.dumps(v)}" for k, v in value.items()]
        else:
            text = str(value).lower() if isinstance(value, bool) else json.dumps(value)
            lines.append(f"{key} = {text}")
    return "\n".join(lines + tables) + "\n"


def _overrides(argv):
    """The overrides `render` builds from argv (through its own Click parser)."""
    from slurmkit.cli._spec_options import overrides_from_flags
    from slurmkit.cli.submit import render

    context = render.make_context("render", list(argv[1:]))
    return overrides_from_flags(context.params)


@pytest.mark.parametrize("name", ["gpus_per_node", "ntasks_per_node", "cpus_per_task",
                                  "signal_lead_s", "nproc_per_node", "spares", "replicas",
                                  "port"])
def test_flag_bounds_are_the_keys_bounds(name):
    from slurmkit.cli._spec_options import SPEC_FLAGS
    from slurmkit.spec import KEYS

    [(declarations, kwargs)] = [flag for flag in SPEC_FLAGS if flag[0][-1] == name]
    convert = KEYS[name].convert
    assert (kwargs["type"].min, kwargs["type"].max) == (convert.low, convert.high)
