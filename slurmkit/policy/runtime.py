"""What the job_submit/python shim calls inside slurmctld.

``PolicyRuntime`` holds the current configuration and reloads it when its file
changes; a configuration that fails to load leaves the previous one serving (logged
to slurmctld's log through the shim's ``_slurm`` module). Calls must be fast: they
run under slurmctld's job lock (SLURM-NOTES.md: a slow policy stalls every writer).

A call does not stat the configuration: the shim watches the directory (inotify) and
calls ``files_changed`` when something in it changed; a configuration kept elsewhere
is still checked every ``FALLBACK_CHECK_S``.
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
    try:
        import _slurm  # provided by the shim inside slurmctld
    except ImportError:
        return
    getattr(_slurm, level)(text)


class PolicyRuntime:
    def __init__(self, config_path: str):
        self.path = config_path
        self.config: config_module.PolicyConfig | None = None
        self._mtime_ns: int | None = None
        self._failed_mtime_ns: int | None = None
        self._users: dict[int, tuple[str, float]] = {}
        self._checked_at = time.monotonic()
        self._refresh()
        if self.config is None:  # first load failed: make the module load fail
            raise RuntimeError(f"policy configuration {self.path} could not be loaded")

    def _refresh(self) -> None:
        try:
            mtime_ns = os.stat(self.path).st_mtime_ns
        except OSError as error:
            if self.config is None:
                raise RuntimeError(f"policy configuration {self.path}: {error}") from None
            return  # removed while serving: keep the policy we have
        if mtime_ns in (self._mtime_ns, self._failed_mtime_ns):
            return
        try:
            loaded = config_module.load(self.path)
        except SlurmkitError as error:
            self._failed_mtime_ns = mtime_ns
            if self.config is None:
                raise RuntimeError(str(error)) from None
            _log("error", f"{error}; the previous policy keeps serving")
            return
        self.config = loaded
        self._mtime_ns = mtime_ns
        self._failed_mtime_ns = None
        _log("info", f"policy configuration {self.path} loaded: queues "
                     f"{', '.join(loaded.queues)}, classes {', '.join(loaded.classes)}")

    def user_name(self, uid: Any) -> str:
        if not isinstance(uid, int):
            return ""
        now = time.monotonic()
        cached = self._users.get(uid)
        if cached and now - cached[1] < _USER_CACHE_TTL_S:
            return cached[0]
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = ""
        self._users[uid] = (name, now)
        return name

    def files_changed(self) -> None:
        """Called by the shim when the watched directory changed."""
        self._checked_at = time.monotonic()
        self._refresh()

    def _maybe_refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked_at >= FALLBACK_CHECK_S:
            self._checked_at = now
            self._refresh()

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
