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
    for fragment in ("a single string would need a shell", "MAX (2) is below MIN (4)",
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
