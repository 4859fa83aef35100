"""Harness of the docker-slurm test cluster: build, start, wait, break, mend.

Used by the cluster tests' session fixture, by ``make cluster-up``/``make demo``
and from the shell::

    python -m slurmkit.testing.cluster up        # build what is missing, start, wait
    python -m slurmkit.testing.cluster status
    python -m slurmkit.testing.cluster crash c2  # docker kill
    python -m slurmkit.testing.cluster cut c2    # docker network disconnect
    python -m slurmkit.testing.cluster restore c2
    python -m slurmkit.testing.cluster down [--volumes]

Images are content-addressed: ``slurmkit-base:<hash of the package list>`` is made
once with debootstrap + ``docker import`` (no registry needed; the mirror comes from
this machine's apt sources), and ``slurmkit-node:<hash of its inputs>`` is rebuilt
only when docker-slurm/ or the C plugins change. A warm ``up`` with the cluster
already running costs a ``docker-compose up -d`` that changes nothing, plus the
readiness checks.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from slurmkit.errors import ClusterHarnessError
from slurmkit.slurm import hostlist

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKER_SLURM = REPO_ROOT / "docker-slurm"
COMPOSE_FILE = DOCKER_SLURM / "docker-compose.yml"
PROJECT = "slurmkit"
DEBIAN_SUITE = "trixie"
COMPUTE_NODES = ("c1", "c2", "c3", "c4")
ALL_NODES = ("db", "ctl", *COMPUTE_NODES, "login")
TEST_USERS = ("alice", "bob", "carol")
_CTL_LOG = "/var/log/slurm/slurmctld.log"
_SET_DOWN = re.compile(r"Nodes (\S+) not responding, setting DOWN")
#: Slurm timeout profiles (docker-slurm/etc/timeouts-NAME.conf).
PROFILES = {"fast": "SlurmdTimeout=15 MessageTimeout=5 KillWait=10 cred_expire=5",
            "site": "Slurm's defaults: SlurmdTimeout=300 MessageTimeout=10 KillWait=30 "
                    "cred_expire=120"}
#: One lock per machine (the containers are named per machine, not per checkout).
LOCK_PATH = Path(tempfile.gettempdir()) / f"{PROJECT}-cluster.lock"
#: Inputs of the node image: a change to any of them rebuilds it.
_NODE_IMAGE_INPUTS = ("docker-slurm", "job_submit", "spank")
_NODE_IMAGE_IGNORED = (".state", "__pycache__")


def log(message: str) -> None:
    print(f"[cluster] {message}", file=sys.stderr, flush=True)


def json_lines(text: str) -> list[dict]:
    """The JSON objects of an events.jsonl read from a container (lines that do not
    parse, such as one torn by a crash, skipped)."""
    found = []
    for line in text.splitlines():
        try:
            found.append(json.loads(line))
        except ValueError:
            continue
    return found


def wait_until(
    what: str,
    condition: Callable[[], object],
    *,
    timeout_s: float,
    interval_s: float = 0.5,
    on_timeout: Callable[[], str] | None = None,
):
    """Poll ``condition`` until it returns a truthy value (which is returned) or the
    deadline passes (ClusterHarnessError, with ``on_timeout()``'s diagnosis)."""
    started = time.monotonic()
    deadline = started + timeout_s
    while True:
        result = condition()
        if result:
            if os.environ.get("SLURMKIT_TRACE_WAITS"):  # where a slow test spends its time
                print(f"[wait] {time.monotonic() - started:6.1f} s  {what}", file=sys.stderr)
            return result
        if time.monotonic() >= deadline:
            detail = f": {on_timeout()}" if on_timeout else ""
            raise ClusterHarnessError(f"timed out after {timeout_s:g} s waiting for {what}{detail}")
        time.sleep(interval_s)


def _run(argv: Sequence[str], *, check: bool = True, capture: bool = True,
         env: dict | None = None, timeout_s: float | None = None,
         input_bytes: bytes | None = None) -> subprocess.CompletedProcess:
    try:
        result = subprocess.run(
            list(argv), capture_output=capture, env=env, timeout=timeout_s, input=input_bytes
        )
    except FileNotFoundError:
        raise ClusterHarnessError(f"{argv[0]} is not installed on this machine") from None
    except subprocess.TimeoutExpired:
        raise ClusterHarnessError(f"{' '.join(argv)} did not finish in {timeout_s} s") from None
    if check and result.returncode != 0:
        output = ""
        if capture:
            output = ((result.stdout or b"") + (result.stderr or b"")).decode(errors="replace")
        raise ClusterHarnessError(
            f"{' '.join(argv[:4])}... exited {result.returncode}: {output.strip()[-2000:]}"
        )
    return result


@contextlib.contextmanager
def exclusive_use(purpose: str) -> Iterator[None]:
    """Hold the cluster for a test session, the demo or the campaign: each crashes
    nodes and installs policies, so a second one at the same time would break the
    first one's scenarios. Raises ClusterHarnessError, naming the holder, when taken."""
    with LOCK_PATH.open("a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise ClusterHarnessError(
                f"the docker-slurm cluster is in use by {holder}: run {purpose} again "
                "when it has finished") from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"{purpose} (pid {os.getpid()})")
        lock.flush()
        yield


