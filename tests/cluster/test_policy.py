"""The job-submit policy running inside slurmctld (job_submit/python): reclaim,
guarantees, entitlements, fault isolation, and agreement with `policy simulate`."""

from __future__ import annotations

import json
import random
import time

import pytest

from slurmkit.policy.simulate import simulate
from slurmkit.slurm.client import SlurmClient
from slurmkit.testing.cluster import ContainerRunner, wait_until

GOOD_MODULE = "/etc/slurm/job_submit.py"

# A borrower that behaves as slurmkit's trainer does: on the warning signal its tasks
# write a "warned" line and exit; the job is then requeued by Slurm (PreemptMode=REQUEUE).
BORROWER = """#!/bin/bash
#SBATCH --output=/shared/policy/%x-%j.out
#SBATCH --open-mode=append
echo "run ${SLURM_RESTART_COUNT:-0} started"
srun bash -c 'trap "echo warned \\$(hostname); exit 0" USR2; while true; do sleep 0.2; done'
"""


def as_user(cluster, user: str) -> SlurmClient:
    return SlurmClient(ContainerRunner(cluster, "login", user))


def sbatch(cluster, user: str, args: list[str], script: str = "#!/bin/bash\ntrue\n"):
    """(job id or None, sbatch's stderr)."""
    runner = ContainerRunner(cluster, "login", user)
    result = runner.run(["sbatch", "--parsable", *args], input_text=script)
    job_id = int(result.stdout.strip().split(";")[0]) if result.returncode == 0 else None
    return job_id, result.stderr


def ping_up(cluster) -> bool:
    return cluster.exec("ctl", ["scontrol", "ping"], check=False).returncode == 0


@pytest.fixture
def cleanup(cluster):
    yield
    cluster.cancel_test_jobs()


def test_reclaim_preempts_borrowed_training_within_grace(cluster, policy_installed, jobs, cleanup):
    bob = as_user(cluster, "bob")
    borrower, _ = sbatch(cluster, "bob", ["-A", "team-b", "-N4", "--gpus-per-node=8",
                                          "-J", "borrower"], BORROWER)
    running = wait_until("bob's 4-node training to run on borrowed capacity",
                         lambda: [j for j in bob.jobs(job_ids=[borrower]) if j.state == "RUNNING"],
                         timeout_s=60)[0]
    assert running.partition == "borrow-training" and len(running.nodes) == 4

    submitted_at = time.monotonic()
    owner, _ = sbatch(cluster, "alice", ["--qos=inference", "-N1", "--gpus-per-node=8",
                                         "-J", "owner", "-o", "/dev/null"], "#!/bin/bash\nsleep 5\n")
    alice = as_user(cluster, "alice")
    started = wait_until("alice's inference to start",
                         lambda: [j for j in alice.jobs(job_ids=[owner]) if j.state == "RUNNING"],
                         timeout_s=120)[0]
    waited_s = time.monotonic() - submitted_at
    grace_s = policy_installed.classes["training"].grace_s
    assert started.partition == "guar-team-a"
    assert waited_s <= grace_s + 30, f"reclaim took {waited_s:.0f} s"

    # Bob's job heard the warning, was requeued (a PREEMPTED run, not CANCELLED)...
    first_run = jobs.wait_runs(borrower, lambda runs: runs[0].state == "PREEMPTED",
                               "a PREEMPTED first run")[0]
    assert first_run.partition == "borrow-training"
    log = cluster.exec("login", ["cat", f"/shared/policy/borrower-{borrower}.out"]).stdout
    assert log.count("warned") == 4, log
    queued = bob.jobs(job_ids=[borrower])
    assert queued and queued[0].state in ("PENDING", "RUNNING") and queued[0].restart_count >= 1
    # ...and resumes once the owner is done.
    wait_until("bob's job to run again", lambda: [j for j in bob.jobs(job_ids=[borrower])
                                                  if j.state == "RUNNING"], timeout_s=180)
    print(f"reclaim: inference started {waited_s:.1f} s after submission")


def _scheduled_since(client: SlurmClient, job_id: int, since_epoch_s: float) -> bool:
    """True once the scheduler has looked at the pending job after ``since``."""
    payload = json.loads(client.query_jobs(job_ids=[job_id]))
    backfill = payload.get("last_backfill", {}).get("number", 0)
    [job] = payload["jobs"] or [None]
    evaluated = (job or {}).get("last_sched_evaluation", {}).get("number", 0)
    return bool(job) and evaluated > since_epoch_s and backfill > since_epoch_s


