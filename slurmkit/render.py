"""sbatch scripts from Jinja2 templates, quoted at the boundary.

The environment is ``StrictUndefined`` (a missing value is an error, never an empty
string) and every interpolation in a template must end in one of the quoting filters
below — a unit test fails on any that does not:

- ``q``       a shell word (``shlex.quote``), for the script body
- ``argv``    an argv list as shell words
- ``sbatch``  an ``#SBATCH`` value: newline, CR and NUL rejected, then double-quoted
              the way sbatch's own tokenizer reads it (src/sbatch/opt.c: quotes group,
              a backslash escapes the next character, an unquoted '#' ends the line)
- ``sbatch_option``, ``env_name``  names checked against their grammar
- ``number``  an int, refused if it is anything else

Values that Slurm expands as file-name patterns (``--output``) are made literal with
``percent_literal`` (``%`` -> ``%%``) before quoting.

Templates are looked up in the user's directory, then the site's, then the package's,
so a site overrides ``training.sbatch.j2`` without forking slurmkit.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from slurmkit import __version__
from slurmkit.errors import UserInputError
from slurmkit.spec import JobSpec

PACKAGE_TEMPLATES = Path(__file__).parent / "templates"
SITE_TEMPLATES = Path("/etc/slurmkit/templates")
USER_TEMPLATES = Path(os.path.expanduser("~/.config/slurmkit/templates"))
#: Filters that make an interpolation safe; the template test checks each {{ }} ends
#: with one of them.
QUOTING_FILTERS = ("q", "argv", "sbatch", "sbatch_option", "env_name", "number")

_OPTION_RE = re.compile(r"^[a-z][a-z0-9-]*$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class RenderError(UserInputError):
    """A value cannot be placed in a script safely (e.g. a newline in a job name)."""


def shell_quote(value) -> str:
    text = _text(value)
    if "\0" in text:
        raise RenderError("a NUL byte cannot be passed to a shell command")
    return shlex.quote(text)


def shell_argv(values: Iterable) -> str:
    return " ".join(shell_quote(value) for value in values)


def sbatch_quote(value) -> str:
    text = _text(value)
    for bad, name in (("\n", "a newline"), ("\r", "a carriage return"), ("\0", "a NUL byte")):
        if bad in text:
            raise RenderError(f"{text!r} contains {name}, which cannot appear in an #SBATCH "
                              "line (it would end the line and start a shell command)")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def percent_literal(text: str) -> str:
    """Make a path literal for Slurm's file-name patterns (%j, %x...)."""
    return text.replace("%", "%%")


def sbatch_option(name) -> str:
    if not isinstance(name, str) or not _OPTION_RE.match(name):
        raise RenderError(f"{name!r} is not an sbatch option name")
    return name


def env_name(name) -> str:
    if not isinstance(name, str) or not _ENV_NAME_RE.match(name):
        raise RenderError(f"{name!r} is not an environment variable name")
    return name


def number(value) -> str:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RenderError(f"{value!r} is not an integer")
    return str(value)


def _text(value) -> str:
    if value is None:
        raise RenderError("a missing value (None) reached a template")
    return str(value)


# ----------------------------------------------------------------- environment


def template_dirs(extra: Sequence[Path | str] = ()) -> list[Path]:
    """Search path: --template-dir / SLURMKIT_TEMPLATE_DIR, user, site, package."""
    dirs = [Path(path) for path in extra]
    if os.environ.get("SLURMKIT_TEMPLATE_DIR"):
        dirs.append(Path(os.environ["SLURMKIT_TEMPLATE_DIR"]))
    dirs += [USER_TEMPLATES, SITE_TEMPLATES, PACKAGE_TEMPLATES]
    return [path for path in dirs if _is_dir(path)]


def _is_dir(path: Path) -> bool:
    """A missing directory is skipped; one that cannot even be looked up (a name too
    long, a permission error) is an error that names it."""
    try:
        return path.is_dir()
    except OSError as error:
        shown = str(path) if len(str(path)) <= 200 else f"{str(path)[:200]}..."
        raise UserInputError(f"template directory {shown!r}: {error.strerror or error}; "
                             "fix --template-dir or SLURMKIT_TEMPLATE_DIR") from None


