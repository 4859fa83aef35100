/*
 * Submit N held batch jobs through libslurm as fast as one client can, and print
 * "<N> <seconds>" — the controller-side submission path (RPC + job_submit plugin +
 * job creation) without sbatch's process start-up. Built and run on the login node
 * by bench/policy.py:  gcc -O2 -o submitter submitter.c -lslurm
 *   submitter N [PARTITION QOS]   (no PARTITION/QOS: let the job_submit plugin choose)
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <slurm/slurm.h>
#include <slurm/slurm_errno.h>

int main(int argc, char **argv)
{
	int count = argc > 1 ? atoi(argv[1]) : 100;
	char *partition = argc > 3 ? argv[2] : NULL;
	char *qos = argc > 3 ? argv[3] : NULL;
	char *environment[] = {"PATH=/usr/bin:/bin", NULL};
	struct timespec start, end;
	int failures = 0;

	slurm_init(NULL);
	clock_gettime(CLOCK_MONOTONIC, &start);
	for (int i = 0; i < count; i++) {
		job_desc_msg_t desc;
		submit_response_msg_t *response = NULL;
		slurm_init_job_desc_msg(&desc);
		desc.name = "bench-submit";
		desc.script = "#!/bin/bash\ntrue\n";
		desc.user_id = getuid();
		desc.group_id = getgid();
		desc.min_nodes = 1;
		desc.priority = 0; /* held: never runs */
		desc.work_dir = "/tmp";
		desc.std_out = "/dev/null";
		desc.environment = environment;
		desc.env_size = 1;
		desc.tres_per_node = "gres/gpu:8";
		desc.account = "team-a";
		desc.partition = partition;
		desc.qos = qos;
		if (slurm_submit_batch_job(&desc, &response) != SLURM_SUCCESS) {
			if (failures++ < 3)
				fprintf(stderr, "submit failed: %s\n", slurm_strerror(errno));
		} else {
			slurm_free_submit_response_response_msg(response);
		}
	}
	clock_gettime(CLOCK_MONOTONIC, &end);
	printf("%d %.6f %d\n", count,
	       (end.tv_sec - start.tv_sec) + (end.tv_nsec - start.tv_nsec) / 1e9, failures);
	slurm_fini();
	return failures ? 1 : 0;
}