def test_guaranteed_jobs_are_never_preempted(cluster, policy_installed, jobs, cleanup):
    alice, bob = as_user(cluster, "alice"), as_user(cluster, "bob")
    guaranteed, _ = sbatch(cluster, "alice", ["-N2", "--gpus-per-node=8", "-J", "guaranteed",
                                              "-o", "/dev/null"], "#!/bin/bash\nsleep 600\n")
    wait_until("alice's guaranteed job to run",
               lambda: [j for j in alice.jobs(job_ids=[guaranteed])
                        if j.state == "RUNNING" and j.partition == "guar-team-a"], timeout_s=60)
    borrowed, _ = sbatch(cluster, "bob", ["-A", "team-b", "-N2", "--gpus-per-node=8",
                                          "-p", "borrow-training", "-J", "borrowed"], BORROWER)
    wait_until("bob's borrowed job to run", lambda: [j for j in bob.jobs(job_ids=[borrowed])
                                                     if j.state == "RUNNING"], timeout_s=60)
    # A borrower that would need alice's nodes, and a guaranteed job of team-b that
    # outranks every borrowed partition: neither may touch alice's job.
    since = time.time()
    big_borrower, _ = sbatch(cluster, "bob", ["-A", "team-b", "-N4", "--gpus-per-node=8",
                                              "-p", "borrow-training", "-J", "big"], BORROWER)
    reclaimer, _ = sbatch(cluster, "bob", ["-A", "team-b", "-N2", "--gpus-per-node=8",
                                           "-p", "guar-team-b", "-J", "reclaimer",
                                           "-o", "/dev/null"], "#!/bin/bash\nsleep 600\n")
    wait_until("team-b's guaranteed job to reclaim its capacity",
               lambda: [j for j in bob.jobs(job_ids=[reclaimer]) if j.state == "RUNNING"],
               timeout_s=120)
    wait_until("the scheduler (main and backfill) to have weighed the big borrower",
               lambda: _scheduled_since(bob, big_borrower, since), timeout_s=120)
    [still] = alice.jobs(job_ids=[guaranteed])
    assert still.state == "RUNNING" and still.restart_count == 0
    runs = jobs.runs(guaranteed)
    assert [run.state for run in runs] == ["RUNNING"]
    # The borrower on team-b's own guaranteed capacity was the one reclaimed.
    assert jobs.wait_runs(borrowed, lambda r: r[0].state == "PREEMPTED", "PREEMPTED")
    assert bob.jobs(job_ids=[big_borrower])[0].state == "PENDING"


@pytest.mark.parametrize("user, args, fragment", [
    ("alice", ["-A", "team-b"], "user alice may not submit to queue team-b; your queues: team-a"),
    ("alice", ["--qos=urgent"], "QOS 'urgent' is not a workload class; use --qos with one of"),
    ("bob", ["--qos=inference"], "queue team-b does not run inference jobs"),
    ("alice", ["-p", "main"], "partition(s) main are not open to training jobs of queue team-a"),
    ("alice", ["-N5", "--gpus-per-node=8"], "the job asks for 40 GPUs; queue team-a may use at"),
])
def test_entitlements_are_enforced_with_actionable_messages(cluster, policy_installed, user,
                                                            args, fragment):
    job_id, stderr = sbatch(cluster, user, ["--hold", *args])
    assert job_id is None and f"sbatch: error: {fragment}" in stderr


def test_users_cannot_change_what_the_policy_set(cluster, policy_installed, cleanup):
    job_id, _ = sbatch(cluster, "alice", ["--hold"])
    runner = ContainerRunner(cluster, "login", "alice")
    for change in ("QOS=inference", "Partition=borrow-batch", "Priority=100000"):
        result = runner.run(["scontrol", "update", f"JobId={job_id}", change])
        assert result.returncode != 0, change
    [job] = as_user(cluster, "alice").jobs(job_ids=[job_id])
    assert job.qos == "training" and job.partition == "guar-team-a,borrow-training"


