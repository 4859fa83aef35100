"""The cluster itself: a multi-node job runs on distinct containers and reaches
accounting through slurmdbd."""

from slurmkit.slurm.models import Node


def test_four_node_job_spans_four_distinct_containers_and_is_accounted(cluster, slurm, jobs):
    # Each task prints its hostname and the identity of its UTS and mount namespaces:
    # four distinct containers have four distinct namespaces.
    script = ("#!/bin/bash\n"
              "srun --ntasks-per-node=1 bash -c "
              "'echo $(hostname) $(readlink /proc/self/ns/uts) $(readlink /proc/self/ns/mnt)'\n")
    job_id = jobs.submit(script, ["-N4", "-J", "four-nodes", "-o", "four-nodes-%j.out"])
    record = jobs.wait_finished(job_id)
    assert record.state == "COMPLETED", record

    output = cluster.exec("login", ["cat", f"/home/alice/four-nodes-{job_id}.out"], user="alice")
    lines = sorted(output.stdout.split("\n")[:-1])
    hostnames = [line.split()[0] for line in lines]
    assert hostnames == ["c1", "c2", "c3", "c4"]
    assert len({line.split()[1] for line in lines}) == 4  # UTS namespaces
    assert len({line.split()[2] for line in lines}) == 4  # mount namespaces

    # sacct answers through slurmdbd (AccountingStorageType=accounting_storage/slurmdbd).
    [run] = jobs.runs(job_id)
    assert run.nodes == ("c1", "c2", "c3", "c4") and run.node_count == 4
    assert run.name == "four-nodes" and run.user == "alice" and run.account == "team-a"
    assert [step.step_id for step in run.steps] == []  # -X: allocations only
    with_steps = slurm.accounting(job_ids=[job_id], steps=True)
    assert {step.step_id for step in with_steps[0].steps} >= {"batch", "0"}


def test_every_compute_node_has_eight_counted_gpus_on_two_leaf_switches(slurm):
    nodes: dict[str, Node] = {node.name: node for node in slurm.nodes()}
    assert sorted(nodes) == ["c1", "c2", "c3", "c4"]
    assert all(node.gpus == 8 for node in nodes.values())
    topology = slurm.topology_text()
    assert "SwitchName=leaf1" in topology and "Nodes=c[1-2]" in topology
    assert "SwitchName=leaf2" in topology and "Nodes=c[3-4]" in topology


def test_gpu_request_is_allocated_and_accounted(slurm, jobs):
    job_id = jobs.submit("#!/bin/bash\necho $CUDA_VISIBLE_DEVICES\n",
                         ["-N1", "--gpus-per-node=4", "-J", "gpus"])
    record = jobs.wait_finished(job_id)
    assert record.state == "COMPLETED" and record.gpus == 4
