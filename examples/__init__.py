"""Examples that run on the docker-slurm cluster (the trainer, job specs, a policy)."""
