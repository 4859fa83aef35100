/*
 * libslurm for bench/submitter.c in the unit tests: "submits" by writing each job's
 * fields to $SUBMITTER_STUB_LOG (one line a job, the submitter's own key=value
 * format, every field: unset ones as NO_VAL/NO_VAL16/(null)), and refuses jobs of
 * account "physics" as slurmctld would refuse an unknown account.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <slurm/slurm.h>
#include <slurm/slurm_errno.h>

static FILE *record;

void slurm_init(const char *conf)
{
	(void) conf;
	record = fopen(getenv("SUBMITTER_STUB_LOG"), "w");
	if (!record)
		abort();
}

void slurm_fini(void)
{
	fclose(record);
}

void slurm_init_job_desc_msg(job_desc_msg_t *job)
{
	memset(job, 0, sizeof(*job));
	job->min_nodes = job->max_nodes = job->num_tasks = job->time_limit = NO_VAL;
	job->priority = job->nice = job->user_id = job->group_id = NO_VAL;
	job->ntasks_per_node = job->ntasks_per_tres = job->sockets_per_node = NO_VAL16;
	job->requeue = job->warn_signal = job->warn_time = job->warn_flags = NO_VAL16;
}

#define S(f) fprintf(record, #f "=%s\t", job->f ? job->f : "(null)")
#define N(f) fprintf(record, #f "=%lu\t", (unsigned long) job->f)
int slurm_submit_batch_job(job_desc_msg_t *job, submit_response_msg_t **response)
{
	S(account); S(partition); S(qos); S(tres_per_job); S(tres_per_node);
	S(tres_per_socket); S(tres_per_task); S(req_nodes);
	N(min_nodes); N(max_nodes); N(num_tasks); N(time_limit); N(priority);
	N(ntasks_per_node); N(ntasks_per_tres); N(sockets_per_node); N(requeue);
	N(warn_signal); N(warn_time); N(warn_flags); N(nice);
	S(name); S(work_dir); S(std_out); N(env_size);
	fprintf(record, "script=%zu\n", job->script ? strlen(job->script) : 0);
	if (job->account && !strcmp(job->account, "physics")) {
		errno = ESLURM_INVALID_ACCOUNT;
		return SLURM_ERROR;
	}
	*response = calloc(1, sizeof(**response));
	return *response ? SLURM_SUCCESS : SLURM_ERROR;
}

void slurm_free_submit_response_response_msg(submit_response_msg_t *msg)
{
	free(msg);
}

char *slurm_strerror(int errnum)
{
	return errnum == ESLURM_INVALID_ACCOUNT ? "Invalid account" : "stub error";
}