def _write_module(cluster, text: str) -> None:
    # A new mtime, always: the shim reloads on a change of mtime.
    cluster.exec("ctl", ["bash", "-c", f"cat > {GOOD_MODULE}.new && touch -d '+1 sec' "
                         f"{GOOD_MODULE}.new && mv {GOOD_MODULE}.new {GOOD_MODULE}"],
                 input_text=text)


def test_a_failing_policy_never_takes_slurmctld_down(cluster, policy_installed, cleanup):
    good = cluster.exec("ctl", ["cat", GOOD_MODULE]).stdout
    conf = cluster.exec("ctl", ["cat", "/etc/slurm/job_submit_python.conf"]).stdout
    try:
        # 1. A broken replacement: the previous policy keeps serving.
        _write_module(cluster, "def job_submit(:\n")
        job_id, stderr = sbatch(cluster, "alice", ["--hold"])
        assert job_id, stderr
        [job] = as_user(cluster, "alice").jobs(job_ids=[job_id])
        assert job.partition == "guar-team-a,borrow-training"  # the old policy decided
        assert ping_up(cluster)

        # 2. A policy that raises (SystemExit included): fail closed, per job.
        _write_module(cluster, good + (
            "\n_inner = job_submit\n"
            "def job_submit(job, uid):\n"
            "    if job.get('name') == 'boom': raise RuntimeError('boom')\n"
            "    if job.get('name') == 'exit': raise SystemExit(3)\n"
            "    if job.get('name') == 'garbage': return ['not', 'a', 'dict']\n"
            "    return _inner(job, uid)\n"))
        for name, expected in (("boom", "RuntimeError: boom"), ("exit", "SystemExit: 3"),
                               ("garbage", "returned list, not a dict")):
            job_id, stderr = sbatch(cluster, "alice", ["--hold", "-J", name])
            assert job_id is None and "job submission policy unavailable" in stderr, stderr
            assert expected in stderr
            assert ping_up(cluster)
        assert sbatch(cluster, "alice", ["--hold", "-J", "fine"])[0]

        # 3. Broken at start-up (slurmctld restarts on reconfigure): it still starts,
        #    users are refused with the cause, operators pass.
        _write_module(cluster, "import no_such_module_anywhere\n")
        cluster.reconfigure()
        job_id, stderr = wait_until(
            "the restarted controller to refuse with the cause",
            lambda: (r := sbatch(cluster, "alice", ["--hold"]))[1] and r, timeout_s=60)
        assert job_id is None and "No module named 'no_such_module_anywhere'" in stderr
        root_job = cluster.exec("login", ["sbatch", "--parsable", "--hold", "-o", "/dev/null",
                                          "--wrap", "true"], check=False)
        assert root_job.returncode == 0, root_job.stderr
        cluster.exec("ctl", ["scancel", root_job.stdout.strip()])

        # 4. The same with FailMode=open: accepted unchanged.
        cluster.exec("ctl", ["bash", "-c", "sed -i 's/^FailMode=.*/FailMode=open/' "
                             "/etc/slurm/job_submit_python.conf"])
        cluster.reconfigure()
        job_id, stderr = wait_until("an open-mode submission",
                                    lambda: (r := sbatch(cluster, "alice", ["--hold"]))[0] and r,
                                    timeout_s=60)
        [job] = as_user(cluster, "alice").jobs(job_ids=[job_id])
        assert job.partition not in ("guar-team-a,borrow-training",)  # the policy did not run
    finally:
        cluster.exec("ctl", ["tee", "/etc/slurm/job_submit_python.conf"], input_text=conf)
        _write_module(cluster, good)
        cluster.reconfigure()
    assert sbatch(cluster, "alice", ["--hold"])[0]


INSTALLED_POLICY = "/etc/slurm/slurmkit-policy.toml"
SHIM_CONF = "/etc/slurm/job_submit_python.conf"
CTL_LOG = "/var/log/slurm/slurmctld.log"


def _replace_on_ctl(cluster, path: str, shell_producer: str) -> None:
    """Atomically replace a file on the controller with what a shell command prints."""
    cluster.exec("ctl", ["bash", "-c", f"{shell_producer} > {path}.new && "
                         f"touch -d '+1 sec' {path}.new && mv {path}.new {path}"])


