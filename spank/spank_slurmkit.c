/*
 * spank_slurmkit: checkpoint options for jobs, and the trigger fan-out.
 *
 *   sbatch/srun --ckpt-dir=DIR      exported to tasks as SLURMKIT_CKPT_DIR
 *   sbatch/srun --ckpt-signal=SIG   exported as SLURMKIT_CKPT_SIGNAL (default USR2;
 *                                   USR1 is refused: NCCL uses it)
 *
 * In slurmstepd (remote context), when a task of a step dies abnormally (killed by a
 * signal, or exits non-zero other than 85, slurmkit's "requeue me" code), the
 * checkpoint signal is delivered to the step's sibling tasks on the same node, so the
 * surviving data-parallel replicas there write the triggered checkpoint at once
 * instead of waiting for a collective to time out. The fan-out is active when the
 * job sets a checkpoint directory (option, or SLURMKIT_CKPT_DIR in its
 * environment) and never for the batch or extern step.
 *
 * Only tasks still alive and still the processes slurmstepd forked are signalled: a
 * task is forgotten when its own task_exit runs (slurmstepd reaps a task and calls
 * task_exit for it before it reaps the next, so a reaped task's pid, free for reuse,
 * is never signalled), and each pid is checked against the start time recorded at
 * fork (/proc/PID/stat), through a pidfd where the kernel has one so that the
 * process checked is the process signalled.
 *
 * Every entry point dispatches on spank_context(); option callbacks are idempotent
 * (called once per context that sees the option); numbers are parsed with strtol and
 * range checks; log lines start with "slurmkit:".
 */

#include <stdint.h>          /* before spank.h, which uses uint32_t */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <slurm/slurm.h>
#include <slurm/spank.h>

SPANK_PLUGIN(slurmkit, 1);

#define MAX_LOCAL_TASKS 1024
#define EXIT_REQUEUE 85

static char ckpt_dir[PATH_MAX];
static int ckpt_signal = SIGUSR2;
static int ckpt_signal_given = 0;
/* One local task of this step (this slurmstepd runs one step). */
struct task_slot {
	pid_t pid;                    /* 0: no task, or it has exited */
	unsigned long long start;     /* its start time (/proc/PID/stat field 22); 0: unknown */
};
static struct task_slot tasks[MAX_LOCAL_TASKS];
static int task_count = 0;
static int fanned_out = 0;

static int parse_signal(const char *text, int *out)
{
	static const struct { const char *name; int number; } names[] = {
		{"USR2", SIGUSR2}, {"TERM", SIGTERM}, {"INT", SIGINT}, {"HUP", SIGHUP},
		{"URG", SIGURG}, {"QUIT", SIGQUIT}, {"ALRM", SIGALRM}, {"XCPU", SIGXCPU},
	};
	const char *name = text;
	char *end = NULL;
	long number;

	if (!text || !*text)
		return -1;
	if (!strncasecmp(name, "SIG", 3))
		name += 3;
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		if (!strcasecmp(name, names[i].name)) {
			*out = names[i].number;
			return 0;
		}
	}
	errno = 0;
	number = strtol(name, &end, 10);
	if (errno || !end || *end || number < 1 || number > 64)
		return -1;
	if (number == SIGUSR1 || number == SIGKILL || number == SIGSTOP)
		return -1;
	*out = (int) number;
	return 0;
}

static int opt_ckpt_dir(int value, const char *optarg, int remote)
{
	(void) value;
	(void) remote;
	if (!optarg || !*optarg || strlen(optarg) >= sizeof(ckpt_dir) || optarg[0] != '/') {
		slurm_error("slurmkit: --ckpt-dir needs an absolute path, not '%s'",
			    optarg ? optarg : "");
		return ESPANK_BAD_ARG;
	}
	snprintf(ckpt_dir, sizeof(ckpt_dir), "%s", optarg);
	return ESPANK_SUCCESS;
}

static int opt_ckpt_signal(int value, const char *optarg, int remote)
{
	int number;
	(void) value;
	(void) remote;
	if (parse_signal(optarg, &number) != 0) {
		slurm_error("slurmkit: --ckpt-signal=%s is not a usable signal (USR2, TERM, "
			    "INT, HUP, URG, QUIT, ALRM, XCPU or a number; never USR1, which NCCL "
			    "uses)", optarg ? optarg : "");
		return ESPANK_BAD_ARG;
	}
	ckpt_signal = number;
	ckpt_signal_given = 1;
	return ESPANK_SUCCESS;
}

