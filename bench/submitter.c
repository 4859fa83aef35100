/*
 * Submit held batch jobs through libslurm as fast as one client can: the
 * controller-side submission path (RPC, job_submit plugin, job creation) without
 * sbatch's process start-up. Built and run on the login node by bench/policy.py:
 *
 *   gcc -O2 -Wall -o submitter submitter.c -lslurm
 *   submitter < jobs.tsv
 *
 * Input: one job a line, tab-separated key=value fields (the keys of
 * slurmkit/testing/policy_bench.py's SUBMITTER_FIELDS; unset fields are left out).
 * Every job is a held (priority 0 unless given) batch job named bench-policy running
 * `true`. All lines are read and parsed before the clock starts.
 *
 * Output: "N SECONDS ACCEPTED REFUSED", then one letter a job (A accepted,
 * R refused), then nothing else; the first refusals' reasons go to stderr.
 * Exit status: 0, or 2 for input it cannot read.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <slurm/slurm.h>
#include <slurm/slurm_errno.h>

/* slurm.h: nice is stored offset by NICE_OFFSET (unset: NO_VAL). */
#ifndef NICE_OFFSET
#define NICE_OFFSET 0x80000000
#endif

static char *environment[] = {"PATH=/usr/bin:/bin", NULL};

static int fail(int line, const char *what, const char *text)
{
	fprintf(stderr, "submitter: line %d: %s: %s\n", line, what, text);
	return -1;
}

/* A whole number in [low, high] (no sign, no suffix, nothing after it). */
static int number(const char *text, long long low, long long high, long long *out)
{
	char *end = NULL;
	long long value;
	if (!*text)
		return -1;
	errno = 0;
	value = strtoll(text, &end, 10);
	if (errno || *end || value < low || value > high)
		return -1;
	*out = value;
	return 0;
}

/* Set one key=value field of desc; -1 for an unknown key or a bad value. */
static int set_field(job_desc_msg_t *desc, int line, char *field)
{
	char *equals = strchr(field, '=');
	char *key = field, *value;
	long long n;
	if (!equals)
		return fail(line, "expected key=value", field);
	*equals = '\0';
	value = equals + 1;

#define STRING(name) if (!strcmp(key, #name)) { desc->name = value; return 0; }
	STRING(account) STRING(partition) STRING(qos) STRING(tres_per_job)
	STRING(tres_per_node) STRING(tres_per_socket) STRING(tres_per_task) STRING(req_nodes)
#undef STRING
#define NUMBER(name, low, high, type) if (!strcmp(key, #name)) { \
		if (number(value, low, high, &n)) \
			return fail(line, "bad " #name, value); \
		desc->name = (type) n; \
		return 0; }
	NUMBER(min_nodes, 0, UINT32_MAX, uint32_t) NUMBER(max_nodes, 0, UINT32_MAX, uint32_t)
	NUMBER(num_tasks, 0, UINT32_MAX, uint32_t) NUMBER(time_limit, 0, UINT32_MAX, uint32_t)
	NUMBER(priority, 0, UINT32_MAX, uint32_t)
	NUMBER(ntasks_per_node, 0, UINT16_MAX, uint16_t)
	NUMBER(ntasks_per_tres, 0, UINT16_MAX, uint16_t)
	NUMBER(sockets_per_node, 0, UINT16_MAX, uint16_t)
	NUMBER(requeue, 0, UINT16_MAX, uint16_t) NUMBER(warn_signal, 0, UINT16_MAX, uint16_t)
	NUMBER(warn_time, 0, UINT16_MAX, uint16_t) NUMBER(warn_flags, 0, UINT16_MAX, uint16_t)
#undef NUMBER
	if (!strcmp(key, "nice")) {
		if (number(value, INT32_MIN, INT32_MAX, &n))
			return fail(line, "bad nice", value);
		desc->nice = (uint32_t) (NICE_OFFSET + n);
		return 0;
	}
	return fail(line, "unknown key", key);
}

int main(void)
{
	job_desc_msg_t *jobs = NULL;
	char **lines = NULL;
	size_t count = 0, capacity = 0, accepted = 0;
	char *line = NULL, *outcomes;
	size_t line_size = 0;
	ssize_t length;
	struct timespec start, end;
	int reported = 0;

	while ((length = getline(&line, &line_size, stdin)) >= 0) {
		char *save = NULL, *field;
		if (length && line[length - 1] == '\n')
			line[--length] = '\0';
		if (count == capacity) {
			capacity = capacity ? 2 * capacity : 1024;
			jobs = realloc(jobs, capacity * sizeof(*jobs));
			lines = realloc(lines, capacity * sizeof(*lines));
			if (!jobs || !lines) {
				perror("submitter");
				return 2;
			}
		}
		lines[count] = line; /* the fields point into it */
		slurm_init_job_desc_msg(&jobs[count]);
		jobs[count].name = "bench-policy";
		jobs[count].script = "#!/bin/bash\ntrue\n";
		jobs[count].user_id = getuid();
		jobs[count].group_id = getgid();
		jobs[count].priority = 0; /* held: never runs */
		jobs[count].work_dir = "/tmp";
		jobs[count].std_out = "/dev/null";
		jobs[count].environment = environment;
		jobs[count].env_size = 1;
		for (field = strtok_r(line, "\t", &save); field; field = strtok_r(NULL, "\t", &save))
			if (set_field(&jobs[count], (int) count + 1, field))
				return 2;
		count++;
		line = NULL;
		line_size = 0;
	}
	free(line);
	if (!(outcomes = calloc(count + 2, 1))) {
		perror("submitter");
		return 2;
	}

	slurm_init(NULL);
	clock_gettime(CLOCK_MONOTONIC, &start);
	for (size_t i = 0; i < count; i++) {
		submit_response_msg_t *response = NULL;
		if (slurm_submit_batch_job(&jobs[i], &response) == SLURM_SUCCESS) {
			outcomes[i] = 'A';
			accepted++;
			slurm_free_submit_response_response_msg(response);
		} else {
			outcomes[i] = 'R';
			if (reported++ < 3)
				fprintf(stderr, "submitter: job %zu refused: %s\n", i + 1,
					slurm_strerror(errno));
		}
	}
	clock_gettime(CLOCK_MONOTONIC, &end);
	printf("%zu %.6f %zu %zu\n%s\n", count,
	       (end.tv_sec - start.tv_sec) + (end.tv_nsec - start.tv_nsec) / 1e9, accepted,
	       count - accepted, count ? outcomes : "-");
	slurm_fini();
	for (size_t i = 0; i < count; i++)
		free(lines[i]);
	free(lines);
	free(jobs);
	free(outcomes);
	return 0;
}
