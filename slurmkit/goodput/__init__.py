"""Goodput: where the GPU-hours went, from Slurm's accounting (every run of every
requeued job) and slurmkit's checkpoint events.

``ingest`` streams sacct output into compact runs grouped by job, ``events`` indexes
the checkpoint events, ``metrics`` (pure) computes ETTR and the badput buckets and
every aggregate, ``report`` formats table / JSON / CSV / HTML.
"""