static struct spank_option options[] = {
	{"ckpt-dir", "DIR", "slurmkit: checkpoint directory of the job (exported to tasks "
	 "as SLURMKIT_CKPT_DIR; enables the checkpoint trigger fan-out).", 1, 0,
	 opt_ckpt_dir},
	{"ckpt-signal", "SIG", "slurmkit: signal that makes a task write its triggered "
	 "checkpoint (default USR2; exported as SLURMKIT_CKPT_SIGNAL).", 1, 0,
	 opt_ckpt_signal},
	SPANK_OPTIONS_TABLE_END
};

int slurm_spank_init(spank_t sp, int ac, char **av)
{
	(void) ac;
	(void) av;
	/* A static spank_options[] table is not honoured by sbatch/salloc: register. */
	for (struct spank_option *option = options; option->name; option++) {
		if (spank_option_register(sp, option) != ESPANK_SUCCESS) {
			slurm_error("slurmkit: cannot register --%s", option->name);
			return -1;
		}
	}
	return 0;
}

/* In slurmstepd: settings from the options, else from the job's environment. */
static void settings_from_job_env(spank_t sp)
{
	char value[PATH_MAX];
	if (!ckpt_dir[0] &&
	    spank_getenv(sp, "SLURMKIT_CKPT_DIR", value, sizeof(value)) == ESPANK_SUCCESS &&
	    value[0] == '/')
		snprintf(ckpt_dir, sizeof(ckpt_dir), "%s", value);
	if (!ckpt_signal_given &&
	    spank_getenv(sp, "SLURMKIT_CKPT_SIGNAL", value, sizeof(value)) == ESPANK_SUCCESS) {
		int number;
		if (parse_signal(value, &number) == 0)
			ckpt_signal = number;
		else
			slurm_error("slurmkit: SLURMKIT_CKPT_SIGNAL=%s ignored; using signal %d",
				    value, ckpt_signal);
	}
}

static int is_job_step(spank_t sp)
{
	uint32_t step_id = 0;
	if (spank_get_item(sp, S_JOB_STEPID, &step_id) != ESPANK_SUCCESS)
		return 0;
	return step_id != SLURM_BATCH_SCRIPT && step_id != SLURM_EXTERN_CONT &&
	       step_id != SLURM_INTERACTIVE_STEP;
}

/* Task context, just before exec: export the settings to the task. */
int slurm_spank_task_init(spank_t sp, int ac, char **av)
{
	char number[16];
	(void) ac;
	(void) av;
	if (spank_context() != S_CTX_REMOTE)
		return 0;
	settings_from_job_env(sp);
	if (ckpt_dir[0])
		spank_setenv(sp, "SLURMKIT_CKPT_DIR", ckpt_dir, 1);
	if (ckpt_dir[0] || ckpt_signal_given) {
		snprintf(number, sizeof(number), "%d", ckpt_signal);
		spank_setenv(sp, "SLURMKIT_CKPT_SIGNAL", number, 1);
	}
	return 0;
}

/* Start time of a process (clock ticks after boot, /proc/PID/stat field 22): with the
 * pid, it names one process for the life of the system. 0 when it cannot be read (the
 * process is gone). */
static unsigned long long process_start(pid_t pid)
{
	char path[64], text[1024], *field, *end;
	unsigned long long start;
	size_t length;
	FILE *file;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int) pid);
	if (!(file = fopen(path, "re")))
		return 0;
	length = fread(text, 1, sizeof(text) - 1, file);
	fclose(file);
	text[length] = '\0';
	/* Field 2, the command name, may hold spaces and ')': fields 3.. follow the last ')'. */
	if (!(field = strrchr(text, ')')))
		return 0;
	field++;
	for (int number = 3; number <= 22; number++) {
		while (*field == ' ')
			field++;
		if (number == 22)
			break;
		if (!(field = strchr(field, ' ')))
			return 0;
	}
	errno = 0;
	start = strtoull(field, &end, 10);
	if (errno || end == field)
		return 0;
	return start;
}

