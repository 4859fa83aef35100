"""The wheel as a user gets it: built from this checkout, installed into a fresh venv
outside it, and run from a directory outside it (issue 13: an installed slurmkit could
not render, its templates were not in the wheel).

No network: the wheel is built without build isolation (setuptools comes from the
dev venv) and installed with ``--no-deps --no-index``; the fresh venv sees the dev
venv's site-packages for slurmkit's dependencies only, the way ``--system-site-packages``
would, and the test checks that ``slurmkit`` itself is imported from the wheel.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import pytest

from tests.unit.test_render import GOLDEN

REPO = Path(__file__).resolve().parents[2]
DATA = Path(__file__).parent / "data"
#: Building, installing and the three commands take about 10 s on the 2-core machine.
BUDGET_S = 45


def _run(argv, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, **kwargs)
    assert result.returncode == 0, f"{argv} exited {result.returncode}:\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv, wheel, seconds): the wheel built from a copy of the checkout (so the
    build leaves nothing in it) and installed into a fresh venv."""
    started = time.monotonic()
    root = tmp_path_factory.mktemp("wheel")
    source = root / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "slurmkit", source / "slurmkit",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-index",
          "--no-build-isolation", "--wheel-dir", str(root / "dist"), str(source)])
    (wheel,) = (root / "dist").glob("slurmkit-*.whl")

    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
          "--no-deps", "--no-index", str(wheel)])
    purelib = Path(_run([str(python), "-c", "import sysconfig; "
                         "print(sysconfig.get_path('purelib'))"]).stdout.strip())
    # The dependencies (click, jinja2, numpy...) from the dev venv: a plain path line,
    # so that venv's own .pth files (the editable slurmkit) are not processed.
    dev_paths = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib"),
                 *site.getsitepackages()}
    (purelib / "zz_dev_dependencies.pth").write_text(
        "".join(f"{path}\n" for path in sorted(dev_paths)), encoding="utf-8")
    return venv, wheel, purelib, started


@pytest.fixture
def outside(tmp_path):
    """A working directory and environment with nothing of the checkout in them."""
    home = tmp_path / "home"
    home.mkdir()
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("PYTHON", "SLURMKIT_", "SBATCH_", "SLURM_", "VIRTUAL_ENV"))}
    env.update(HOME=str(home), XDG_CACHE_HOME=str(tmp_path / "cache"),
               PATH=os.pathsep.join(part for part in env.get("PATH", "").split(os.pathsep)
                                    if not part.startswith(str(REPO))))
    return tmp_path, env


def test_the_installed_wheel_renders_and_reports(installed, outside):
    venv, _wheel, purelib, started = installed
    cwd, env = outside
    slurmkit = str(venv / "bin" / "slurmkit")

    where = _run([str(venv / "bin" / "python"), "-c", "import slurmkit.render as r; "
                  "print(r.__file__); print(r.PACKAGE_TEMPLATES)"], cwd=cwd, env=env)
    module_file, templates = where.stdout.split("\n")[:2]
    assert Path(module_file).is_relative_to(purelib), module_file
    assert Path(templates).is_relative_to(purelib), templates

    # The same script as the golden file, from the installed templates.
    script = _run([slurmkit, "render", "--kind", "batch", "-J", "sft-sweep", "--array",
                   "0-15%4", "-t", "2:00:00", "-D", "/shared/sft", "--", "python", "sft.py"],
                  cwd=cwd, env=env).stdout
    assert script == (GOLDEN / "batch.sbatch").read_text(encoding="utf-8")
    training = _run([slurmkit, "render", "--kind", "training", "-N", "2", "--checkpoint-dir",
                     "/shared/ckpt", "--", "python", "train.py"], cwd=cwd, env=env).stdout
    assert "#SBATCH --no-kill" in training and "slurmkit.launch" in training

    # goodput from a saved dump outside the checkout, as the checkout's own code reads it.
    dump = cwd / "sacct.txt"
    shutil.copy2(DATA / "sacct_scenarios_parsable2.txt", dump)  # `|` and non-ASCII in names
    report = _run([slurmkit, "goodput", "--input", str(dump), "--format", "json"],
                  cwd=cwd, env=env).stdout
    expected = _run([sys.executable, "-m", "slurmkit", "goodput", "--input", str(dump),
                     "--format", "json"], cwd=REPO).stdout
    installed_report, checkout_report = _timeless(report), _timeless(expected)
    assert installed_report == checkout_report
    assert installed_report["jobs"], "the dump's jobs are in the report"
    elapsed = time.monotonic() - started
    print(f"wheel build + install + 4 commands: {elapsed:.1f} s")
    assert elapsed < BUDGET_S


def _timeless(text: str):
    """A JSON report without its clocks: the time it took, and "now" (the report's
    time, which also ends the runs still going) as NOW."""
    document = json.loads(text)
    now = document.pop("generated_epoch_s")
    document["ingest"].pop("ingest_seconds")

    def strip(value):
        if isinstance(value, dict):
            return {key: strip(item) for key, item in value.items()}
        if isinstance(value, list):
            return [strip(item) for item in value]
        return "NOW" if value == now and not isinstance(value, bool) else value

    return strip(document)


def test_the_wheel_holds_the_package_and_no_test_harness(installed):
    """Every module and template of slurmkit/ is in the wheel, slurmkit.testing (which
    needs the checkout's docker-slurm/) is not, and no module in the wheel imports a
    slurmkit module the wheel lacks (slurmkit.testing above all)."""
    _venv, wheel, purelib, _ = installed
    with zipfile.ZipFile(wheel) as archive:
        in_wheel = {name for name in archive.namelist() if name.startswith("slurmkit/")}
    in_checkout = {path.relative_to(REPO).as_posix() for path in (REPO / "slurmkit").rglob("*")
                   if path.is_file() and path.suffix in (".py", ".j2")
                   and "__pycache__" not in path.parts}
    harness = {name for name in in_checkout if name.startswith("slurmkit/testing/")}
    assert harness, "the checkout has the harness"
    assert in_wheel == in_checkout - harness
    assert not (purelib / "slurmkit" / "testing").exists()

    modules = {name.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
               for name in in_wheel if name.endswith(".py")}
    packages = {name.rsplit("/", 1)[0].replace("/", ".") for name in in_wheel}
    missing = []
    for name in sorted(in_wheel):
        if not name.endswith(".py"):
            continue
        tree = ast.parse((purelib / name).read_text(encoding="utf-8"), name)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                # `from slurmkit import testing` names a module too.
                targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names
                                           if f"{node.module}.{alias.name}".startswith(
                                               "slurmkit.testing")]
            else:
                continue
            for target in targets:
                if target.split(".")[0] == "slurmkit" and (
                        target.startswith("slurmkit.testing")
                        or target not in modules | packages):
                    missing.append(f"{name}:{node.lineno} imports {target}")
    assert not missing, missing


def test_the_installed_package_has_no_test_harness(installed, outside):
    venv, *_ = installed
    cwd, env = outside
    found = _run([str(venv / "bin" / "python"), "-c", "import importlib.util; "
                  "print(importlib.util.find_spec('slurmkit.testing'))"], cwd=cwd, env=env)
    assert found.stdout.strip() == "None"
