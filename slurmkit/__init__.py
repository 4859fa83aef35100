"""slurmkit: topology-aware submission, preemptible GPU queues, triggered
checkpoints and goodput reports on plain Slurm."""

__version__ = "0.1.0"
