"""``make mutation``: mutation testing of the pure core, and the hand-made mutations.

1. mutmut (configured in pyproject.toml's ``[tool.mutmut]``) mutates the modules in
   MODULES and runs, for each mutant, the unit tests that call the mutated function
   (never tests/cluster: the selection there names unit test files only). Printed: per
   module, the mutants, how many the tests killed, and the kill percentage; the run
   fails when a module is below THRESHOLD_PERCENT.
2. Every surviving mutant must be listed, with the reason it is equivalent or
   acceptable, in SURVIVORS_DOC (docs/mutation.md): a survivor that is not is printed
   and fails the run, so a new survivor is either killed by a test or explained.
3. The hand-made mutations of issue 12 (worst fit, ETTR as the badput share, ...),
   each applied to a copy of the checkout, must each fail some unit test.

    python -m slurmkit.testing.mutation [--module NAME ...] [--resume] [--max-children N]
                                         [--no-hand] [--hand-only]

Without ``--resume`` the previous results (mutants/) are removed first: mutmut keeps a
survivor's verdict until its function changes, so a test added since would not count.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MUTANTS = ROOT / "mutants"
SURVIVORS_DOC = ROOT / "docs" / "mutation.md"
THRESHOLD_PERCENT = 85.0
#: The modules mutated (pyproject.toml's only_mutate lists the same files).
MODULES = {
    "placement": "slurmkit/topology/placement.py",
    "decide": "slurmkit/policy/decide.py",
    "engine": "slurmkit/goodput/engine.py",
    "store": "slurmkit/ckpt/store.py",
    "render": "slurmkit/render.py",
}
#: mutmut's exit codes (mutmut/stats.py): the tests failed (1; 3 is pytest's internal
#: error), ran out of their CPU time (timeout: the mutant loops), or the test process
#: died. Each is a detected mutant.
_KILLED = {1, 3}
_TIMEOUT = {-24, 24, 152, 255, 36}
_CRASHED = {-11, -9}
_SURVIVED = 0
_NO_TESTS = {5, 33}
_MUTANT_NAME = re.compile(r"\bslurmkit\.[A-Za-z0-9_.]+__mutmut_[0-9]+\b")


@dataclass
class ModuleResult:
    name: str
    path: str
    total: int = 0
    killed: int = 0
    timeout: int = 0
    crashed: int = 0
    survived: int = 0
    no_tests: int = 0
    not_checked: int = 0
    survivors: tuple[str, ...] = ()

    @property
    def detected(self) -> int:
        return self.killed + self.timeout + self.crashed

    @property
    def percent(self) -> float:
        # A mutant without tests counts against the score, as a survivor does.
        return 100.0 * self.detected / self.total if self.total else 0.0


def read_results(modules: dict[str, str]) -> list[ModuleResult]:
    """Per module, the verdicts mutmut saved in mutants/<path>.meta."""
    results = []
    for name, path in modules.items():
        meta = MUTANTS / (path + ".meta")
        result = ModuleResult(name, path)
        if not meta.exists():
            results.append(result)
            continue
        verdicts = json.loads(meta.read_text())["exit_code_by_key"]
        survivors = []
        for mutant, code in sorted(verdicts.items(), key=lambda item: _natural(item[0])):
            result.total += 1
            if code is None:
                result.not_checked += 1
            elif code in _KILLED:
                result.killed += 1
            elif code in _TIMEOUT:
                result.timeout += 1
            elif code in _CRASHED:
                result.crashed += 1
            elif code in _NO_TESTS:
                result.no_tests += 1
                survivors.append(mutant)
            else:  # 0, and anything mutmut calls suspicious
                result.survived += 1
                survivors.append(mutant)
        result.survivors = tuple(survivors)
        results.append(result)
    return results


def _natural(mutant: str) -> tuple[str, int]:
    stem, _, number = mutant.rpartition("__mutmut_")
    return stem, int(number) if number.isdigit() else 0


def table(results: list[ModuleResult]) -> str:
    lines = [f"{'module':<34} {'mutants':>7} {'killed':>6} {'timeout':>7} "
             f"{'survived':>8} {'no tests':>8} {'killed %':>8}"]
    total = ModuleResult("total", "")
    for result in results:
        lines.append(f"{result.path:<34} {result.total:>7} {result.killed + result.crashed:>6} "
                     f"{result.timeout:>7} {result.survived:>8} {result.no_tests:>8} "
                     f"{result.percent:>7.1f}%")
        for key in ("total", "killed", "timeout", "crashed", "survived", "no_tests"):
            setattr(total, key, getattr(total, key) + getattr(result, key))
    lines.append(f"{'total':<34} {total.total:>7} {total.killed + total.crashed:>6} "
                 f"{total.timeout:>7} {total.survived:>8} {total.no_tests:>8} "
                 f"{total.percent:>7.1f}%")
    return "\n".join(lines)


_ROW = re.compile(r"^\| `(?P<name>slurmkit\.[^`]+__mutmut_[0-9]+)` \|(?P<change>.*)\|"
                  r"(?P<why>[^|]*)\|$")
_RESULTS_BEGIN, _RESULTS_END = "<!-- results: begin -->", "<!-- results: end -->"
_SURVIVORS_BEGIN = "<!-- survivors: generated by `python -m slurmkit.testing.mutation " \
    "--write-doc`, which keeps the reasons written here -->"


def documented_survivors(text: str) -> dict[str, str]:
    """Mutant name -> the reason SURVIVORS_DOC gives (rows without one are left out)."""
    reasons = {}
    for line in text.splitlines():
        match = _ROW.match(line.strip())
        if match and match["why"].strip() and not match["why"].strip().startswith("TODO"):
            reasons[match["name"]] = match["why"].strip()
    return reasons


def _change_of(mutant: str, path: str) -> str:
    """The mutated line(s), old -> new, from mutmut's diff (run from ROOT)."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    diff = get_diff_for_mutant(mutant, path=path).splitlines()
    old = [line[1:].strip() for line in diff if line.startswith("-") and not line.startswith("---")]
    new = [line[1:].strip() for line in diff if line.startswith("+") and not line.startswith("+++")]

    def cell(lines: list[str]) -> str:
        text = " ".join(lines)
        text = text if len(text) <= 90 else text[:87] + "..."
        return "`" + text.replace("|", "\\|").replace("`", "'") + "`" if text else "(removed)"

    return f"{cell(old)} → {cell(new)}"