# ------------------------------------------------------------------- images


def apt_mirror(sources_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this machine uses, from its own apt sources (deb822 or the
    one-line format). Never a hard-coded host."""
    candidates: list[Path] = sorted((sources_dir / "sources.list.d").glob("*.sources"))
    for path in candidates:
        for stanza in path.read_text().split("\n\n"):
            fields = dict(
                (key.strip().lower(), value.strip())
                for key, _, value in (line.partition(":") for line in stanza.splitlines())
                if not key.startswith("#") and value
            )
            suites = fields.get("suites", "")
            if fields.get("types", "deb").split()[0] == "deb" and "security" not in suites:
                uris = fields.get("uris", "").split()
                if uris:
                    return uris[0]
    lists = [sources_dir / "sources.list", *sorted((sources_dir / "sources.list.d").glob("*.list"))]
    for path in lists:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            words = re.sub(r"\[[^\]]*\]", "", line).split()
            if len(words) >= 3 and words[0] == "deb" and "security" not in words[2]:
                return words[1]
    raise ClusterHarnessError(
        f"no Debian mirror found in {sources_dir}/sources.list(.d): add one, or build "
        "from a stock image with SLURMKIT_BASE_IMAGE=debian:trixie"
    )


def package_list() -> list[str]:
    text = (DOCKER_SLURM / "packages.txt").read_text()
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def base_image_tag() -> str:
    digest = hashlib.sha256()
    digest.update(DEBIAN_SUITE.encode())
    digest.update("\n".join(package_list()).encode())
    digest.update(b"base-v1")  # bump when build_base_image changes what it makes
    return f"slurmkit-base:{digest.hexdigest()[:12]}"


def node_image_tag(base_tag: str) -> str:
    digest = hashlib.sha256(base_tag.encode())
    for top in _NODE_IMAGE_INPUTS:
        root = REPO_ROOT / top
        if not root.exists():
            continue
        for path in sorted(root.rglob("*")):
            relative = path.relative_to(REPO_ROOT)
            if path.is_dir() or any(part in _NODE_IMAGE_IGNORED for part in relative.parts) \
                    or path.suffix in (".so", ".o", ".pyc"):
                continue  # build outputs are not inputs
            digest.update(str(relative).encode() + b"\0")
            digest.update(path.read_bytes())
            digest.update(str(path.stat().st_mode & 0o111).encode())
    return f"slurmkit-node:{digest.hexdigest()[:12]}"


def image_exists(tag: str) -> bool:
    return _run(["docker", "image", "inspect", tag], check=False).returncode == 0


def ensure_debootstrap() -> None:
    if shutil.which("debootstrap"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise ClusterHarnessError(
            "debootstrap is needed to build the base image without a registry: "
            "install it (`apt-get install debootstrap`) or set "
            "SLURMKIT_BASE_IMAGE=debian:trixie where a registry is reachable"
        )
    log("installing debootstrap from this machine's apt sources")
    _run(["apt-get", "install", "-y", "--no-install-recommends", "debootstrap"],
         env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, timeout_s=600)


def build_base_image(tag: str) -> None:
    """debootstrap a minimal Debian, install the node packages in it with apt (the
    same install-packages.sh a stock-image build runs), then ``docker import`` it.

    Packages are not passed to ``debootstrap --include``: its single dpkg run does not
    order pre-install scripts, and mariadb-server's failed when perl was not yet
    configured.
    """
    ensure_debootstrap()
    mirror = apt_mirror()
    workdir = Path(tempfile.mkdtemp(prefix="slurmkit-rootfs-", dir="/var/tmp"))
    rootfs = workdir / "rootfs"
    started = time.monotonic()
    proc_mounted = False
    try:
        log(f"debootstrap {DEBIAN_SUITE} from {mirror} (a few minutes, once)")
        _run(["debootstrap", "--variant=minbase", DEBIAN_SUITE, str(rootfs), mirror],
             timeout_s=1800)
        (rootfs / "etc/apt/sources.list").write_text(f"deb {mirror} {DEBIAN_SUITE} main\n")
        # Packages must not start their daemons inside the build chroot.
        policy = rootfs / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        staging = rootfs / "usr/local/share/slurmkit"
        staging.mkdir(parents=True, exist_ok=True)
        for name in ("packages.txt", "install-packages.sh"):
            shutil.copy2(DOCKER_SLURM / name, staging / name)
        _run(["mount", "-t", "proc", "proc", str(rootfs / "proc")])
        proc_mounted = True
        log(f"installing {len(package_list())} packages in the rootfs")
        _run(["chroot", str(rootfs), "/usr/local/share/slurmkit/install-packages.sh"],
             env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
                  "DEBIAN_FRONTEND": "noninteractive"}, timeout_s=1800)
        _run(["umount", str(rootfs / "proc")])
        proc_mounted = False
        policy.unlink()
        # Smaller image: no package cache, docs or man pages inside the nodes.
        for sub in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc",
                    "usr/share/man", "usr/share/locale"):
            target = rootfs / sub
            if target.exists():
                shutil.rmtree(target)
                target.mkdir(parents=True)
        log("docker import")
        tar = subprocess.Popen(["tar", "--numeric-owner", "-C", str(rootfs), "-c", "."],
                               stdout=subprocess.PIPE)
        imported = subprocess.run(["docker", "import", "-", tag], stdin=tar.stdout,
                                  capture_output=True)
        tar.stdout.close()
        if tar.wait() != 0 or imported.returncode != 0:
            raise ClusterHarnessError(f"docker import failed: {imported.stderr.decode()}")
    finally:
        if proc_mounted:
            _run(["umount", "-l", str(rootfs / "proc")], check=False)
        shutil.rmtree(workdir, ignore_errors=True)
    log(f"built {tag} in {time.monotonic() - started:.0f} s")


def build_node_image(base_tag: str, tag: str) -> None:
    log(f"building {tag} from {base_tag}")
    started = time.monotonic()
    _run(["docker", "build", "--network=none", "-f", str(DOCKER_SLURM / "Dockerfile"),
          "--build-arg", f"BASE_IMAGE={base_tag}", "-t", tag, str(REPO_ROOT)],
         timeout_s=1800)
    log(f"built {tag} in {time.monotonic() - started:.0f} s")


def ensure_images() -> str:
    """Build whatever image is missing; return the node image's tag."""
    stock = os.environ.get("SLURMKIT_BASE_IMAGE")
    base_tag = stock or base_image_tag()
    if not stock and not image_exists(base_tag):
        build_base_image(base_tag)
    tag = node_image_tag(base_tag)
    if not image_exists(tag):
        if stock:
            # A stock base fetches packages while building: the build needs network.
            log(f"building {tag} from stock image {stock}")
            _run(["docker", "build", "-f", str(DOCKER_SLURM / "Dockerfile"),
                  "--build-arg", f"BASE_IMAGE={stock}", "-t", tag, str(REPO_ROOT)],
                 timeout_s=3600)
        else:
            build_node_image(base_tag, tag)
    return tag


# ------------------------------------------------------------------- cluster


@dataclass
class Cluster:
    """One docker-slurm cluster (the compose project ``slurmkit``)."""

    net_prefix: str = field(default_factory=lambda: os.environ.get("SLURMKIT_NET_PREFIX", "10.77.0"))
    ssh_port: int = field(default_factory=lambda: int(os.environ.get("SLURMKIT_SSH_PORT", "2222")))
    state_dir: Path = DOCKER_SLURM / ".state"
    node_image: str | None = None
    #: nodes crashed or cut off through this object (so Slurm may rightly set them DOWN)
    faulted: set[str] = field(default_factory=set, repr=False)

    # ---- paths and names

    @property
    def known_hosts_path(self) -> Path:
        return self.state_dir / "known_hosts"

    def ssh_key_path(self, user: str) -> Path:
        return self.state_dir / "ssh" / user

    @property
    def ssh_host(self) -> str:
        return "127.0.0.1"

    def ssh_target(self, user: str = "alice") -> str:
        return f"{user}@{self.ssh_host}:{self.ssh_port}"

    @staticmethod
    def container(node: str) -> str:
        return f"{PROJECT}-{node}"

    def node_address(self, node: str) -> str:
        suffix = {"ctl": 10, "db": 11, "login": 30}.get(node)
        if suffix is None:
            suffix = 20 + int(node.removeprefix("c"))
        return f"{self.net_prefix}.{suffix}"

    @property
    def network(self) -> str:
        return f"{PROJECT}_slurmnet"

    # ---- docker plumbing

    def _docker(self):
        import docker  # the dev extra; imported lazily so the module loads without it

        if not hasattr(self, "_docker_client"):
            self._docker_client = docker.from_env(timeout=120)
        return self._docker_client

    def compose(self, *args: str, capture: bool = True, timeout_s: float = 600):
        env = {**os.environ, "SLURMKIT_NET_PREFIX": self.net_prefix,
               "SLURMKIT_SSH_PORT": str(self.ssh_port),
               "SLURMKIT_AUTHORIZED_KEYS_DIR": str(self.state_dir / "authorized_keys"),
               "SLURMKIT_NODE_IMAGE": self.node_image or "slurmkit-node:latest"}
        return _run(["docker-compose", "-p", PROJECT, "-f", str(COMPOSE_FILE), *args],
                    env=env, capture=capture, timeout_s=timeout_s)

    def container_state(self, node: str) -> dict:
        """Docker's State of the node's container ({} when it does not exist)."""
        import docker

        try:
            container = self._docker().containers.get(self.container(node))
        except docker.errors.NotFound:
            return {}
        return container.attrs.get("State", {})

    def health(self, node: str) -> str:
        state = self.container_state(node)
        if not state:
            return "absent"
        if not state.get("Running"):
            return "stopped"
        return state.get("Health", {}).get("Status", "running")

    def exec(self, node: str, argv: Sequence[str], *, user: str = "root",
             timeout_s: float = 120, check: bool = True,
             input_text: str | None = None) -> subprocess.CompletedProcess:
        """Run argv in the node's container (``docker exec``); text output. A test
        user's command runs in their home directory, as after a login."""
        docker_argv = ["docker", "exec", *(["-i"] if input_text is not None else []),
                       "-u", user, *(["-w", f"/home/{user}"] if user in TEST_USERS else []),
                       self.container(node), *argv]
        result = subprocess.run(docker_argv, capture_output=True, timeout=timeout_s,
                                input=input_text, text=True, encoding="utf-8",
                                errors="replace")
        if check and result.returncode != 0:
            raise ClusterHarnessError(
                f"{' '.join(argv)} on {node} exited {result.returncode}: "
                f"{result.stderr.strip()[-2000:]}"
            )
        return result

    # ---- lifecycle

    def prepare_ssh(self) -> None:
        """Per-user client keys (made once, kept in .state/) and the authorized_keys
        directory the login node mounts."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519

        (self.state_dir / "ssh").mkdir(parents=True, exist_ok=True)
        authorized = self.state_dir / "authorized_keys"
        authorized.mkdir(parents=True, exist_ok=True)
        for user in TEST_USERS:
            private_path = self.ssh_key_path(user)
            public_path = private_path.with_suffix(".pub")
            if not private_path.exists():
                key = ed25519.Ed25519PrivateKey.generate()
                pem = key.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.OpenSSH,
                                        serialization.NoEncryption())
                public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                       serialization.PublicFormat.OpenSSH)
                tmp = private_path.with_suffix(".tmp")
                tmp.write_bytes(pem)
                tmp.chmod(0o600)
                tmp.rename(private_path)
                public_path.write_bytes(public + f" {user}@slurmkit-test\n".encode())
            target = authorized / user
            target.write_bytes(public_path.read_bytes())
            target.chmod(0o644)
        authorized.chmod(0o755)

    def up(self, *, timeout_s: float = 600) -> None:
        """Build what is missing, start (or keep) the containers, wait until every
        node is healthy and every compute node is up in Slurm."""
        started = time.monotonic()
        self.node_image = ensure_images()
        self.prepare_ssh()
        # Idempotent: containers whose config (image, mounts) is unchanged are left
        # running; changed ones are re-created.
        self.compose("up", "-d", "--remove-orphans", timeout_s=timeout_s)
        stale = self.stale_checkout_mounts()
        if stale:
            log(f"re-creating {', '.join(stale)}: their /opt/slurmkit is a checkout deleted "
                "since they started (cloned again at the same path)")
            self.compose("up", "-d", "--force-recreate", "--remove-orphans", *stale,
                         timeout_s=timeout_s)
        self.wait_healthy(ALL_NODES, timeout_s=timeout_s)
        self.write_known_hosts()
        self.wait_nodes_up(COMPUTE_NODES, timeout_s=timeout_s)
        log(f"cluster ready in {time.monotonic() - started:.1f} s "
            f"(ssh {self.ssh_target()}, image {self.node_image})")

    def stale_checkout_mounts(self) -> list[str]:
        """Nodes that do not see this checkout at /opt/slurmkit. A bind mount keeps the
        directory it was made from: when a checkout is deleted and cloned again at the
        same path, compose finds the config unchanged and keeps the containers, which
        then run no slurmkit at all."""
        if not self.state_dir.is_relative_to(REPO_ROOT):
            return []  # a state directory outside the checkout is not mounted
        self.state_dir.mkdir(parents=True, exist_ok=True)
        token = secrets.token_hex(8)
        (self.state_dir / "mount-check").write_text(token)
        seen = f"/opt/slurmkit/{self.state_dir.relative_to(REPO_ROOT)}/mount-check"
        return [node for node in ALL_NODES
                if self.exec(node, ["cat", seen], check=False).stdout.strip() != token]

    def down(self, *, volumes: bool = False) -> None:
        args = ["down", "--remove-orphans"] + (["--volumes"] if volumes else [])
        self.compose(*args)

    def wait_healthy(self, nodes: Iterable[str], *, timeout_s: float = 300) -> None:
        nodes = list(nodes)

        def all_healthy() -> bool:
            states = {node: self.health(node) for node in nodes}
            dead = [node for node, state in states.items() if state in ("stopped", "absent")]
            if dead:
                raise ClusterHarnessError(
                    f"node(s) {', '.join(dead)} stopped while starting: "
                    + "; ".join(f"{node}: {self.logs_tail(node)}" for node in dead)
                )
            return all(state == "healthy" for state in states.values())

        wait_until("healthy nodes", all_healthy, timeout_s=timeout_s,
                   on_timeout=lambda: str({node: self.health(node) for node in nodes}))

    def logs_tail(self, node: str, lines: int = 15) -> str:
        result = _run(["docker", "logs", "--tail", str(lines), self.container(node)], check=False)
        return (result.stdout + result.stderr).decode(errors="replace").strip()

    def node_states(self) -> dict[str, list[str]]:
        """Slurm's state flags per compute node, read on the controller."""
        result = self.exec("ctl", ["scontrol", "show", "nodes", "--json"], check=False)
        if result.returncode != 0:
            return {}
        try:
            payload = json.loads(result.stdout)
        except json.JSONDecodeError:
            return {}
        return {node["name"]: list(node.get("state", [])) for node in payload.get("nodes", [])}

    def wait_nodes_up(self, nodes: Iterable[str], *, timeout_s: float = 120) -> None:
        """Wait until each node is known to slurmctld and neither DOWN nor NOT_RESPONDING."""
        nodes = list(nodes)
        bad = {"DOWN", "NOT_RESPONDING", "UNKNOWN", "FAIL", "DRAIN", "FUTURE"}

        def all_up() -> bool:
            states = self.node_states()
            return all(node in states and not bad & set(states[node]) for node in nodes)

        wait_until(f"nodes {','.join(nodes)} to be up in Slurm", all_up,
                   timeout_s=timeout_s, on_timeout=lambda: str(self.node_states()))

    def write_known_hosts(self) -> None:
        """Record the login node's host keys, read through docker (a channel that
        cannot be intercepted), in .state/known_hosts."""
        lines = []
        for algorithm in ("ed25519", "ecdsa"):
            public = self.exec("login", ["cat", f"/etc/ssh/hostkeys/ssh_host_{algorithm}_key.pub"])
            key_type, key_data = public.stdout.split()[:2]
            lines.append(f"[{self.ssh_host}]:{self.ssh_port} {key_type} {key_data}\n")
        self.known_hosts_path.write_text("".join(lines))

    def cancel_test_jobs(self, *, timeout_s: float = 120) -> None:
        """Cancel every job of the test users (scancel takes one --user at a time) and
        wait until the queue has none of them."""
        for user in TEST_USERS:
            self.exec("ctl", ["scancel", f"--user={user}"], check=False)
        wait_until("the test users' jobs to leave the queue",
                   lambda: not self.exec("ctl", ["squeue", "--noheader", "--format=%i",
                                                 f"--user={','.join(TEST_USERS)}"]).stdout.strip(),
                   timeout_s=timeout_s)

    def reset_policy(self) -> None:
        """Back to the plain configuration (one partition, no job_submit plugin) if a
        test or a demo left a policy installed."""
        current = self.exec("ctl", ["cat", "/etc/slurm/policy.conf"], check=False).stdout
        default = (DOCKER_SLURM / "etc" / "policy.conf").read_text()
        if current != default:
            self.exec("ctl", ["tee", "/etc/slurm/policy.conf"], input_text=default)
            self.reconfigure()
        # A policy's account caps (GrpTRES in slurmdbd) outlive its configuration: a
        # bench's 24-GPU cap on team-a kept alice's 4-node jobs pending afterwards.
        accounts = self.exec("ctl", ["sacctmgr", "-n", "-P", "show", "account",
                                     "format=account"], check=False).stdout.split()
        accounts = [name for name in accounts if name != "root"]
        if accounts:
            self.exec("ctl", ["sacctmgr", "-i", "modify", "account", ",".join(accounts),
                              "set", "GrpTRES=gres/gpu=-1"], check=False)

    def profile(self) -> str:
        """The timeout profile slurmctld runs with now: "fast", "site" or "custom"."""
        timeout = self.slurm_config().get("SlurmdTimeout", "")
        return {"15 sec": "fast", "300 sec": "site"}.get(timeout, "custom")

    def slurm_config(self) -> dict[str, str]:
        """``scontrol show config`` as KEY -> VALUE (the lines with " = ")."""
        text = self.exec("ctl", ["scontrol", "show", "config"], check=False).stdout
        pairs = (line.split(" = ", 1) for line in text.splitlines() if " = " in line)
        return {key.strip(): value.strip() for key, value in pairs}

    def set_profile(self, name: str, *, timeout_s: float = 180) -> None:
        """Switch Slurm's failure timeouts: "fast" (shortened for tests) or "site"
        (Slurm's defaults: SlurmdTimeout=300, MessageTimeout=10, KillWait=30,
        cred_expire=120). ``scontrol reconfigure`` applies all four."""
        if name not in PROFILES:
            raise ClusterHarnessError(f"unknown timeout profile {name!r}; known: "
                                      f"{', '.join(PROFILES)}")
        if self.profile() == name:
            return
        self.exec("db", ["cp", f"/usr/local/share/slurmkit/etc/timeouts-{name}.conf",
                         "/etc/slurm/timeouts.conf"])
        self.reconfigure(timeout_s=timeout_s)
        wait_until(f"slurmctld to run with the {name} timeouts",
                   lambda: self.profile() == name, timeout_s=timeout_s)
        log(f"timeout profile: {name} ({PROFILES[name]})")

    def reconfigure(self, *, timeout_s: float = 180, answer_s: float = 60) -> None:
        """``scontrol reconfigure`` and wait until slurmctld answers again. The RPC's
        own reply may time out while slurmctld re-executes itself (24.11): only the
        answer afterwards counts.

        Run in the foreground (-D), slurmctld re-executes in place, and once (in CI,
        never here) it never answered again: every later test failed on an unhealthy
        controller. A controller silent for ``answer_s`` is therefore diagnosed (its
        log and threads, kept under the state directory), restarted (its state is on
        a volume: jobs survive) and asked once more, so that the slurmds also read the
        new configuration."""
        for attempt in (1, 2):
            with contextlib.suppress(subprocess.TimeoutExpired):  # judged by the ping below
                self.exec("ctl", ["scontrol", "reconfigure"], check=False, timeout_s=answer_s)
            try:
                wait_until("slurmctld to answer after reconfigure", self._controller_answers,
                           timeout_s=answer_s)
                return
            except ClusterHarnessError:
                if attempt == 2:
                    raise
                self.restart_controller(f"silent {answer_s:g} s after scontrol reconfigure",
                                        timeout_s=timeout_s)

    def _controller_answers(self) -> bool:
        try:
            return self.exec("ctl", ["scontrol", "ping"], check=False,
                             timeout_s=30).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def restart_controller(self, why: str, *, timeout_s: float = 180) -> None:
        """Keep what the hung controller shows, restart its container, wait healthy."""
        path = self.save_controller_diagnosis(why)
        log(f"slurmctld {why}: restarting it (diagnosis in {path})")
        self._docker().containers.get(self.container("ctl")).restart(timeout=10)
        self.wait_healthy(["ctl"], timeout_s=timeout_s)

    def save_controller_diagnosis(self, why: str) -> Path:
        """slurmctld's log tail, processes and per-thread kernel wait channels."""
        script = ("tail -n 60 " + _CTL_LOG + "; echo '--- processes'; ps -eo pid,ppid,stat,wchan:32,args;"
                  " for pid in $(pgrep -x slurmctld); do echo \"--- threads of $pid\";"
                  " for task in /proc/$pid/task/*; do"
                  " echo \"$(cat $task/comm) $(cat $task/wchan) $(cut -d' ' -f3 $task/stat)\";"
                  " done; done")
        try:
            result = self.exec("ctl", ["bash", "-c", script], check=False, timeout_s=30)
            shown = result.stdout + result.stderr
        except subprocess.TimeoutExpired as timeout:  # a read of /proc can hang as well
            shown = "".join(part.decode(errors="replace") if isinstance(part, bytes) else part
                            for part in (timeout.stdout, timeout.stderr) if part)
            shown += "\n(the diagnosis itself timed out after 30 s)\n"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        path = self.state_dir / (f"ctl-diagnosis-{time.strftime('%Y%m%dT%H%M%S')}"
                                 f"-{time.monotonic_ns() % 10**9:09d}.txt")
        path.write_text(f"{why}\n{shown}")
        return path

    # ---- faults

    def crash(self, node: str) -> None:
        """Kill the node's container outright (SIGKILL to tini: every process dies,
        as on a power loss)."""
        self.faulted.add(node)
        self._docker().containers.get(self.container(node)).kill()

    def cut(self, node: str) -> None:
        """Disconnect the node from the cluster network; its processes keep running."""
        self.faulted.add(node)
        self._docker().networks.get(self.network).disconnect(self.container(node), force=True)

    def controller_log_lines(self) -> int:
        """How many lines slurmctld's log has now (a mark for ``set_down_since``)."""
        result = self.exec("ctl", ["wc", "-l", _CTL_LOG], check=False)
        return int(result.stdout.split()[0]) if result.returncode == 0 else 0

    def set_down_since(self, mark: int) -> set[str]:
        """Nodes slurmctld declared DOWN for not responding after log line ``mark``."""
        result = self.exec("ctl", ["tail", "-n", f"+{mark + 1}", _CTL_LOG], check=False)
        nodes: set[str] = set()
        for match in _SET_DOWN.finditer(result.stdout):
            nodes.update(hostlist.expand(match.group(1)))
        return nodes

    def restore(self, node: str, *, timeout_s: float = 180, wait_slurm: bool = True,
                register_now: bool = False) -> None:
        """Undo crash or cut: reconnect or start the container, wait until healthy
        and (for compute nodes) back in service. ``register_now``: a reconnected
        slurmd re-registers at once (SIGHUP: it re-executes itself, its job steps live
        on) instead of at slurmctld's next ping of a DOWN node, 25-30 s later here;
        slurmctld then also ends the steps of jobs that lost the node at once."""
        container = self._docker().containers.get(self.container(node))
        container.reload()
        networks = container.attrs["NetworkSettings"]["Networks"]
        broken = container.status != "running" or self.network not in networks
        if broken and node in COMPUTE_NODES:
            # At Slurm's default SlurmdTimeout (300 s) slurmctld still counts the node
            # as alive, and jobs it held stay COMPLETING on it until a resent
            # terminate request reaches the restarted slurmd (60-75 s here). An admin
            # sets such a node DOWN first, as we do: slurmctld then lets go of it at
            # once, and ReturnToService=2 brings it back when its slurmd registers.
            self.exec("ctl", ["scontrol", "update", f"NodeName={node}", "State=DOWN",
                              "Reason=slurmkit test harness: restoring a crashed node"],
                      check=False)
        if container.status != "running":
            container.start()
        elif self.network not in networks:
            self._docker().networks.get(self.network).connect(
                container, ipv4_address=self.node_address(node), aliases=[node])
            if register_now and node in COMPUTE_NODES:
                self.exec(node, ["pkill", "-HUP", "-x", "slurmd"], check=False)
        elif node == "ctl":
            # Running, connected and still unhealthy: a hung slurmctld does not come
            # back by waiting (it once failed every later test of a CI run).
            try:
                self.wait_healthy([node], timeout_s=60)
            except ClusterHarnessError:
                self.restart_controller("unhealthy for 60 s", timeout_s=timeout_s)
        self.wait_healthy([node], timeout_s=timeout_s)
        if wait_slurm and node in COMPUTE_NODES:
            self.wait_nodes_up([node], timeout_s=timeout_s)


# ------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m slurmkit.testing.cluster",
                                     description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="build the base and node images if missing")
    sub.add_parser("up", help="build, start and wait until ready")
    down = sub.add_parser("down", help="stop and remove the containers")
    down.add_argument("--volumes", action="store_true", help="also delete state and data")
    sub.add_parser("status", help="health of each node and Slurm's node states")
    profile = sub.add_parser("profile", help="switch Slurm's failure timeouts "
                                             "(fast: tests; site: Slurm's defaults)")
    profile.add_argument("name", choices=sorted(PROFILES))
    for name, text in (("crash", "kill a node's container"),
                       ("cut", "disconnect a node from the network"),
                       ("restore", "start or reconnect a node and wait for it")):
        fault = sub.add_parser(name, help=text)
        fault.add_argument("node", choices=ALL_NODES)
    args = parser.parse_args(argv)
    cluster = Cluster()
    try:
        if args.command == "build":
            print(ensure_images())
        elif args.command == "up":
            cluster.up()
        elif args.command == "down":
            cluster.down(volumes=args.volumes)
        elif args.command == "status":
            for node in ALL_NODES:
                print(f"{node:6} {cluster.health(node)}")
            for node, state in sorted(cluster.node_states().items()):
                print(f"slurm {node:4} {'+'.join(state)}")
            print(f"timeout profile: {cluster.profile()}")
        elif args.command == "profile":
            cluster.set_profile(args.name)
        elif args.command == "crash":
            cluster.crash(args.node)
        elif args.command == "cut":
            cluster.cut(args.node)
        elif args.command == "restore":
            cluster.restore(args.node)
    except ClusterHarnessError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())


