/*
 * Unit test of spank/spank_slurmkit.c's trigger fan-out, without Slurm: the plugin is
 * compiled into this program (so the test can reset and inspect its state) against
 * the stub headers in spank_stub/, and slurmstepd's calls are played by hand with
 * real child processes as tasks. Prints "ok NAME" per scenario; exits non-zero at the
 * first failure. Run by tests/unit/test_spank.py.
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <time.h>

#include "../../spank/spank_slurmkit.c"

static struct {
	int task_id;
	pid_t pid;
	int status;
	uint32_t step_id;
} current;

spank_context_t spank_context(void) { return S_CTX_REMOTE; }
spank_err_t spank_option_register(spank_t sp, struct spank_option *opt)
{
	(void) sp; (void) opt;
	return ESPANK_SUCCESS;
}
spank_err_t spank_setenv(spank_t sp, const char *var, const char *val, int overwrite)
{
	(void) sp; (void) var; (void) val; (void) overwrite;
	return ESPANK_SUCCESS;
}
spank_err_t spank_getenv(spank_t sp, const char *var, char *buf, int len)
{
	(void) sp;
	if (strcmp(var, "SLURMKIT_CKPT_DIR"))
		return ESPANK_ENV_NOEXIST;
	snprintf(buf, (size_t) len, "/shared/ckpt");
	return ESPANK_SUCCESS;
}
spank_err_t spank_get_item(spank_t sp, spank_item_t item, ...)
{
	va_list ap;
	spank_err_t rc = ESPANK_SUCCESS;
	(void) sp;
	va_start(ap, item);
	switch (item) {
	case S_JOB_STEPID: *va_arg(ap, uint32_t *) = current.step_id; break;
	case S_TASK_ID: *va_arg(ap, int *) = current.task_id; break;
	case S_TASK_PID: *va_arg(ap, pid_t *) = current.pid; break;
	case S_TASK_EXIT_STATUS: *va_arg(ap, int *) = current.status; break;
	default: rc = ESPANK_NOT_AVAIL;
	}
	va_end(ap);
	return rc;
}
void slurm_info(const char *format, ...)
{
	va_list ap;
	va_start(ap, format);
	vfprintf(stderr, format, ap);
	fputc('\n', stderr);
	va_end(ap);
}
void slurm_error(const char *format, ...)
{
	va_list ap;
	va_start(ap, format);
	vfprintf(stderr, format, ap);
	fputc('\n', stderr);
	va_end(ap);
}

#define FAIL(...) do { fprintf(stderr, "FAIL: " __VA_ARGS__); fputc('\n', stderr); exit(1); } while (0)

/* A task: sleeps until a signal ends it (default dispositions: USR2 kills). */
static pid_t spawn(void)
{
	pid_t pid = fork();
	if (pid < 0)
		FAIL("fork: %s", strerror(errno));
	if (pid == 0) {
		for (;;)
			pause();
	}
	return pid;
}

/* slurmstepd's calls. */
static void post_fork(int id, pid_t pid)
{
	current.task_id = id;
	current.pid = pid;
	slurm_spank_task_post_fork(NULL, 0, NULL);
}
static void task_exit(int id, pid_t pid, int status)
{
	current.task_id = id;
	current.pid = pid;
	current.status = status;
	slurm_spank_task_exit(NULL, 0, NULL);
}
static void new_step(void)
{
	memset(tasks, 0, sizeof(tasks));
	task_count = 0;
	fanned_out = 0;
	current.step_id = 0;
}

/* The signal that ended pid. Signals already sent to it arrive before the SIGTERM
 * sent here (pending standard signals are delivered lowest number first, and
 * SIGUSR2 < SIGTERM), so SIGTERM means "the plugin sent nothing". */
static int death_signal(pid_t pid)
{
	int status = 0;
	kill(pid, SIGTERM);
	if (waitpid(pid, &status, 0) != pid)
		FAIL("waitpid %d: %s", (int) pid, strerror(errno));
	return WIFSIGNALED(status) ? WTERMSIG(status) : -1;
}

static void expect(pid_t pid, int sig, const char *what)
{
	int got = death_signal(pid);
	if (got != sig)
		FAIL("%s: pid %d ended by signal %d, expected %d", what, (int) pid, got, sig);
}

int main(void)
{
	pid_t a, b, c, v;

	/* A sibling alive gets the checkpoint signal when a task is killed. */
	new_step();
	a = spawn(); b = spawn();
	post_fork(0, a); post_fork(1, b);
	task_exit(1, b, SIGKILL);          /* status: killed by SIGKILL */
	expect(a, SIGUSR2, "live sibling");
	expect(b, SIGTERM, "the dead task itself");
	puts("ok sibling_signalled");

	/* A task that exited is forgotten: its pid, free for reuse, now belongs to an
	 * unrelated process (v) that must not be signalled when another task dies. */
	new_step();
	v = spawn(); b = spawn(); c = spawn();
	post_fork(0, v); post_fork(1, b); post_fork(2, c);
	task_exit(0, v, 0);                /* task 0 exited normally (v plays the reuser) */
	task_exit(2, c, 1 << 8);           /* task 2 exited with status 1: fan out */
	expect(v, SIGTERM, "pid of an exited task");
	expect(b, SIGUSR2, "live sibling");
	expect(c, SIGTERM, "the failed task itself");
	puts("ok exited_task_not_signalled");

	/* A pid whose process changed without an exit callback (start time differs). */
	new_step();
	v = spawn(); c = spawn();
	post_fork(0, v); post_fork(1, c);
	tasks[0].start += 1;               /* the recorded process is not v */
	task_exit(1, c, SIGSEGV);
	expect(v, SIGTERM, "pid reused by another process");
	expect(c, SIGTERM, "the crashed task");
	puts("ok reused_pid_not_signalled");

	/* Normal exits and the requeue code (85) trigger nothing; nor a batch step. */
	new_step();
	a = spawn(); b = spawn();
	post_fork(0, a); post_fork(1, b);
	task_exit(1, b, 0);
	task_exit(1, b, 85 << 8);
	current.step_id = SLURM_BATCH_SCRIPT;
	task_exit(1, b, SIGKILL);
	expect(a, SIGTERM, "sibling after normal exits");
	expect(b, SIGTERM, "task");
	puts("ok normal_exits_quiet");
	return 0;
}