def write_doc(results: list[ModuleResult], elapsed_s: float | None) -> None:
    """Regenerate SURVIVORS_DOC's results table and survivor rows, keeping every reason
    already written; a new survivor gets "TODO" (which fails the check until explained)."""
    text = SURVIVORS_DOC.read_text() if SURVIVORS_DOC.exists() else (
        f"# Mutation testing\n\n{_RESULTS_BEGIN}\n{_RESULTS_END}\n\n{_SURVIVORS_BEGIN}\n")
    reasons = documented_survivors(text)
    head, _, _ = text.partition(_SURVIVORS_BEGIN)
    before, _, rest = head.partition(_RESULTS_BEGIN)
    _, _, after = rest.partition(_RESULTS_END)
    timing = f"\n`make mutation` took {elapsed_s / 60:.0f} min.\n" if elapsed_s else ""
    block = f"{_RESULTS_BEGIN}\n```\n{table(results)}\n```\n{timing}{_RESULTS_END}"
    cwd = os.getcwd()
    os.chdir(ROOT)  # mutmut reads its configuration and mutants/ from the current directory
    try:
        lines = []
        for result in results:
            lines += ["", f"### {result.path} ({len(result.survivors)} of {result.total})", "",
                      "| mutant | change | why |", "|---|---|---|"]
            for mutant in result.survivors:
                lines.append(f"| `{mutant}` | {_change_of(mutant, result.path)} | "
                             f"{reasons.get(mutant, 'TODO')} |")
    finally:
        os.chdir(cwd)
    SURVIVORS_DOC.write_text(before + block + after + _SURVIVORS_BEGIN + "\n"
                             + "\n".join(lines) + "\n")


def run_mutmut(modules: dict[str, str], *, max_children: int, resume: bool) -> int:
    if not resume and MUTANTS.exists():
        shutil.rmtree(MUTANTS)
    argv = [str(Path(sys.executable).with_name("mutmut")), "run",
            "--max-children", str(max_children)]
    if modules != MODULES:
        argv += [f"{_dotted(path)}.*" for path in modules.values()]
    # mutmut draws a progress line per mutant: keep the log, show the summary.
    MUTANTS.mkdir(exist_ok=True)
    log = MUTANTS / "run.log"
    with open(log, "w") as stream:
        code = subprocess.run(argv, cwd=ROOT, stdout=stream, stderr=subprocess.STDOUT,
                              check=False).returncode
    if code:
        print(log.read_text()[-4000:], file=sys.stderr)
    return code


