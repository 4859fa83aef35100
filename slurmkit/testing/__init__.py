"""Test support: the docker-slurm cluster harness (needs the `dev` extra)."""
