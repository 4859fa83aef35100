"""Templates: golden scripts per kind, quoting enforced on every interpolation, and
a fuzz of hostile values that must never execute."""

import os
import random
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slurmkit.errors import UserInputError
from slurmkit.render import (
    PACKAGE_TEMPLATES,
    QUOTING_FILTERS,
    PlacementOptions,
    RenderError,
    render_script,
    sbatch_quote,
    shell_quote,
)
from slurmkit.spec import build_spec
from tests.unit.sbatch_model import sbatch_arguments

GOLDEN = Path(__file__).parent / "golden"
REGENERATE = os.environ.get("SLURMKIT_REGENERATE_GOLDEN") == "1"

SPECS = {
    "training": dict(kind="training", job_name="llama-7b", command=["python", "train.py",
                     "--config", "cfg/7b.yaml"], nodes="2-4", gpus_per_node=8,
                     time_limit="1-00:00:00", partition="gpu", account="team-a",
                     checkpoint_dir="/shared/ckpt/llama 7b", env={"NCCL_DEBUG": "WARN"}),
    "training-torchrun": dict(kind="training", job_name="ddp", command=["train.py"],
                              nodes=2, gpus_per_node=4, launcher="torchrun",
                              output="/shared/logs/ddp-100%.out"),
    "inference": dict(kind="inference", job_name="serve-8b", command=["vllm", "serve",
                      "meta/llama-3-8b"], replicas=2, gpus_per_node=8, port=8000, qos="inference"),
    "batch": dict(kind="batch", job_name="sft-sweep", command=["python", "sft.py"],
                  array="0-15%4", time_limit="2:00:00", chdir="/shared/sft"),
}
PLACEMENT = PlacementOptions(nodelist="c[1-4]", exclude="c7", node_count=4)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_golden_scripts(name):
    """Regenerate with: SLURMKIT_REGENERATE_GOLDEN=1 .venv/bin/pytest tests/unit/test_render.py"""
    placement = PLACEMENT if name == "training" else None
    script = render_script(build_spec(SPECS[name]), placement)
    golden = GOLDEN / f"{name}.sbatch"
    if REGENERATE:
        golden.write_text(script)
    assert script == golden.read_text(), f"{golden} differs; regenerate if intended"


@pytest.mark.parametrize("name", sorted(SPECS))
def test_golden_scripts_are_valid_bash(name):
    subprocess.run(["bash", "-n", str(GOLDEN / f"{name}.sbatch")], check=True)


def test_every_interpolation_in_every_template_is_quoted():
    expression = re.compile(r"{{(.*?)}}", re.S)
    unquoted = []
    for template in sorted(PACKAGE_TEMPLATES.glob("*.j2")):
        for match in expression.finditer(template.read_text()):
            last_filter = match.group(1).rsplit("|", 1)
            if len(last_filter) < 2 or last_filter[1].strip().split("(")[0] not in QUOTING_FILTERS:
                unquoted.append(f"{template.name}: {{{{{match.group(1)}}}}}")
    assert not unquoted, "unquoted interpolations:\n" + "\n".join(unquoted)
    assert list(PACKAGE_TEMPLATES.glob("*.j2")), "no templates found"


def test_missing_values_are_errors_not_empty_strings(tmp_path):
    (tmp_path / "batch.sbatch.j2").write_text("#!/bin/bash\necho {{ no_such_value | q }}\n")
    with pytest.raises(RenderError, match="no_such_value"):
        render_script(build_spec({"command": ["x"]}), template_dirs_extra=[tmp_path])


def test_site_templates_override_the_package(tmp_path):
    (tmp_path / "batch.sbatch.j2").write_text(
        '{% extends "base.sbatch.j2" %}{% block body %}echo site {{ spec.job_name | q }}\n'
        "{% endblock %}")
    script = render_script(build_spec({"command": ["x"], "job_name": "j"}),
                           template_dirs_extra=[tmp_path])
    assert script.endswith("echo site j\n") and '#SBATCH --job-name="j"' in script