def _dotted(path: str) -> str:
    return path.removesuffix(".py").replace("/", ".")


# ------------------------------------------------------------ hand-made mutations


@dataclass(frozen=True)
class HandMutation:
    """One deliberate bug: each ``(old, new)`` of ``edits`` replaces the one
    occurrence of ``old`` in ``path``; some test of ``tests`` must then fail."""

    name: str
    path: str
    edits: tuple[tuple[str, str], ...]
    tests: tuple[str, ...]


_VALUE_FSYNC = """        stream.flush()
        os.fsync(stream.fileno())
    entry.update("""
_MANIFEST_FSYNC = """            json.dump(manifest, stream, indent=1, sort_keys=True)
            stream.flush()
            os.fsync(stream.fileno())"""
_WRITE_FILES = ("        files = {entry: _write_value(temp / entry, value) "
                "for entry, value in values.items()}\n")
_COMMIT = "        _fsync_dir(temp)\n        try:\n"

#: Issue 12's hand-made mutations that survived the unit tests before it.
HAND_MUTATIONS = (
    HandMutation("worst fit instead of best fit across leaves",
                 "slurmkit/topology/placement.py",
                 (("last = min(rest, key=", "last = max(rest, key="),),
                 ("tests/unit/test_topology.py",)),
    HandMutation("ETTR (totals) replaced by the badput share", "slurmkit/goodput/engine.py",
                 (('"ettr": round(productive[code] / wall[code], 4)',
                   '"ettr": round((wall[code] - productive[code]) / wall[code], 4)'),),
                 ("tests/unit/test_goodput.py",)),
    HandMutation("ETTR (per job) replaced by the badput share", "slurmkit/goodput/report.py",
                 (('numbers("ettr", productive / np.where(wall > 0, wall, 1)',
                   'numbers("ettr", (wall - productive) / np.where(wall > 0, wall, 1)'),),
                 ("tests/unit/test_goodput.py",)),
    HandMutation("GPU-weighted ETTR unweighted", "slurmkit/goodput/engine.py",
                 (("round(gpu_productive[code] / gpu_wall[code], 4)",
                   "round(productive[code] / wall[code], 4)"),),
                 ("tests/unit/test_goodput.py",)),
    HandMutation("a job's nice < 0 -> <= 0", "slurmkit/policy/decide.py",
                 (("nice < 0:\n        return reject(\"a negative --nice",
                   "nice <= 0:\n        return reject(\"a negative --nice"),),
                 ("tests/unit/test_policy.py",)),
    HandMutation("an update's nice < 0 -> <= 0", "slurmkit/policy/decide.py",
                 (("nice < 0:\n        return reject(\"a negative nice",
                   "nice <= 0:\n        return reject(\"a negative nice"),),
                 ("tests/unit/test_policy.py",)),
    HandMutation("no fsync of a value's file", "slurmkit/ckpt/store.py",
                 ((_VALUE_FSYNC, _VALUE_FSYNC.replace("os.fsync(stream.fileno())", "pass")),),
                 ("tests/unit/test_ckpt_store.py",)),
    HandMutation("no fsync of the manifest", "slurmkit/ckpt/store.py",
                 ((_MANIFEST_FSYNC, _MANIFEST_FSYNC.replace("os.fsync(stream.fileno())",
                                                            "pass")),),
                 ("tests/unit/test_ckpt_store.py",)),
    HandMutation("no fsync of the directories", "slurmkit/ckpt/store.py",
                 (("        os.fsync(fd)\n", "        pass\n"),),
                 ("tests/unit/test_ckpt_store.py",)),
    # The entries are computed by a first write whose files are removed again; the
    # manifest is then written before the files it lists.
    HandMutation("manifest written first", "slurmkit/ckpt/store.py",
                 ((_WRITE_FILES, _WRITE_FILES + "        for name in files:\n"
                                               "            os.unlink(temp / name)\n"),
                  (_COMMIT, "        for name, value in values.items():\n"
                            "            _write_value(temp / name, value)\n" + _COMMIT)),
                 ("tests/unit/test_ckpt_store.py",)),
    HandMutation("a carriage return accepted in #SBATCH values", "slurmkit/render.py",
                 (('("\\r", "a carriage return"), ', ""),),
                 ("tests/unit/test_render.py",)),
    HandMutation("_claim always true", "slurmkit/ckpt/manager.py",
                 (('        """True: we write. False: someone else committed ``step`` '
                   'meanwhile."""\n',
                   '        """True: we write. False: someone else committed ``step`` '
                   'meanwhile."""\n        return True\n'),),
                 ("tests/unit/test_ckpt_manager.py",)),
)