def test_a_broken_configuration_reload_never_lets_a_job_through(cluster, policy_installed,
                                                                cleanup):
    """With FailMode=open, a configuration that fails to reload (not UTF-8, a wrong
    type, nested too deeply) once let a job through unpoliced every few seconds (the
    runtime's periodic check raised out of job_submit). The previous policy must keep
    deciding, for longer than that period, and each bad version be logged once."""
    from slurmkit.policy.runtime import FALLBACK_CHECK_S

    conf = cluster.exec("ctl", ["cat", SHIM_CONF]).stdout
    good = cluster.exec("ctl", ["cat", INSTALLED_POLICY]).stdout
    try:
        cluster.exec("ctl", ["sed", "-i", "s/^FailMode=.*/FailMode=open/", SHIM_CONF])
        cluster.reconfigure()
        log_from = int(cluster.exec("ctl", ["wc", "-l", CTL_LOG]).stdout.split()[0]) + 1
        broken = [rf"sed 's/^nodes = .*/&\noperators = 5/' {INSTALLED_POLICY}",  # first:
                  r"printf '\377\376 not UTF-8\n'",                  # it reads the good one
                  "python3 -c \"print('x = ' + '[' * 3000 + ']' * 3000)\""]
        for producer in broken:
            _replace_on_ctl(cluster, INSTALLED_POLICY, producer)
            deadline = time.monotonic() + FALLBACK_CHECK_S + 2  # one check and more
            while time.monotonic() < deadline:
                job_id, stderr = sbatch(cluster, "alice", ["--hold", "-N8",
                                                           "--gpus-per-node=8"])
                assert job_id is None and "the job asks for 64 GPUs" in stderr, stderr
                job_id, stderr = sbatch(cluster, "alice", ["--hold", "-o", "/dev/null"])
                [job] = as_user(cluster, "alice").jobs(job_ids=[job_id])
                assert job.partition == "guar-team-a,borrow-training", (producer, job)
        log = cluster.exec("ctl", ["tail", "-n", f"+{log_from}", CTL_LOG]).stdout
        assert log.count("keeps serving until the file is fixed") == len(broken), log[-3000:]
    finally:
        cluster.exec("ctl", ["tee", SHIM_CONF], input_text=conf)
        cluster.exec("ctl", ["tee", INSTALLED_POLICY], input_text=good)
        cluster.reconfigure()


@pytest.mark.parametrize("args, gpus", [
    (["-N", "2-4", "--gpus-per-node=16"], 64),          # the maximum node count, not -N 2
    (["--gres=gpu:1k"], 1024),                          # a size suffix
    (["-N3", "--sockets-per-node=2", "--gpus-per-socket=8"], 48),
    (["-n", "40", "--ntasks-per-gpu=1"], 40),           # GPUs Slurm derives from tasks
    # "gres:" (a user's spelling that gpu_count alone reads as no GPU) reaches the
    # plugin as "gres/gpu:8": sbatch writes it out before job_submit sees it.
    (["-n5", "--tres-per-task=gres:gpu:8"], 40),
])
def test_gpus_are_priced_as_slurm_allocates_them(cluster, policy_installed, args, gpus):
    job_id, stderr = sbatch(cluster, "alice", ["--hold", "-o", "/dev/null", *args])
    assert job_id is None and f"the job asks for {gpus} GPUs" in stderr, stderr


def test_updates_are_priced_and_users_release_their_own_holds(cluster, policy_installed,
                                                              cleanup):
    # The job outlives the checks below (a `true` job could run and leave the queue
    # between the release and the query); the cleanup fixture cancels it.
    job_id, stderr = sbatch(cluster, "alice", ["--hold", "-N1", "--gpus-per-node=8",
                                               "-o", "/dev/null"], "#!/bin/bash\nsleep 120\n")
    assert job_id, stderr
    runner = ContainerRunner(cluster, "login", "alice")
    grown = runner.run(["scontrol", "update", f"JobId={job_id}", "NumNodes=40"])
    assert grown.returncode != 0, grown.stdout
    reshaped = runner.run(["scontrol", "update", f"JobId={job_id}", "NumNodes=2",
                           "TresPerNode=gres/gpu:8"])
    assert reshaped.returncode == 0, reshaped.stderr
    released = runner.run(["scontrol", "release", str(job_id)])  # priority INFINITE
    assert released.returncode == 0, released.stderr
    [job] = as_user(cluster, "alice").jobs(job_ids=[job_id])
    assert job.state in ("PENDING", "RUNNING") and len(job.nodes) in (0, 2)


