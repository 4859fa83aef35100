/* Stub of <slurm/slurm_errno.h> for bench/submitter.c (see slurm.h here). */
#ifndef SLURMKIT_SUBMITTER_STUB_SLURM_ERRNO_H
#define SLURMKIT_SUBMITTER_STUB_SLURM_ERRNO_H
#define ESLURM_INVALID_ACCOUNT 2045
#endif