class ContainerRunner:
    """A Runner that runs argv inside a node's container (``docker exec -u USER``):
    what a user logged in on that node would run. Used by tests and the demo."""

    def __init__(self, cluster: Cluster, node: str = "login", user: str = "alice",
                 env: dict[str, str] | None = None):
        self.cluster = cluster
        self.node = node
        self.user = user
        self.env = dict(env or {})
        self.where = f"{user}@{node} (docker exec)"

    def run(self, argv, *, timeout_s: float = 60.0, input_text: str | None = None):
        from slurmkit.errors import CommandNotFoundError, CommandTimeoutError
        from slurmkit.slurm.runner import PINNED_ENV, CommandResult

        env_args = [f"--env={name}={value}" for name, value in {**PINNED_ENV, **self.env}.items()]
        workdir = f"/home/{self.user}" if self.user in TEST_USERS else "/"
        docker_argv = ["docker", "exec", "-i", "-u", self.user, "-w", workdir,
                       *env_args, self.cluster.container(self.node), *[str(a) for a in argv]]
        try:
            result = subprocess.run(docker_argv, capture_output=True, timeout=timeout_s,
                                    input=input_text if input_text is not None else "",
                                    text=True, encoding="utf-8", errors="replace")
        except subprocess.TimeoutExpired:
            raise CommandTimeoutError(list(argv), timeout_s, self.where) from None
        if result.returncode == 127 and "executable file not found" in result.stderr:
            raise CommandNotFoundError(str(argv[0]), self.where)
        return CommandResult(tuple(str(a) for a in argv), result.returncode, result.stdout,
                             result.stderr, self.where)
