/* Test stub of <slurm/spank.h> (Slurm 24.11): the declarations spank_slurmkit.c uses,
 * with the same signatures; tests/unit/spank_harness.c implements them. */
#ifndef SLURMKIT_STUB_SPANK_H
#define SLURMKIT_STUB_SPANK_H
typedef struct spank_handle *spank_t;
typedef int spank_err_t;
enum { ESPANK_SUCCESS = 0, ESPANK_ERROR = 3000, ESPANK_BAD_ARG, ESPANK_NOT_TASK,
       ESPANK_ENV_EXISTS, ESPANK_ENV_NOEXIST, ESPANK_NOSPACE, ESPANK_NOT_REMOTE,
       ESPANK_NOEXIST, ESPANK_NOT_EXECD, ESPANK_NOT_AVAIL, ESPANK_NOT_LOCAL };
typedef enum spank_item {
	S_JOB_UID, S_JOB_GID, S_JOB_ID, S_JOB_STEPID, S_JOB_NNODES, S_JOB_NODEID,
	S_JOB_LOCAL_TASK_COUNT, S_JOB_TOTAL_TASK_COUNT, S_JOB_NCPUS, S_JOB_ARGV, S_JOB_ENV,
	S_TASK_ID, S_TASK_GLOBAL_ID, S_TASK_EXIT_STATUS, S_TASK_PID,
} spank_item_t;
typedef enum spank_context {
	S_CTX_ERROR, S_CTX_LOCAL, S_CTX_REMOTE, S_CTX_ALLOCATOR, S_CTX_SLURMD, S_CTX_JOB_SCRIPT
} spank_context_t;
typedef int (*spank_opt_cb_f)(int val, const char *optarg, int remote);
struct spank_option {
	char *name;
	char *arginfo;
	char *usage;
	int has_arg;
	int val;
	spank_opt_cb_f cb;
};
#define SPANK_OPTIONS_TABLE_END { NULL, NULL, NULL, 0, 0, NULL }
spank_context_t spank_context(void);
spank_err_t spank_option_register(spank_t spank, struct spank_option *opt);
spank_err_t spank_get_item(spank_t spank, spank_item_t item, ...);
spank_err_t spank_getenv(spank_t spank, const char *var, char *buf, int len);
spank_err_t spank_setenv(spank_t spank, const char *var, const char *val, int overwrite);
extern void slurm_info(const char *format, ...) __attribute__((format(printf, 1, 2)));
extern void slurm_error(const char *format, ...) __attribute__((format(printf, 1, 2)));
#define SPANK_PLUGIN(__name, __ver) \
	const char plugin_name[] = #__name; \
	const char plugin_type[] = "spank"; \
	const unsigned int plugin_version = 0; \
	const unsigned int spank_plugin_version = __ver;
#endif