/* Send sig to the task in slot, only if it is still the process that was forked. */
static int signal_task(const struct task_slot *slot, int sig)
{
	int pidfd = -1, rc;
	if (slot->pid <= 0 || slot->start == 0) {
		errno = ESRCH;
		return -1;
	}
#ifdef SYS_pidfd_open
	/* Pin the process first: whatever happens to the pid after the check below, the
	 * pidfd still refers to the process that was checked. */
	pidfd = (int) syscall(SYS_pidfd_open, slot->pid, 0);
#endif
	if (process_start(slot->pid) != slot->start) {
		if (pidfd >= 0)
			close(pidfd);
		errno = ESRCH;
		return -1; /* gone, or the pid now belongs to another process */
	}
#ifdef SYS_pidfd_send_signal
	if (pidfd >= 0) {
		rc = (int) syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0);
		close(pidfd);
		return rc;
	}
#endif
	if (pidfd >= 0)
		close(pidfd);
	rc = kill(slot->pid, sig);
	return rc;
}

/* slurmstepd, after each task is forked: remember its pid and start time. */
int slurm_spank_task_post_fork(spank_t sp, int ac, char **av)
{
	pid_t pid = 0;
	int local_id = -1;
	(void) ac;
	(void) av;
	if (spank_context() != S_CTX_REMOTE)
		return 0;
	if (spank_get_item(sp, S_TASK_PID, &pid) != ESPANK_SUCCESS ||
	    spank_get_item(sp, S_TASK_ID, &local_id) != ESPANK_SUCCESS)
		return 0;
	if (local_id >= 0 && local_id < MAX_LOCAL_TASKS && pid > 0) {
		tasks[local_id].pid = pid;
		tasks[local_id].start = process_start(pid);
		if (!tasks[local_id].start)
			slurm_error("slurmkit: cannot read the start time of task pid %d; it will "
				    "not receive the checkpoint signal", (int) pid);
		if (local_id + 1 > task_count)
			task_count = local_id + 1;
	}
	return 0;
}

/* The task has exited (and been reaped): forget it, its pid may be reused. */
static void forget_task(spank_t sp, pid_t pid)
{
	int local_id = -1;
	if (spank_get_item(sp, S_TASK_ID, &local_id) == ESPANK_SUCCESS &&
	    local_id >= 0 && local_id < MAX_LOCAL_TASKS)
		tasks[local_id].pid = 0;
	for (int i = 0; pid > 0 && i < task_count; i++)
		if (tasks[i].pid == pid)
			tasks[i].pid = 0;
}

/* slurmstepd, when a task exits: on an abnormal exit, signal its siblings. */
int slurm_spank_task_exit(spank_t sp, int ac, char **av)
{
	int status = 0;
	pid_t pid = 0;
	int abnormal;
	(void) ac;
	(void) av;
	if (spank_context() != S_CTX_REMOTE)
		return 0;
	if (spank_get_item(sp, S_TASK_PID, &pid) != ESPANK_SUCCESS)
		pid = 0;
	forget_task(sp, pid); /* first, whatever else happens */
	if (!is_job_step(sp))
		return 0;
	settings_from_job_env(sp);
	if (!ckpt_dir[0])
		return 0; /* the job did not ask for checkpoints */
	if (spank_get_item(sp, S_TASK_EXIT_STATUS, &status) != ESPANK_SUCCESS)
		return 0;
	abnormal = WIFSIGNALED(status) ||
		   (WIFEXITED(status) && WEXITSTATUS(status) != 0 &&
		    WEXITSTATUS(status) != EXIT_REQUEUE);
	if (!abnormal || fanned_out)
		return 0;
	fanned_out = 1; /* once per step: the siblings' own exits must not re-trigger */
	for (int i = 0; i < task_count; i++) {
		if (tasks[i].pid > 0 && signal_task(&tasks[i], ckpt_signal) == 0)
			slurm_info("slurmkit: task pid %d died (%s %d); sent signal %d to "
				   "sibling pid %d", (int) pid,
				   WIFSIGNALED(status) ? "signal" : "exit",
				   WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status),
				   ckpt_signal, (int) tasks[i].pid);
	}
	return 0;
}
