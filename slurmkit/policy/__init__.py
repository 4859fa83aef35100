"""The job-submit policy: virtual queues with guaranteed GPU quotas that lend idle
capacity and reclaim it by preemption, and workload classes.

Pure Python, importable without Slurm: ``config`` (the admin's TOML), ``decide``
(one job description in, one decision out), ``slurmconf`` (what it means for
slurm.conf and sacctmgr). The C shim ``job_submit/python`` calls ``runtime``.
"""
