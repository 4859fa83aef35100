"""What the job_submit/python shim calls inside slurmctld.

``PolicyRuntime`` holds the current configuration and reloads it when its file
changes. Whatever goes wrong with a reload (a file that is missing, unreadable, not
UTF-8, not TOML, of the wrong shape, nested too deeply, or a bug in the loader), the
previous configuration keeps serving and the failure is logged to slurmctld's log
(through the shim's ``_slurm`` module) once per change of the file: no call ever
raises because of the configuration file, so the shim's fail mode (which, open,
accepts jobs unpoliced) never applies to a bad reload. Only the very first load, when
there is no previous configuration, fails (the module then fails to load and the
shim's fail mode applies, as documented there).

Calls must be fast: they run under slurmctld's job lock, and a slow policy stalls
every writer (docs/slurm-notes.md, "Inside slurmctld"). A call does not stat the
configuration: the shim watches the directory (inotify) and calls ``files_changed``
when something in it changed; a configuration kept elsewhere is still checked every
``FALLBACK_CHECK_S``.
"""

from __future__ import annotations

import os
import pwd
import time
from typing import Any

from slurmkit.errors import SlurmkitError
from slurmkit.policy import config as config_module
from slurmkit.policy.decide import decide, decide_modify

_USER_CACHE_TTL_S = 600.0
FALLBACK_CHECK_S = 5.0


def _log(level: str, text: str) -> None:
    """Log through slurmctld (a no-op outside it). Never raises: a log line that
    cannot be written must not turn into a failed call."""
    try:
        import _slurm  # provided by the shim inside slurmctld
    except ImportError:
        return
    try:
        # The shim's "s" format needs encodable text (no lone surrogates).
        getattr(_slurm, level)(text.encode("utf-8", "backslashreplace").decode("utf-8"))
    except Exception:  # noqa: BLE001 - logging is best effort by contract
        pass


def _file_identity(info: os.stat_result) -> tuple[int, ...]:
    """What tells one version of the file from another: a rewrite in place changes the
    size or times, an atomic replace (rename) the inode."""
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


class PolicyRuntime:
    """Thread safety: the shim calls it under one lock; not safe without one."""

    def __init__(self, config_path: str):
        self.path = config_path
        self.config: config_module.PolicyConfig | None = None
        self._identity: tuple[int, ...] | None = None       # of the version serving
        self._failed: tuple[Any, ...] | None = None           # of the last failure logged
        self._users: dict[int, tuple[str, float]] = {}
        self._checked_at = time.monotonic()
        self._refresh()
        if self.config is None:  # first load failed: make the module load fail
            raise RuntimeError(f"policy configuration {self.path} could not be loaded")

    def _refresh(self) -> None:
        """Load the file if it changed. Never raises once a configuration serves."""
        try:
            identity = _file_identity(os.stat(self.path))
        except (OSError, ValueError) as error:
            if self.config is None:
                raise RuntimeError(f"policy configuration {self.path}: {error}") from None
            self._fail(("stat", type(error).__name__, getattr(error, "errno", None)),
                       f"policy configuration {self.path} cannot be read ({error})")
            return  # removed while serving: keep the policy we have
        if identity == self._identity or ("load", identity) == self._failed:
            return
        try:
            loaded = config_module.load(self.path)
        except Exception as error:  # noqa: BLE001 - any failure keeps the old policy
            if isinstance(error, SlurmkitError):
                reason = str(error)
            else:  # a loader bug, not the admin's file: say so
                reason = (f"loading {self.path} failed with {type(error).__name__}: {error} "
                          "(a slurmkit bug: please report it)")
            if self.config is None:
                raise RuntimeError(reason) from None
            self._fail(("load", identity), reason)
            return
        self.config = loaded
        self._identity = identity
        self._failed = None
        _log("info", f"policy configuration {self.path} loaded: queues "
                     f"{', '.join(loaded.queues)}, classes {', '.join(loaded.classes)}")

    def _fail(self, key: tuple[Any, ...], reason: str) -> None:
        """Log a failed reload once per version of the file (not on every call)."""
        if key == self._failed:
            return
        self._failed = key
        _log("error", f"{reason}; the previous policy (loaded from {self.path}) keeps "
                      "serving until the file is fixed")

    def user_name(self, uid: Any) -> str:
        if not isinstance(uid, int):
            return ""
        now = time.monotonic()
        cached = self._users.get(uid)
        if cached and now - cached[1] < _USER_CACHE_TTL_S:
            return cached[0]
        try:
            name = pwd.getpwuid(uid).pw_name
        except (KeyError, OverflowError, ValueError):
            name = ""
        self._users[uid] = (name, now)
        return name

    def files_changed(self) -> None:
        """Called by the shim when the watched directory changed. Never raises."""
        self._checked_at = time.monotonic()
        self._safe_refresh()

    def _maybe_refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked_at >= FALLBACK_CHECK_S:
            self._checked_at = now
            self._safe_refresh()

    def _safe_refresh(self) -> None:
        # _refresh raises only while nothing serves (construction); this guard keeps a
        # reload problem out of job_submit/job_modify whatever happens.
        try:
            self._refresh()
        except Exception as error:  # noqa: BLE001 - see above
            self._fail(("refresh", type(error).__name__),
                       f"checking {self.path} failed ({type(error).__name__}: {error})")

    def job_submit(self, job_desc: dict, submit_uid: int) -> dict:
        self._maybe_refresh()
        job = dict(job_desc)
        job["user"] = self.user_name(job.get("user_id"))
        return decide(self.config, job, submit_uid).to_dict()

    def job_modify(self, job_desc: dict, submit_uid: int) -> dict:
        self._maybe_refresh()
        update = dict(job_desc)
        update["user"] = self.user_name(submit_uid)
        return decide_modify(self.config, update, submit_uid).to_dict()