def environment(extra_dirs: Sequence[Path | str] = ()):
    import jinja2

    env = jinja2.Environment(
        loader=_bounded_loader([str(path) for path in template_dirs(extra_dirs)]),
        bytecode_cache=_bytecode_cache(),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # shell, not HTML: quoting is the filters' job
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(q=shell_quote, argv=shell_argv, sbatch=sbatch_quote,
                       sbatch_option=sbatch_option, env_name=env_name, number=number,
                       percent_literal=percent_literal)
    return env


#: A template is a few KB; a site's or user's template directory may hold anything.
MAX_TEMPLATE_BYTES = 1 << 20


def _bounded_loader(searchpath: list[str]):
    """Jinja2's FileSystemLoader, reading through ``slurmkit.files``: a template that is
    a FIFO, a device, a symlink loop, bad UTF-8 or over 1 MiB is an error naming it
    (FileSystemLoader would skip a FIFO silently and read any size)."""
    import jinja2
    from jinja2.loaders import split_template_path

    from slurmkit import files

    class BoundedLoader(jinja2.FileSystemLoader):
        def get_source(self, environment, template):
            pieces = split_template_path(template)
            for directory in self.searchpath:
                filename = os.path.join(directory, *pieces)
                if os.path.lexists(filename):
                    break
            else:
                raise jinja2.TemplateNotFound(template)
            text = files.read_text(filename, "template", max_bytes=MAX_TEMPLATE_BYTES)
            mtime = os.path.getmtime(filename)

            def uptodate() -> bool:
                try:
                    return os.path.getmtime(filename) == mtime
                except OSError:
                    return False

            return text, os.path.normpath(filename), uptodate

    return BoundedLoader(searchpath)


def _bytecode_cache():
    """Compiled templates cached per user (keyed by source checksum, so edits are
    seen at once): saves ~40 ms of compilation on every command."""
    import jinja2

    directory = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "slurmkit" / "jinja"
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # read-only home: compile every time
    return jinja2.FileSystemBytecodeCache(str(directory))


# ----------------------------------------------------------------- options


@dataclass(frozen=True)
class PlacementOptions:
    """What placement adds to the submission (see slurmkit.topology.placement)."""

    nodelist: str | None = None  # pin these nodes
    exclude: str | None = None  # never these (unhealthy)
    switches: str | None = None  # "K@HH:MM:SS": at most K leaf switches, wait that long
    node_count: int | None = None  # nodes pinned (elastic jobs get exactly these)


def sbatch_options(spec: JobSpec, placement: PlacementOptions | None = None
                   ) -> list[tuple[str, str | None]]:
    """The #SBATCH options of a spec, in a stable order; None = a flag without value."""
    options: list[tuple[str, str | None]] = [("job-name", spec.job_name)]
    # An elastic job keeps MIN-MAX even when pinned: with --nodelist Slurm allocates
    # exactly the listed nodes now, and a requeued run may still shrink to MIN.
    # Hot spares are part of the allocation (in-place restarts swap them in).
    low, high = spec.allocated_nodes_min, spec.allocated_nodes_max
    options.append(("nodes", f"{low}" if low == high else f"{low}-{high}"))
    if spec.kind == "inference" and spec.replicas:
        options.append(("ntasks", str(spec.replicas)))
    elif spec.kind != "training" or spec.launcher == "srun":
        options.append(("ntasks-per-node", str(spec.tasks_per_node)))
    else:  # torchrun starts one launcher per node
        options.append(("ntasks-per-node", "1"))
    if spec.cpus_per_task:
        options.append(("cpus-per-task", str(spec.cpus_per_task)))
    if spec.gpus_per_node:
        options.append(("gpus-per-node", str(spec.gpus_per_node)))
    if spec.mem_per_node_mb:
        options.append(("mem", f"{spec.mem_per_node_mb}M"))
    if spec.time_limit_min:
        options.append(("time", str(spec.time_limit_min)))
    for key in ("partition", "account", "qos", "constraint"):
        value = getattr(spec, key)
        if value:
            options.append((key, value))
    if spec.exclusive:
        options.append(("exclusive", None))
    options.append(("requeue", None) if spec.requeue else ("no-requeue", None))
    if spec.kind == "training" and spec.restart == "in-place":
        # The allocation outlives a lost node: slurmkit.launch restarts the training
        # step on the survivors instead of Slurm killing (and requeueing) the job.
        options.append(("no-kill", None))
    if spec.signal:
        options.append(("signal", f"{spec.signal}@{spec.signal_lead_s}"))
    if spec.chdir:
        options.append(("chdir", spec.chdir))
    if spec.output:
        options.append(("output", percent_literal(spec.output)))
    else:
        options.append(("output", "%x-%A_%a.out" if spec.array else "%x-%j.out"))
    if spec.requeue:
        # Every run of a requeued job appends to the same file instead of truncating it.
        options.append(("open-mode", "append"))
    if spec.array:
        options.append(("array", spec.array))
    if placement:
        if placement.nodelist:
            options.append(("nodelist", placement.nodelist))
        if placement.switches:
            options.append(("switches", placement.switches))
        if placement.exclude:
            options.append(("exclude", placement.exclude))
    return options


def render_script(spec: JobSpec, placement: PlacementOptions | None = None, *,
                  template_dirs_extra: Sequence[Path | str] = (),
                  template: str | None = None) -> str:
    """The sbatch script for ``spec``; raises RenderError for unplaceable values."""
    import jinja2

    env = environment(template_dirs_extra)
    name = template or f"{spec.kind}.sbatch.j2"
    try:
        return env.get_template(name).render(
            spec=spec,
            sbatch_options=sbatch_options(spec, placement),
            slurmkit_version=__version__,
            log_dir=spec.log_dir or "logs",
            nproc_per_node=spec.nproc_per_node or spec.gpus_per_node or 1,
        )
    except jinja2.TemplateNotFound:
        searched = ", ".join(map(str, template_dirs(template_dirs_extra)))
        if PACKAGE_TEMPLATES.is_dir():
            raise UserInputError(f"template {name!r} not found in {searched}") from None
        raise UserInputError(  # an installation without its package data
            f"template {name!r} not found in {searched or 'any template directory'}; "
            f"slurmkit's own templates ({PACKAGE_TEMPLATES}) are missing: reinstall "
            "slurmkit") from None
    except jinja2.UndefinedError as error:
        raise RenderError(f"template {name}: {error.message}") from None
    except jinja2.TemplateSyntaxError as error:
        raise UserInputError(f"template {error.filename or name} line {error.lineno}: "
                             f"{error.message}") from None

