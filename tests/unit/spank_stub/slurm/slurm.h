/* Test stub: the few <slurm/slurm.h> names spank_slurmkit.c uses, with the values of
 * Slurm 24.11's header, so that its logic can be unit-tested on a host without
 * libslurm-dev (tests/unit/test_spank.py). The plugin itself is built against the
 * real headers in the node image. */
#ifndef SLURMKIT_STUB_SLURM_H
#define SLURMKIT_STUB_SLURM_H
#include <stdint.h>
#define SLURM_EXTERN_CONT      (0xfffffffc)
#define SLURM_BATCH_SCRIPT     (0xfffffffb)
#define SLURM_INTERACTIVE_STEP (0xfffffffa)
#endif
