"""Recovering inside the allocation: a supervisor in the batch step of a ``--no-kill``
job runs the training as srun steps, hears from every rank through a heartbeat, and
restarts the step on the survivors (or a hot spare) seconds after a rank is lost.

- ``heartbeat``: peer-loss detection, independent of Slurm's timeouts
- ``plan``: which nodes the next step runs on (pure)
- ``supervisor``: the loop; ``python3 -m slurmkit.launch --help``
"""
