"""Live use of the queues, from the job queue (pure over parsed Jobs)."""

from __future__ import annotations

from slurmkit.policy.config import PolicyConfig
from slurmkit.slurm.models import Job


def queue_usage(config: PolicyConfig, jobs: list[Job]) -> list[dict]:
    rows = []
    borrow_partitions = {cls.borrow_partition for cls in config.classes.values()}
    for queue in config.queues.values():
        mine = [job for job in jobs if job.account == queue.name]
        running = [job for job in mine if job.state == "RUNNING"]
        guaranteed = sum(int(job.allocated_tres.get("gres/gpu", 0)) for job in running
                         if job.partition == queue.partition)
        borrowed = sum(int(job.allocated_tres.get("gres/gpu", 0)) for job in running
                       if job.partition in borrow_partitions)
        rows.append({
            "queue": queue.name, "guaranteed_gpus": queue.guaranteed_gpus,
            "guaranteed_in_use_gpus": guaranteed, "borrowed_gpus": borrowed,
            "borrow_limit_gpus": queue.borrow_limit_gpus, "running_jobs": len(running),
            "pending_jobs": sum(1 for job in mine if job.state == "PENDING"),
        })
    return rows
