/*
 * Stub of the parts of <slurm/slurm.h> (Slurm 24.11) that bench/submitter.c uses,
 * with the same field types, so that tests/unit/test_policy_bench.py can build it on
 * a host without libslurm-dev. libslurm_stub.c records what it is asked to submit.
 */
#ifndef SLURMKIT_SUBMITTER_STUB_SLURM_H
#define SLURMKIT_SUBMITTER_STUB_SLURM_H
#include <stdint.h>

#define SLURM_SUCCESS 0
#define SLURM_ERROR -1
#define NO_VAL 0xfffffffe
#define NO_VAL16 0xfffe
#define NICE_OFFSET 0x80000000

typedef struct job_descriptor {
	char *account;
	uint32_t env_size;
	char **environment;
	uint32_t group_id;
	char *name;
	uint32_t nice;
	uint32_t num_tasks;
	char *partition;
	uint32_t priority;
	char *qos;
	char *req_nodes;
	uint16_t requeue;
	char *script;
	uint32_t time_limit;
	char *tres_per_job;
	char *tres_per_node;
	char *tres_per_socket;
	char *tres_per_task;
	uint32_t user_id;
	uint16_t warn_flags;
	uint16_t warn_signal;
	uint16_t warn_time;
	char *work_dir;
	uint32_t min_nodes;
	uint32_t max_nodes;
	uint16_t sockets_per_node;
	uint16_t ntasks_per_node;
	uint16_t ntasks_per_tres;
	char *std_out;
} job_desc_msg_t;

typedef struct submit_response_msg {
	uint32_t job_id;
} submit_response_msg_t;

extern void slurm_init(const char *conf);
extern void slurm_fini(void);
extern void slurm_init_job_desc_msg(job_desc_msg_t *job_desc_msg);
extern int slurm_submit_batch_job(job_desc_msg_t *job_desc_msg,
				  submit_response_msg_t **slurm_alloc_msg);
extern void slurm_free_submit_response_response_msg(submit_response_msg_t *msg);
extern char *slurm_strerror(int errnum);
#endif