def run_hand_mutations(mutations=HAND_MUTATIONS) -> list[tuple[HandMutation, bool, float]]:
    """(mutation, killed, seconds) for each, each in a fresh copy of the checkout."""
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="slurmkit-hand-mutation-") as scratch:
        copy = Path(scratch) / "checkout"
        for mutation in mutations:
            if copy.exists():
                shutil.rmtree(copy)
            _copy_checkout(copy)
            target = copy / mutation.path
            source = target.read_text()
            for old, new in mutation.edits:
                if source.count(old) != 1:
                    raise SystemExit(f"hand mutation {mutation.name!r}: {old!r} occurs "
                                     f"{source.count(old)} times in {mutation.path}, not once: "
                                     "update HAND_MUTATIONS")
                source = source.replace(old, new)
            target.write_text(source)
            started = time.monotonic()
            # `python -m pytest` puts the copy first on sys.path: its slurmkit is the one
            # imported, not the checkout's. Exit 1: a test failed (2-4: the run broke).
            code = subprocess.run(
                [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:xdist",
                 "-p", "no:cacheprovider", *mutation.tests],
                cwd=copy, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(copy)}, check=False).returncode
            outcomes.append((mutation, code == 1, time.monotonic() - started))
    return outcomes


def _copy_checkout(destination: Path) -> None:
    ignore = shutil.ignore_patterns(".venv", "mutants", ".git", "__pycache__", ".hypothesis",
                                    "*.egg-info", "build", "dist", ".pytest_cache", "reports",
                                    "docker-slurm")
    shutil.copytree(ROOT, destination, ignore=ignore, symlinks=True)


# ------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", action="append", choices=sorted(MODULES),
                        help="mutate only this module (repeatable; default: all)")
    parser.add_argument("--resume", action="store_true",
                        help="keep mutants/ and test only the mutants without a verdict")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--no-hand", action="store_true", help="skip the hand-made mutations")
    parser.add_argument("--hand-only", action="store_true",
                        help="only the hand-made mutations")
    parser.add_argument("--report-only", action="store_true",
                        help="print the results in mutants/ without running anything")
    parser.add_argument("--write-doc", action="store_true",
                        help=f"update {SURVIVORS_DOC.relative_to(ROOT)} from the results "
                        "(keeps the reasons written there)")
    options = parser.parse_args(argv)
    modules = {name: MODULES[name] for name in options.module} if options.module else MODULES
    failed = False
    if not options.hand_only:
        started = time.monotonic()
        if not options.report_only:
            code = run_mutmut(modules, max_children=options.max_children,
                              resume=options.resume)
            if code:
                print(f"mutmut failed (exit {code}); its log: mutants/run.log", file=sys.stderr)
                return 1
        elapsed_s = None if options.report_only else time.monotonic() - started
        results = read_results(modules)
        print(table(results))
        if options.write_doc:  # every module's results, so that no section is dropped
            write_doc(read_results(MODULES), elapsed_s)
        documented = documented_survivors(SURVIVORS_DOC.read_text()) \
            if SURVIVORS_DOC.exists() else set()
        for result in results:
            if result.not_checked:
                print(f"{result.path}: {result.not_checked} mutants not checked (interrupted?)")
                failed = True
            if result.percent < THRESHOLD_PERCENT:
                print(f"{result.path}: {result.percent:.1f}% killed, below "
                      f"{THRESHOLD_PERCENT:.0f}%")
                failed = True
            unexplained = [m for m in result.survivors if m not in documented]
            gaps = [m for m in result.survivors
                    if documented.get(m, "").lower().startswith(("gap", "no unit test"))]
            if gaps:  # listed, above the threshold, and still tests to write
                print(f"{result.path}: {len(gaps)} survivors are known test gaps "
                      f"(docs/mutation.md says what would kill each)")
            if unexplained:
                failed = True
                print(f"{result.path}: {len(unexplained)} surviving mutants not explained in "
                      f"{SURVIVORS_DOC.relative_to(ROOT)} (see each: .venv/bin/mutmut show NAME):")
                for mutant in unexplained:
                    print(f"  {mutant}")
    if not options.no_hand and not options.report_only:
        for mutation, killed, seconds in run_hand_mutations():
            print(f"hand mutation: {mutation.name}: "
                  f"{'killed' if killed else 'SURVIVED'} ({seconds:.0f} s)")
            failed |= not killed
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