def _corpus(count: int, seed: int = 4):
    randomness = random.Random(seed)
    users = ["alice", "bob", "carol"]
    for _ in range(count):
        description = {"user": randomness.choice(users), "hold": True,
                       "nodes": randomness.choice([1, 1, 2, 3, 4]),
                       "name": "corpus"}
        for key, choices in (
                ("account", [None, None, "team-a", "team-b", "physics"]),
                ("qos", [None, None, "inference", "training", "batch", "urgent", "normal"]),
                ("gpus_per_node", [None, 4, 8]),
                ("partition", [None, None, None, "guar-team-a", "borrow-training",
                               "guar-team-b,borrow-batch", "main"]),
                ("time", [None, "30", "2:00:00", "2-00:00:00"]),
                ("requeue", [None, True, False])):
            value = randomness.choice(choices)
            if value is not None:
                description[key] = value
        if randomness.random() < 0.05:
            description.update(nodes=5, gpus_per_node=8)  # over every cap
        yield description


def _sbatch_args(description: dict) -> list[str]:
    args = ["--parsable", "--hold", "-N", str(description["nodes"]), "-J", description["name"],
            "-o", "/dev/null"]
    for key, flag in (("account", "-A"), ("qos", "--qos"), ("partition", "-p"), ("time", "-t")):
        if key in description:
            args += [flag, str(description[key])]
    if "gpus_per_node" in description:
        args.append(f"--gpus-per-node={description['gpus_per_node']}")
    if "requeue" in description:
        args.append("--requeue" if description["requeue"] else "--no-requeue")
    return args


def test_simulate_agrees_with_the_live_shim_on_200_jobs(cluster, policy_installed, cleanup):
    corpus = list(_corpus(200))
    # One docker exec per user: a loop of sbatch calls keeping each one's exit status,
    # output and error in files, then one JSON line per job.
    live: dict[int, dict] = {}
    for user in ("alice", "bob", "carol"):
        mine = [(index, d) for index, d in enumerate(corpus) if d["user"] == user]
        script = 'd=$(mktemp -d)\n' + "".join(
            f"sbatch {' '.join(_quote(a) for a in _sbatch_args(d))} --wrap true "
            f">$d/{index}.out 2>$d/{index}.err; echo $? >$d/{index}.rc\n" for index, d in mine
        ) + ("python3 -c 'import json, pathlib, sys\n"
             "for rc in sorted(pathlib.Path(sys.argv[1]).glob(\"*.rc\")):\n"
             "    read = lambda suffix: rc.with_suffix(suffix).read_text()\n"
             "    print(json.dumps({\"index\": int(rc.stem), \"rc\": int(read(\".rc\")),\n"
             "                      \"out\": read(\".out\").strip(), \"err\": read(\".err\")}))"
             "' $d\nrm -rf $d\n")
        result = cluster.exec("login", ["bash", "-s"], user=user, input_text=script,
                              timeout_s=600)
        for line in result.stdout.splitlines():
            record = json.loads(line)
            live[record["index"]] = record
    assert len(live) == 200
    job_ids = [int(r["out"].split(";")[0]) for r in live.values() if r["rc"] == 0]
    queued = {job.job_id: job for job in
              SlurmClient(ContainerRunner(cluster, "ctl", "root")).jobs(job_ids=job_ids)}

    predicted = list(simulate(policy_installed, corpus))
    disagreements = []
    for index, decision in enumerate(predicted):
        outcome = live[index]
        if decision["action"] == "reject":
            if outcome["rc"] == 0 or decision["message"] not in outcome["err"]:
                disagreements.append((index, corpus[index], decision, outcome))
            continue
        if outcome["rc"] != 0:
            disagreements.append((index, corpus[index], decision, outcome))
            continue
        job = queued[int(outcome["out"].split(";")[0])]
        expected_account = decision["changes"].get("account", corpus[index].get("account"))
        if (job.partition, job.qos, job.account) != (decision["changes"]["partition"],
                                                     decision["changes"]["qos"],
                                                     expected_account):
            disagreements.append((index, corpus[index], decision,
                                  (job.partition, job.qos, job.account)))
    accepted = sum(1 for d in predicted if d["action"] == "accept")
    assert not disagreements, disagreements[:5]
    assert 40 <= accepted <= 160, accepted  # the corpus exercises both outcomes


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)