def test_an_install_without_its_templates_says_so(tmp_path, monkeypatch):
    """A wheel without its package data once said only "template ... not found in"."""
    from slurmkit import render

    monkeypatch.setattr(render, "PACKAGE_TEMPLATES", tmp_path / "gone")
    monkeypatch.setattr(render, "SITE_TEMPLATES", tmp_path / "no-site")
    with pytest.raises(UserInputError, match=r"'batch.sbatch.j2' not found in .*; slurmkit's "
                       r"own templates \(.*gone\) are missing: reinstall"):
        render_script(build_spec({"command": ["x"]}))


def test_newline_in_an_sbatch_value_is_refused_with_the_reason():
    spec = build_spec({"command": ["x"], "env": {"A": "b"}})
    with pytest.raises(RenderError, match="newline"):
        sbatch_quote("evil\n#SBATCH --wrap=x")
    # A carriage return and a NUL are refused as a newline is.
    with pytest.raises(RenderError, match=r"^'evil\\r#SBATCH --wrap=x' contains a carriage "
                                          r"return, which cannot appear in an #SBATCH line"):
        sbatch_quote("evil\r#SBATCH --wrap=x")
    with pytest.raises(RenderError, match="contains a NUL byte"):
        sbatch_quote("a\0b")
    assert isinstance(RenderError("x"), UserInputError)
    assert "newline" not in render_script(spec)


def test_literal_output_paths_double_percent():
    script = render_script(build_spec({"command": ["x"], "output": "/logs/100%_%j.out"}))
    [line] = [line for line in script.splitlines() if line.startswith("#SBATCH --output")]
    assert sbatch_arguments(line) == ["--output=/logs/100%%_%%j.out"]


@given(st.text(alphabet=st.characters(blacklist_characters="\n\r\0", codec="utf-8"),
               min_size=0, max_size=60))
@settings(max_examples=500)
def test_sbatch_quoting_round_trips_through_sbatchs_tokenizer(value):
    assert sbatch_arguments(f"#SBATCH --job-name={sbatch_quote(value)}") == [f"--job-name={value}"]


@given(st.text(alphabet=st.characters(blacklist_characters="\0", codec="utf-8"), max_size=60))
@settings(max_examples=500)
def test_shell_quoting_round_trips(value):
    assert shlex.split(shell_quote(value)) == [value]


# ------------------------------------------------------------------- fuzz

_PAYLOADS = [
    "$(touch {M})", "`touch {M}`", "; touch {M}", "&& touch {M}", "| touch {M}",
    "' ; touch {M} ; '", '" ; touch {M} ; "', "\\'; touch {M}; #", '\\"; touch {M}; #',
    "${{IFS}}touch${{IFS}}{M}", "$(IFS=_;cmd=touch_{M};$cmd)", "\n touch {M}\n",
    "\r\ntouch {M}", "%j $(touch {M}) %x", "$'\\x3b' touch {M}", ">{M}", "<(touch {M})",
    "#SBATCH --wrap='touch {M}'", "\"\n#SBATCH --wrap=touch {M}\n\"", "\\\n touch {M}",
    "ünïcødé ⚡ $(touch {M})", "'\"`$(touch {M})`\"'", "$(touch {M}) # %% %%j",
    "x\x00$(touch {M})", "*; touch {M}", "~/$(touch {M})", "!$(touch {M})",
]
_FIELDS = ["job_name", "output", "chdir", "checkpoint_dir", "log_dir", "env", "argument"]
_KINDS = ["training", "inference", "batch"]


def _hostile_values(marker: str, count: int, seed: int = 20261128):
    randomness = random.Random(seed)
    alphabet = "abc $`'\"\\;|&<>(){}[]*?!#%~=\t\n\r" + "üλ⚡中"
    for index in range(count):
        payload = _PAYLOADS[index % len(_PAYLOADS)].format(M=marker)
        noise = "".join(randomness.choice(alphabet) for _ in range(randomness.randint(0, 12)))
        yield randomness.choice([payload, noise + payload, payload + noise,
                                 noise + payload + noise])


def _spec_with(kind: str, field: str, value: str, workdir: Path):
    values = {"kind": kind, "command": ["prog", "--flag"], "job_name": "fuzz",
              "chdir": str(workdir)}
    if kind != "training" and field in ("checkpoint_dir", "log_dir"):
        field = "output"  # the training-only path fields' stand-in for other kinds
    if field == "env":
        values["env"] = {"HOSTILE": value}
    elif field == "argument":
        values["command"] = ["prog", value, "--x=" + value]
    else:
        values[field] = value
    return build_spec(values)


