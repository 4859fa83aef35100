"""Installing a policy on the controller (run there, as root or SlurmUser).

Order matters: QOS must exist in slurmdbd before slurmctld reads partitions that name
them (a missing partition QOS is fatal at start: docs/slurm-notes.md), and the plugin
must exist before slurm.conf asks for it. Files are written atomically (temp file +
rename) so slurmctld never reads half a file.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from slurmkit.errors import SlurmCommandError, UserInputError
from slurmkit.policy import config as config_module
from slurmkit.policy.config import PolicyConfig
from slurmkit.policy.slurmconf import (
    render_entry_module,
    render_fragment,
    render_shim_conf,
    sacctmgr_plan,
)
from slurmkit.slurm.client import SlurmClient

PLUGIN_FILE = "job_submit_python.so"
#: Cluster names as sacctmgr takes them in ``cluster=NAME`` (no ',' or blank: a list
#: or a second argument).
_CLUSTER_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
DEFAULT_FRAGMENT = ("# Default partitions (no slurmkit policy installed).\n"
                    "PartitionName=main Nodes=ALL Default=YES MaxTime=INFINITE State=UP\n")


def write_atomically(path: Path, text: str, mode: int = 0o644) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as error:  # --conf-dir is a file, a FIFO, not writable...
        raise UserInputError(f"cannot write {path}: {error.strerror or error}; check "
                             "--conf-dir") from None
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise


def slurm_config(client: SlurmClient) -> dict[str, str]:
    """``scontrol show config`` as a dict (``Key = Value`` lines)."""
    values = {}
    for line in client.run(["scontrol", "show", "config"]).stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip()
    return values


def install_policy(client: SlurmClient, config: PolicyConfig, policy_path: Path,
                   conf_dir: Path, *, cluster: str | None = None, fail_mode: str = "closed",
                   job_submit: bool = True, reconfigure: bool = True,
                   dry_run: bool = False) -> list[str]:
    report: list[str] = []
    live = slurm_config(client)
    cluster = cluster or live.get("ClusterName")
    if not cluster:
        raise UserInputError("cannot tell the cluster name: pass --cluster NAME")
    if job_submit:
        plugin_dirs = [Path(p) for p in live.get("PluginDir", "").split(":") if p]
        if not any((directory / PLUGIN_FILE).exists() for directory in plugin_dirs):
            raise UserInputError(
                f"{PLUGIN_FILE} is not in PluginDir ({live.get('PluginDir')}): build and "
                "install it first (`make -C job_submit install` on the controller), or pass "
                "--no-job-submit; enabling a missing plugin would stop slurmctld")
    if not _CLUSTER_RE.fullmatch(cluster):
        raise UserInputError(f"cluster name {cluster!r}: expected letters, digits, '_', '-' "
                             "and '.' (pass --cluster NAME)")
    fragment = render_fragment(config, job_submit_plugins="python" if job_submit else "")
    installed_policy = conf_dir / "slurmkit-policy.toml"
    # Install exactly the text that is validated here (not a second read of the file,
    # which may have changed since ``config`` was loaded).
    policy_bytes = config_module.read_policy_file(Path(policy_path))
    if config_module.loads(policy_bytes, source=config.source) != config:
        raise UserInputError(f"{policy_path} changed while it was being installed: run "
                             "the install again")
    files = {
        installed_policy: policy_bytes.decode("utf-8"),
        conf_dir / "job_submit.py": render_entry_module(installed_policy),
        conf_dir / "job_submit_python.conf": render_shim_conf(
            policy=conf_dir / "job_submit.py", fail_mode=fail_mode,
            python_path=Path(__file__).resolve().parents[2],
            stats_file=Path(live.get("StateSaveLocation", "/var/spool/slurmctld"))
            / "job_submit_python.stats"),
    }
    steps = sacctmgr_plan(config, cluster)
    if dry_run:
        for _what, _, argv in steps:
            report.append(f"would run (if needed): {' '.join(argv)}")
        for path, text in files.items():
            report.append(f"would write {path} ({len(text)} bytes)")
        report.append(f"would write {conf_dir / 'policy.conf'}:\n{fragment}")
        return report
    for what, exists_argv, argv in steps:
        if exists_argv and client.run(exists_argv).stdout.strip():
            report.append(f"sacctmgr: {what} (exists)")
            continue
        client.run(argv)
        report.append(f"sacctmgr: {what}")
    for path, text in files.items():
        write_atomically(path, text)
        report.append(f"wrote {path}")
    write_atomically(conf_dir / "policy.conf", fragment)
    report.append(f"wrote {conf_dir / 'policy.conf'}")
    if reconfigure:
        report += _reconfigure(client, expect_partitions=config.partitions)
    return report


def uninstall_policy(client: SlurmClient, conf_dir: Path, *, reconfigure: bool = True) -> list[str]:
    write_atomically(conf_dir / "policy.conf", DEFAULT_FRAGMENT)
    report = [f"wrote {conf_dir / 'policy.conf'} (default partition only, no job_submit plugin)"]
    if reconfigure:
        report += _reconfigure(client, expect_partitions=["main"])
    return report


def _reconfigure(client: SlurmClient, expect_partitions: list[str]) -> list[str]:
    """``scontrol reconfigure``, then wait until slurmctld answers with the new
    partitions (reconfigure re-executes slurmctld since 23.11)."""
    import time

    try:
        client.run(["scontrol", "reconfigure"], timeout_s=120)
    except SlurmCommandError as error:
        # slurmctld re-executes itself to reconfigure; the RPC's reply can time out
        # (MessageTimeout) while it does. What counts is what it answers afterwards.
        if "timed out" not in str(error).lower():
            raise
    deadline = time.monotonic() + 180
    last_error = ""
    while time.monotonic() < deadline:
        try:
            names = {partition.name for partition in client.partitions()}
            if set(expect_partitions) <= names:
                return [f"slurmctld reconfigured; partitions: {', '.join(sorted(names))}"]
            last_error = f"partitions are {', '.join(sorted(names))}"
        except SlurmCommandError as error:
            last_error = str(error)
        time.sleep(0.5)
    raise SlurmCommandError(["scontrol", "reconfigure"], 1,
                            f"slurmctld did not come back with the policy's partitions: "
                            f"{last_error}")

