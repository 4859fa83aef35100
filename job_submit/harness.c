/*
 * Drive job_submit_python.so outside slurmctld: load it as slurmctld does, call
 * job_submit() the way the RPC threads do, and report decisions and timing.
 *
 *   harness PLUGIN.so COUNT [new-thread-per-call]
 *
 * Prints one line per distinct outcome and "calls=N us_per_call=X". Built next to
 * the plugin (make harness); used by bench/policy.py and the shim's tests.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <slurm/slurm.h>
#include <slurm/slurm_errno.h>

extern char *slurm_xstrdup(const char *str);
extern void slurm_xfree(void **ptr);

typedef int (*submit_fn)(job_desc_msg_t *, uint32_t, char **);
static submit_fn job_submit;

typedef struct {
	int rc;
	char message[512];
	char partition[256];
	char qos[64];
} outcome_t;

static void *one_call(void *arg)
{
	outcome_t *outcome = arg;
	job_desc_msg_t desc;
	char *err_msg = NULL;
	slurm_init_job_desc_msg(&desc);
	desc.user_id = 2001;
	desc.group_id = 2001;
	desc.min_nodes = 1;
	desc.name = slurm_xstrdup(getenv("HARNESS_JOB_NAME") ? getenv("HARNESS_JOB_NAME") : "harness");
	desc.account = slurm_xstrdup("team-a");
	desc.tres_per_node = slurm_xstrdup("gres/gpu:8");
	outcome->rc = job_submit(&desc, 2001, &err_msg);
	snprintf(outcome->message, sizeof(outcome->message), "%s", err_msg ? err_msg : "");
	snprintf(outcome->partition, sizeof(outcome->partition), "%s",
		 desc.partition ? desc.partition : "(none)");
	snprintf(outcome->qos, sizeof(outcome->qos), "%s", desc.qos ? desc.qos : "(none)");
	if (err_msg)
		slurm_xfree((void **) &err_msg);
	slurm_xfree((void **) &desc.name);
	slurm_xfree((void **) &desc.account);
	slurm_xfree((void **) &desc.tres_per_node);
	if (desc.partition)
		slurm_xfree((void **) &desc.partition);
	if (desc.qos)
		slurm_xfree((void **) &desc.qos);
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: %s PLUGIN.so COUNT [new-thread-per-call]\n", argv[0]);
		return 2;
	}
	int count = atoi(argv[2]);
	int threaded = argc > 3;
	slurm_init(NULL);
	void *plugin = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
	if (!plugin) {
		fprintf(stderr, "dlopen: %s\n", dlerror());
		return 1;
	}
	int (*init)(void) = (int (*)(void)) dlsym(plugin, "init");
	job_submit = (submit_fn) dlsym(plugin, "job_submit");
	if (!init || !job_submit || init() != SLURM_SUCCESS) {
		fprintf(stderr, "plugin init failed\n");
		return 1;
	}
	outcome_t outcome, first;
	struct timespec start, end;
	memset(&first, 0, sizeof(first));
	clock_gettime(CLOCK_MONOTONIC, &start);
	for (int i = 0; i < count; i++) {
		if (threaded) {
			pthread_t thread;
			pthread_create(&thread, NULL, one_call, &outcome);
			pthread_join(thread, NULL);
		} else {
			one_call(&outcome);
		}
		if (i == 0)
			first = outcome;
	}
	clock_gettime(CLOCK_MONOTONIC, &end);
	double seconds = (end.tv_sec - start.tv_sec) + (end.tv_nsec - start.tv_nsec) / 1e9;
	printf("rc=%d partition=%s qos=%s message=%s\n", first.rc, first.partition, first.qos,
	       first.message);
	long rss_kb = 0;
	FILE *status = fopen("/proc/self/status", "r");
	char line[256];
	while (status && fgets(line, sizeof(line), status))
		if (!strncmp(line, "VmRSS:", 6))
			rss_kb = atol(line + 6);
	if (status)
		fclose(status);
	printf("calls=%d us_per_call=%.1f rss_kb=%ld\n", count, seconds / count * 1e6, rss_kb);
	return 0;
}
