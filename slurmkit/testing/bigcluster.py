"""A synthetic large cluster as Slurm would print it, with a known truth: for the
placement and node-health tests at 12,500 nodes (100k GPUs) and ``bench/cli.py``.

The cluster: ``gpu[00001-12500]``, 8 GPUs and 128 CPUs each, leaf switches of 32
nodes, spines of 16 leaves, one core (as ``bench/topology.py``); partition ``gpu``
holds every node, partition ``interactive`` the first 8 (two of them lemons, so that
a job of 7 nodes there cannot exclude both). About 60 % of the nodes are allocated.

A day of failures, as a large site sees them:

- a few **lemons** fail again and again (2 to 6 incidents each); each incident kills
  one or more jobs on the node, some of them 1,000-node jobs;
- many nodes fail **once** and come back (ReturnToService);
- a few nodes failed once and are **still down** (an open DOWN event, DOWN now);
- **1,000-node NODE_FAIL runs** in which Slurm names only one node (``failed_node``
  and one DOWN event); the other 999 nodes of such a run may have DOWN events of
  their own at other times, which must not blame them for this run;
- NODE_FAIL runs for which Slurm names **no** node (unattributed);
- admin DRAIN events, which blame nobody.

``generate()`` returns the records (for the pure functions) and the truth;
``write_replay()`` renders what ``scontrol``/``sacct``/``sacctmgr`` print and a
manifest that ``slurmkit.slurm.runner.ReplayRunner`` answers from.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from slurmkit.slurm import hostlist
from slurmkit.slurm.models import AccountingRecord, Node

NODES = 12_500
NODES_PER_LEAF = 32
LEAVES_PER_SPINE = 16
GPUS_PER_NODE = 8
CPUS_PER_NODE = 128
DAY_S = 86_400
#: The generated clock: "now" for every timestamp (a fixed value keeps outputs stable).
NOW_EPOCH_S = 1_800_000_000
INTERACTIVE_NODES = 8


def node_name(index: int) -> str:
    """1-based index -> ``gpu00001``."""
    return f"gpu{index:05d}"


@dataclass
class SyntheticCluster:
    """Records, rendered outputs and the truth of one generated cluster."""

    nodes: list[Node]
    topology_text: str
    runs: list[AccountingRecord]  # NODE_FAIL runs in the window
    events_text: str
    lemons: frozenset[str]  # nodes that must be avoided
    failed_once: frozenset[str]  # failed once and back: must not be avoided
    still_down: frozenset[str]  # failed once, not back (lemons too)
    unattributed_runs: int
    big_runs: int  # 1,000-node NODE_FAIL runs with one node named
    now_epoch_s: int = NOW_EPOCH_S
    extra: dict = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [node.name for node in self.nodes]


def topology_text(count: int = NODES) -> str:
    """``scontrol show topology`` of the fat tree (upper switches list their nodes,
    as Slurm prints them)."""
    lines = []
    leaves = (count + NODES_PER_LEAF - 1) // NODES_PER_LEAF

    def span(first: int, last: int) -> str:
        return f"gpu[{first + 1:05d}-{last + 1:05d}]"

    for leaf in range(leaves):
        first, last = leaf * NODES_PER_LEAF, min(count, (leaf + 1) * NODES_PER_LEAF) - 1
        lines.append(f"SwitchName=leaf{leaf:03d} Level=0 LinkSpeed=1 Nodes={span(first, last)}")
    spines = (leaves + LEAVES_PER_SPINE - 1) // LEAVES_PER_SPINE
    for spine in range(spines):
        first, last = spine * LEAVES_PER_SPINE, min(leaves, (spine + 1) * LEAVES_PER_SPINE) - 1
        nodes = span(first * NODES_PER_LEAF, min(count, (last + 1) * NODES_PER_LEAF) - 1)
        lines.append(f"SwitchName=spine{spine:02d} Level=1 LinkSpeed=1 Nodes={nodes} "
                     f"Switches=leaf[{first:03d}-{last:03d}]")
    lines.append(f"SwitchName=core Level=2 LinkSpeed=1 Nodes={span(0, count - 1)} "
                 f"Switches=spine[00-{spines - 1:02d}]")
    return "\n".join(lines) + "\n"


def _node(name: str, states: tuple[str, ...], partitions: tuple[str, ...],
          reason: str = "") -> Node:
    busy = "ALLOCATED" in states
    return Node(name=name, address=name, states=frozenset(states), cpus=CPUS_PER_NODE,
                alloc_cpus=CPUS_PER_NODE if busy else 0, real_memory_mb=1_000_000,
                alloc_memory_mb=0, gpus=GPUS_PER_NODE,
                gpus_used=GPUS_PER_NODE if busy else 0, partitions=partitions, reason=reason,
                boot_epoch_s=NOW_EPOCH_S - 5 * DAY_S)


def _run(job_id: int, nodes: list[str], start: int, end: int, failed_node: str) -> AccountingRecord:
    return AccountingRecord(
        job_id=job_id, display_id=str(job_id), name=f"train-{job_id}", user="alice",
        account="team-a", partition="gpu", qos="training", state="NODE_FAIL",
        state_flags=("NODE_FAIL",), reason="None", exit_code=1, exit_signal=None,
        restarts=0, submit_epoch_s=start - 60, eligible_epoch_s=start - 60,
        start_epoch_s=start, end_epoch_s=end, elapsed_s=end - start, nodes=tuple(nodes),
        node_count=len(nodes),
        allocated_tres={"cpu": float(CPUS_PER_NODE * len(nodes)), "node": float(len(nodes)),
                        "gres/gpu": float(GPUS_PER_NODE * len(nodes))},
        failed_node=failed_node)


def generate(count: int = NODES, *, seed: int = 12, lemons: int = 8, failed_once: int = 300,
             still_down: int = 3, big_runs: int = 20, unattributed: int = 10,
             busy_fraction: float = 0.6) -> SyntheticCluster:
    """One seeded cluster and day of failures (see the module docstring)."""
    rng = random.Random(seed)
    names = [node_name(index) for index in range(1, count + 1)]
    window_start = NOW_EPOCH_S - DAY_S
    runs: list[AccountingRecord] = []
    events: list[str] = []
    job_ids = iter(range(1_000_000, 10_000_000))
    pool = names[INTERACTIVE_NODES:]
    # Two lemons in the small partition; the rest anywhere.
    lemon_nodes = names[:2] + rng.sample(pool, lemons - 2)
    rest = [name for name in pool if name not in set(lemon_nodes)]
    chosen = rng.sample(rest, failed_once + still_down)
    once_nodes, down_nodes = chosen[:failed_once], chosen[failed_once:]

    def incident(node: str, at: int, *, open_event: bool = False, big: bool = False,
                 name_it: str = "both") -> None:
        """``node`` crashes at ``at``: 1-3 runs on it end NODE_FAIL; Slurm names it by
        failed_node and/or a DOWN event (``name_it``: both, failed_node, event)."""
        for _ in range(rng.randint(1, 3) if not big else 1):
            if big:  # a 1,000-node job around the culprit
                position = names.index(node)
                first = max(0, min(position - rng.randint(0, 999), len(names) - 1000))
                members = names[first:first + 1000]
            else:
                members = [node] + rng.sample(names, rng.randint(0, 7))
                members = sorted(set(members))
            start = max(window_start + 60, at - rng.randint(600, 6 * 3600))
            end = at + rng.randint(0, 30)  # the run ends when slurmctld marks it DOWN
            runs.append(_run(next(job_ids), members, start, end,
                             node if name_it in ("both", "failed_node") else ""))
        if name_it in ("both", "event"):
            back = "Unknown" if open_event else str(at + rng.randint(300, 1800))
            events.append(f"{node}|{at}|{back}|DOWN*|Not responding")

    def spread(times: int) -> list[int]:
        """``times`` crash times over the day, at least an hour apart."""
        slots = rng.sample(range(1, 23), times)
        return sorted(window_start + slot * 3600 + rng.randint(0, 1800) for slot in slots)

    for index, node in enumerate(lemon_nodes):
        for number, at in enumerate(spread(rng.randint(2, 6))):
            incident(node, at, big=number == 0 and index % 2 == 0,
                     name_it=("both", "failed_node", "event")[(index + number) % 3])
    for index, node in enumerate(once_nodes):
        incident(node, spread(1)[0], name_it=("both", "failed_node", "event")[index % 3])
    for node in down_nodes:
        incident(node, NOW_EPOCH_S - rng.randint(600, 3 * 3600), open_event=True)
    # 1,000-node runs lost to one node that failed once (named by both).
    # (every once-failed node but those named by failed_node alone has a DOWN event)
    with_event = [node for index, node in enumerate(once_nodes) if index % 3 != 1]
    big_culprits = rng.sample(with_event, big_runs)
    for node in big_culprits:
        # Its earlier incident already exists; this run is the same crash, so the
        # run ends when that node's DOWN event starts.
        at = int(next(line for line in events if line.startswith(node + "|")).split("|")[1])
        position = names.index(node)
        first = max(0, min(position - rng.randint(0, 999), len(names) - 1000))
        runs.append(_run(next(job_ids), names[first:first + 1000], at - 7200, at + 5, node))
    # Unattributed: NODE_FAIL runs of big jobs with no failed_node and no event.
    # (drawn again until no node of the run has a DOWN event while it ran: Slurm then
    # truly names nobody)
    down_at: dict[str, list[int]] = {}
    for line in events:
        down_at.setdefault(line.split("|")[0], []).append(int(line.split("|")[1]))
    made = 0
    while made < unattributed:
        first = rng.randrange(0, len(names) - 1000)
        at = window_start + rng.randint(3600, DAY_S - 3600)
        members = names[first:first + 1000]
        if any(at - 3600 <= when <= at + 300 for node in members
               for when in down_at.get(node, ())):
            continue
        runs.append(_run(next(job_ids), members, at - 3600, at, ""))
        made += 1
    # Admin drains (never a failure) and a DOWN event older than every run on it.
    for node in rng.sample(rest, 20):
        at = window_start + rng.randint(0, DAY_S - 600)
        events.append(f"{node}|{at}|{at + 600}|DRAIN|admin: firmware update")
    events.sort(key=lambda line: int(line.split("|")[1]))
    events.insert(0, f"|{window_start - DAY_S}|Unknown||Cluster Registered TRES")

    down_set = set(down_nodes)
    nodes = []
    for index, name in enumerate(names):
        partitions = ("gpu", "interactive") if index < INTERACTIVE_NODES else ("gpu",)
        if name in down_set:
            nodes.append(_node(name, ("DOWN", "NOT_RESPONDING"), partitions, "Not responding"))
        elif index >= INTERACTIVE_NODES and rng.random() < busy_fraction:
            nodes.append(_node(name, ("ALLOCATED",), partitions))
        else:
            nodes.append(_node(name, ("IDLE",), partitions))
    rng.shuffle(runs)
    return SyntheticCluster(
        nodes=nodes, topology_text=topology_text(count), runs=runs,
        events_text="\n".join(events) + "\n",
        lemons=frozenset(lemon_nodes) | down_set, failed_once=frozenset(once_nodes),
        still_down=frozenset(down_nodes), unattributed_runs=unattributed, big_runs=big_runs)


# ----------------------------------------------------------------- rendering


def _number(value: int | None) -> dict:
    return {"set": value is not None, "infinite": False, "number": value or 0}


_META = {"plugin": {"type": "", "name": "", "data_parser": "data_parser/v0.0.42",
                    "accounting_storage": "accounting_storage/slurmdbd"},
         "client": {"source": "", "user": "alice", "group": "alice"},
         "slurm": {"version": {"major": "24", "micro": "5", "minor": "11"},
                   "release": "24.11.5", "cluster": "big"}}


def node_json(node: Node) -> dict:
    """One node as ``scontrol show nodes --json`` (v0.0.42) prints it, every field."""
    busy = node.alloc_cpus > 0
    return {
        "architecture": "x86_64", "burstbuffer_network_address": "", "boards": 1,
        "boot_time": _number(node.boot_epoch_s), "cluster_name": "", "cores": 32,
        "specialized_cores": 0, "cpu_binding": 0, "cpu_load": 6400 if busy else 3,
        "free_mem": _number(900_000), "cpus": node.cpus, "effective_cpus": node.cpus,
        "specialized_cpus": "",
        "energy": {"average_watts": 0, "base_consumed_energy": 0, "consumed_energy": 0,
                   "current_watts": _number(0), "previous_consumed_energy": 0,
                   "last_collected": 0},
        "external_sensors": {}, "extra": "", "power": {}, "features": ["h100", "ib"],
        "active_features": ["h100", "ib"], "gpu_spec": "",
        "gres": f"gpu:h100:{node.gpus}(S:0-1)", "gres_drained": "N/A",
        "gres_used": f"gpu:h100:{node.gpus_used}(IDX:{'0-7' if node.gpus_used else 'N/A'})",
        "instance_id": "", "instance_type": "", "last_busy": _number(NOW_EPOCH_S - 60),
        "mcs_label": "", "specialized_memory": 0, "name": node.name,
        "next_state_after_reboot": ["INVALID"], "address": node.address,
        "hostname": node.name, "state": sorted(node.states),
        "operating_system": "Linux 6.8.0-45-generic #45-Ubuntu SMP", "owner": "",
        "partitions": list(node.partitions), "port": 6818,
        "real_memory": node.real_memory_mb, "res_cores_per_gpu": 0, "comment": "",
        "reason": node.reason, "reason_changed_at": _number(0), "reason_set_by_user": "",
        "resume_after": _number(0), "reservation": "", "alloc_memory": node.alloc_memory_mb,
        "alloc_cpus": node.alloc_cpus, "alloc_idle_cpus": node.cpus - node.alloc_cpus,
        "tres_used": f"cpu={node.alloc_cpus},gres/gpu={node.gpus_used}" if busy else "",
        "tres_weighted": float(node.alloc_cpus),
        "slurmd_start_time": _number(node.boot_epoch_s), "sockets": 2, "threads": 2,
        "temporary_disk": 0, "weight": 1,
        "tres": f"cpu={node.cpus},mem={node.real_memory_mb}M,billing={node.cpus},"
                f"gres/gpu={node.gpus}",
        "version": "24.11.5",
    }


def run_json(run: AccountingRecord) -> dict:
    """One run as ``sacct --json -X`` (v0.0.42) prints it, every field."""
    count = len(run.nodes)
    exit_code = {"status": ["ERROR"], "return_code": _number(run.exit_code),
                 "signal": {"id": _number(None), "name": ""}}
    tres = [{"type": "cpu", "name": "", "id": 1, "count": CPUS_PER_NODE * count},
            {"type": "mem", "name": "", "id": 2, "count": 1_000_000 * count},
            {"type": "node", "name": "", "id": 4, "count": count},
            {"type": "billing", "name": "", "id": 5, "count": CPUS_PER_NODE * count},
            {"type": "gres", "name": "gpu", "id": 1001, "count": GPUS_PER_NODE * count}]
    return {
        "account": run.account, "comment": {"administrator": "", "job": "", "system": ""},
        "allocation_nodes": count,
        "array": {"job_id": 0, "limits": {"max": {"running": {"tasks": 0}}},
                  "task_id": _number(None), "task": ""},
        "association": {"account": run.account, "cluster": "big", "partition": "",
                        "user": run.user, "id": 5},
        "block": "", "cluster": "big", "constraints": "", "container": "",
        "derived_exit_code": exit_code,
        "time": {"elapsed": run.elapsed_s, "eligible": run.eligible_epoch_s,
                 "end": run.end_epoch_s, "planned": _number(60),
                 "start": run.start_epoch_s, "submission": run.submit_epoch_s,
                 "suspended": 0, "system": {"seconds": 0, "microseconds": 0},
                 "limit": _number(1440), "total": {"seconds": 0, "microseconds": 0},
                 "user": {"seconds": 0, "microseconds": 0}},
        "exit_code": exit_code, "extra": "", "failed_node": run.failed_node,
        "flags": ["STARTED_ON_SCHEDULE", "START_RECEIVED"], "group": run.user,
        "het": {"job_id": 0, "job_offset": _number(None)}, "job_id": run.job_id,
        "name": run.name, "licenses": "", "mcs": {"label": ""},
        "nodes": hostlist.compress(run.nodes), "partition": run.partition, "hold": False,
        "priority": _number(1000), "qos": run.qos, "qosreq": "",
        "required": {"CPUs": CPUS_PER_NODE * count, "memory_per_cpu": _number(None),
                     "memory_per_node": _number(0)},
        "kill_request_user": "", "restart_cnt": run.restarts,
        "reservation": {"id": 0, "name": ""}, "script": "",
        "stdin_expanded": "/dev/null", "stdout_expanded": f"/home/alice/{run.job_id}.out",
        "stderr_expanded": "", "stdout": "/home/alice/%j.out", "stderr": "",
        "stdin": "/dev/null", "state": {"current": [run.state], "reason": run.reason},
        "steps": [], "submit_line": "sbatch --parsable", "tres": {"allocated": tres,
                                                                  "requested": tres},
        "used_gres": "", "user": run.user, "wckey": {"wckey": "", "flags": []},
        "working_directory": "/home/alice",
    }


def render(cluster: SyntheticCluster) -> dict[str, str]:
    """What each command prints: ``{file name: text}`` (JSON indented as Slurm does)."""
    nodes = {"nodes": [node_json(node) for node in cluster.nodes],
             "last_update": _number(NOW_EPOCH_S),
             "meta": {**_META, "command": ["show", "nodes"]}, "errors": [], "warnings": []}
    sacct = {"jobs": [run_json(run) for run in cluster.runs],
             "meta": {**_META, "command": ["sacct"]}, "errors": [], "warnings": []}
    return {"scontrol_nodes.json": json.dumps(nodes, indent=2) + "\n",
            "scontrol_topology.txt": cluster.topology_text,
            "sacct_node_fail.json": json.dumps(sacct, indent=2) + "\n",
            "sacctmgr_events.txt": cluster.events_text}


#: argv prefix -> recorded output, as ReplayRunner's manifest holds it.
REPLAY_COMMANDS = [
    (["scontrol", "show", "nodes", "--json"], "scontrol_nodes.json"),
    (["scontrol", "show", "topology"], "scontrol_topology.txt"),
    (["sacct"], "sacct_node_fail.json"),
    (["sacctmgr"], "sacctmgr_events.txt"),
]


def write_replay(cluster: SyntheticCluster, directory: Path) -> Path:
    """Write the outputs and ``manifest.json`` for ReplayRunner; return the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in render(cluster).items():
        (directory / name).write_text(text, encoding="utf-8")
    manifest = [{"argv": argv, "stdout": name} for argv, name in REPLAY_COMMANDS]
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return directory
