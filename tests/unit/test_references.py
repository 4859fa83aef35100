"""Comments and docs cite only what a reader of this repository can open: every
repository path they name exists, and no notes file from outside the repository is
cited (the Slurm facts the code relies on are in docs/slurm-notes.md)."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOPS = ("slurmkit", "job_submit", "spank", "docker-slurm", "tests", "bench", "docs",
        "examples")
SUFFIXES = {".py", ".c", ".h", ".md", ".j2", ".conf", ".toml", ".yml", ".sh", ".lds", ""}
# A path inside the repository, not inside a container (/opt/slurmkit/...), and not a
# pattern (timeouts-NAME.conf).
_PATH_RE = re.compile(r"(?<![/\w.-])((?:%s)/[A-Za-z0-9_./-]*\.(?:py|md|c|conf|toml|j2|sh|yml))\b"
                      % "|".join(map(re.escape, TOPS)))
_OUTSIDE_RE = re.compile(r"SLURM-NOTES|STYLE\.md|\.\./shared|/work/shared")


def _sources():
    for top in ("Makefile", "README.md", "pyproject.toml"):
        yield REPO / top
    for top in TOPS:
        for path in sorted((REPO / top).rglob("*")):
            if path.is_file() and path.suffix in SUFFIXES and "__pycache__" not in path.parts \
                    and "data" not in path.relative_to(REPO).parts[:3] \
                    and path != Path(__file__):
                yield path


def _cited():
    for path in _sources():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            yield path.relative_to(REPO), number, line


def test_no_notes_file_from_outside_the_repository_is_cited():
    found = [f"{path}:{number}: {line.strip()}" for path, number, line in _cited()
             if _OUTSIDE_RE.search(line)]
    assert not found, "cite docs/slurm-notes.md (or another file in docs/) instead:\n" + \
        "\n".join(found)


def test_every_repository_path_named_in_comments_and_docs_exists():
    missing = [f"{path}:{number}: {match}" for path, number, line in _cited()
               for match in _PATH_RE.findall(line)
               if not re.search(r"[A-Z]{3,}", Path(match).name) and not (REPO / match).exists()]
    assert not missing, "\n".join(missing)


@pytest.mark.parametrize("line, expected", [
    ("see docs/slurm-notes.md", ["docs/slurm-notes.md"]),
    ("bench/recovery.py runs here", ["bench/recovery.py"]),
    ('"/opt/slurmkit/examples/policy/policy.toml"', []),
    ("src/plugins/job_submit/lua/job_submit_lua.c", []),
])
def test_the_path_pattern(line, expected):
    assert _PATH_RE.findall(line) == expected