def test_fuzz_no_hostile_value_ever_executes(tmp_path):
    """1400 hostile values in every field of every kind: each script is either
    refused with a clear error (a newline in an #SBATCH value) or passes bash -n and,
    run in a sandbox with stub Slurm commands, never creates the marker file."""
    marker = tmp_path / "pwned"
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for name in ("srun", "scontrol", "squeue", "torchrun", "prog"):
        stub = stubs / name
        stub.write_text("#!/bin/sh\nexit 0\n")  # print nothing, run nothing
        stub.chmod(0o755)
    workdir = tmp_path / "work"
    workdir.mkdir()
    env = {"PATH": f"{stubs}:/usr/bin:/bin", "HOME": str(tmp_path), "SLURM_JOB_ID": "1",
           "SLURM_JOB_NODELIST": "c1", "SLURM_JOB_NUM_NODES": "1", "LANG": "C.UTF-8"}
    rendered = refused = 0
    scripts = []
    for index, value in enumerate(_hostile_values(str(marker), 1400)):
        kind = _KINDS[index % len(_KINDS)]
        field = _FIELDS[index % len(_FIELDS)]
        try:
            spec = _spec_with(kind, field, value, workdir)
            script = render_script(spec)
        except UserInputError as error:
            assert "newline" in str(error) or "NUL" in str(error) or "single line" in str(error) \
                or "carriage return" in str(error), error
            refused += 1
            continue
        rendered += 1
        # sbatch reads #SBATCH lines up to the first line that is not a comment:
        # each must tokenize (no unmatched quote) into exactly one --option[=value].
        for line in script.splitlines()[1:]:
            if line and not line.startswith("#"):
                break
            if line.startswith("#SBATCH"):
                [argument] = sbatch_arguments(line)
                assert argument.startswith("--"), line
        scripts.append(script)
    # Run them in batches: one bash per script, all in the sandbox directory.
    for index, script in enumerate(scripts):
        path = tmp_path / f"script-{index}.sh"
        path.write_text(script)
        syntax = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert syntax.returncode == 0, f"{path}: {syntax.stderr}"
        subprocess.run(["bash", str(path)], env=env, cwd=workdir, capture_output=True,
                       timeout=30)
        assert not marker.exists(), f"script {path} executed injected text:\n{script}"
    assert rendered >= 1000 and rendered + refused == 1400, (rendered, refused)


@pytest.mark.parametrize(("exit_status", "preempt_time", "requeued"), [
    (85, "N/A", True),  # survivors checkpointed after a failure: requeue
    (85, "2026-11-28T10:01:12", False),  # preempted: Slurm requeues it as PREEMPTED
    (85, "", True),  # squeue unreachable: requeue rather than lose the job
    (0, "N/A", False),
    (1, "N/A", False),  # a plain failure without a requeue marker
])
@pytest.mark.parametrize("restart", ["in-place", "requeue"])
def test_training_script_requeues_unless_slurm_preempts_it(tmp_path, exit_status,
                                                           preempt_time, requeued, restart):
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    calls = tmp_path / "scontrol-calls"
    # In-place jobs run the step through `slurmkit launch`, which exits 85 for a requeue.
    launcher = "slurmkit" if restart == "in-place" else "srun"
    (stubs / launcher).write_text(f"#!/bin/sh\nexit {exit_status}\n")
    (stubs / "squeue").write_text(f"#!/bin/sh\necho '{preempt_time}'\n")
    (stubs / "scontrol").write_text(
        f"#!/bin/sh\n[ \"$1\" = show ] && echo c1 && exit 0\necho \"$@\" >> {calls}\n")
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    spec = build_spec({"kind": "training", "command": ["prog"], "job_name": "t",
                       "chdir": str(tmp_path), "checkpoint_dir": str(tmp_path / "ckpt"),
                       "log_dir": str(tmp_path / "logs"), "restart": restart})
    script = tmp_path / "job.sh"
    script.write_text(render_script(spec))
    env = {"PATH": f"{stubs}:/usr/bin:/bin", "HOME": str(tmp_path), "SLURM_JOB_ID": "7",
           "SLURM_JOB_NODELIST": "c1", "SLURM_JOB_NUM_NODES": "1", "SLURM_RESTART_COUNT": "0"}
    result = subprocess.run(["bash", str(script)], env=env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=30, check=False)
    assert result.returncode == exit_status, result.stderr
    made = calls.read_text().split("\n") if calls.exists() else []
    assert ("requeue 7" in made) == requeued, (made, result.stdout)


def test_unit_tests_keep_the_template_cache_out_of_the_real_home(tmp_path_factory):
    """conftest points XDG_CACHE_HOME into pytest's temporary directory; rendering
    caches compiled templates there, so no test writes into ~/.cache."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    assert cache.is_relative_to(tmp_path_factory.getbasetemp()), cache
    render_script(build_spec(SPECS["batch"]))
    assert list((cache / "slurmkit" / "jinja").iterdir())


# ------------------------------------------------------------- each filter, exactly


def test_the_filters_refuse_what_they_cannot_place_by_name():
    from slurmkit.render import env_name, number, sbatch_option

    cases = [
        (lambda: shell_quote("a\0b"), "a NUL byte cannot be passed to a shell command"),
        (lambda: shell_quote(None), "a missing value (None) reached a template"),
        (lambda: sbatch_quote("a\nb"), "'a\\nb' contains a newline, which cannot appear in an "
                                       "#SBATCH line (it would end the line and start a shell "
                                       "command)"),
        (lambda: sbatch_option(5), "5 is not an sbatch option name"),
        (lambda: sbatch_option("No_Such"), "'No_Such' is not an sbatch option name"),
        (lambda: env_name(5), "5 is not an environment variable name"),
        (lambda: env_name("1A"), "'1A' is not an environment variable name"),
        (lambda: number(True), "True is not an integer"),
        (lambda: number("3"), "'3' is not an integer"),
    ]
    for call, message in cases:
        with pytest.raises(RenderError) as raised:
            call()
        assert str(raised.value) == message
    assert sbatch_option("cpus-per-task") == "cpus-per-task" and env_name("_A1") == "_A1"
    assert number(-3) == "-3"


def test_sbatch_options_of_every_kind_and_option():
    from slurmkit.render import sbatch_options

    options = dict(sbatch_options(build_spec({
        "kind": "batch", "command": ["x"], "job_name": "j", "cpus_per_task": 6,
        "mem_per_node_mb": 2048, "time_limit": "10", "constraint": "a100", "exclusive": True,
        "signal": "TERM", "requeue": False}),
        PlacementOptions(switches="2@00:10:00", exclude="c9")))
    assert options["cpus-per-task"] == "6" and options["mem"] == "2048M"
    assert options["switches"] == "2@00:10:00" and options["exclude"] == "c9"
    assert options["constraint"] == "a100" and "exclusive" in options
    assert options["ntasks-per-node"] == "1" and "no-requeue" in options
    # An inference service without replicas runs one task a node; with them, one each.
    service = dict(sbatch_options(build_spec({"kind": "inference", "command": ["serve"]})))
    assert service["ntasks-per-node"] == "1" and "ntasks" not in service
    replicas = dict(sbatch_options(build_spec({"kind": "inference", "command": ["serve"],
                                               "replicas": 3})))
    assert replicas["ntasks"] == "3" and replicas["nodes"] == "3"
    # torchrun starts one launcher a node whatever the tasks asked for.
    torchrun = dict(sbatch_options(build_spec({
        "kind": "training", "command": ["t.py"], "launcher": "torchrun", "gpus_per_node": 4,
        "ntasks_per_node": 4})))
    assert torchrun["ntasks-per-node"] == "1"


def test_torchrun_without_gpus_runs_one_process_a_node():
    script = render_script(build_spec({"kind": "training", "command": ["t.py"],
                                       "launcher": "torchrun"}))
    assert "--nproc-per-node=1 " in script and "--nproc-per-node=2" not in script


def test_the_environment_keeps_newlines_and_strips_block_lines(tmp_path):
    """Templates are shell: no HTML escaping, the final newline kept, block tags
    leave no blank lines or indentation behind."""
    (tmp_path / "batch.sbatch.j2").write_text(
        "#!/bin/bash\n  {% if spec.job_name %}\necho {{ spec.job_name | q }}\n"
        "  {% endif %}\necho {{ '<&>' | q }}\n")
    script = render_script(build_spec({"command": ["x"], "job_name": "j"}),
                           template_dirs_extra=[tmp_path])
    assert script == "#!/bin/bash\necho j\necho '<&>'\n"


def test_the_template_directory_variable_comes_after_the_flag(tmp_path, monkeypatch):
    from slurmkit.render import template_dirs

    flag, variable = tmp_path / "flag", tmp_path / "variable"
    for directory, word in ((flag, "flag"), (variable, "variable")):
        directory.mkdir()
        (directory / "inference.sbatch.j2").write_text(f"#!/bin/bash\necho {word}\n")
        (directory / "batch.sbatch.j2").write_text(f"#!/bin/bash\necho {word}\n")
    (flag / "batch.sbatch.j2").unlink()
    monkeypatch.setenv("SLURMKIT_TEMPLATE_DIR", str(variable))
    assert template_dirs([flag])[:2] == [flag, variable]
    assert render_script(build_spec({"command": ["x"]}), template_dirs_extra=[flag]) == \
        "#!/bin/bash\necho variable\n"
    monkeypatch.delenv("SLURMKIT_TEMPLATE_DIR")
    assert variable not in template_dirs([flag])


def test_template_problems_are_user_errors_naming_the_template(tmp_path, monkeypatch):
    from slurmkit import render

    spec = build_spec({"command": ["x"]})
    (tmp_path / "batch.sbatch.j2").write_text("#!/bin/bash\n{% if %}\n")
    with pytest.raises(UserInputError) as raised:
        render_script(spec, template_dirs_extra=[tmp_path])
    assert str(raised.value).startswith(f"template {tmp_path}/batch.sbatch.j2 line 2: ")
    (tmp_path / "batch.sbatch.j2").write_bytes(b"#!/bin/bash\necho \xff\n")
    with pytest.raises(UserInputError, match=f"^template {tmp_path}/batch.sbatch.j2"):
        render_script(spec, template_dirs_extra=[tmp_path])
    (tmp_path / "batch.sbatch.j2").write_text("#" * (render.MAX_TEMPLATE_BYTES + 1))
    with pytest.raises(UserInputError, match=f"^template {tmp_path}/batch.sbatch.j2"):
        render_script(spec, template_dirs_extra=[tmp_path])
    (tmp_path / "batch.sbatch.j2").unlink()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserInputError) as raised:
        render_script(spec, template_dirs_extra=[empty], template="nope.sbatch.j2")
    searched = ", ".join(str(path) for path in render.template_dirs([empty]))
    assert str(raised.value) == f"template 'nope.sbatch.j2' not found in {searched}"
    for name in ("PACKAGE_TEMPLATES", "SITE_TEMPLATES", "USER_TEMPLATES"):
        monkeypatch.setattr(render, name, tmp_path / "gone")
    with pytest.raises(UserInputError) as raised:
        render_script(spec)
    assert str(raised.value) == (
        "template 'batch.sbatch.j2' not found in any template directory; slurmkit's own "
        f"templates ({tmp_path / 'gone'}) are missing: reinstall slurmkit")


def test_compiled_templates_are_cached_under_the_home_without_xdg(tmp_path, monkeypatch):
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    render_script(build_spec({"command": ["x"]}))
    assert list((tmp_path / ".cache" / "slurmkit" / "jinja").iterdir())


def test_a_template_directory_that_cannot_be_looked_up_is_named(monkeypatch):
    """A name too long for the file system (found by test_cli_fuzz.py) is bad input that
    names the setting, not an internal error."""
    from slurmkit.errors import UserInputError
    from slurmkit.render import template_dirs

    monkeypatch.setenv("SLURMKIT_TEMPLATE_DIR", "9" * 5000)
    with pytest.raises(UserInputError, match="fix --template-dir or SLURMKIT_TEMPLATE_DIR"):
        template_dirs()
