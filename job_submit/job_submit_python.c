/*
 * job_submit/python: run slurmkit's job-submit policy (Python) inside slurmctld.
 *
 * Contract, as job_submit/lua's (src/plugins/job_submit/lua/job_submit_lua.c):
 *  - one lock around every call into Python;
 *  - the policy module must define job_submit(job_desc, submit_uid) and
 *    job_modify(job_desc, submit_uid); both are checked when it is loaded;
 *  - the module is reloaded when its file changes; if the new one fails to load,
 *    the previous one keeps serving and the error is logged;
 *  - messages reach the user through err_msg (allocated with Slurm's allocator).
 *
 * Failure rules (FailMode= in job_submit_python.conf, default "closed"):
 *  - Python or the policy cannot be loaded at start: slurmctld still starts. closed:
 *    every submission is rejected with a message naming the cause; open: accepted
 *    unchanged. Submissions by uid 0 are always accepted whatever the fail mode (the
 *    policy's own operator list, e.g. SlurmUser, applies only while it runs).
 *  - the policy raises, returns something malformed, or asks for an invalid change,
 *    or the job cannot be handed to it (a Python object cannot be built): the error
 *    and traceback go to slurmctld's log; closed: that job is rejected with a message;
 *    open: accepted unchanged. A policy that answers "reject" is always obeyed, even
 *    when its message cannot be read (a generic message is sent instead).
 *  - a reload fails (the module, or the configuration it reads): the previous policy
 *    keeps serving (no fail mode involved); the files_changed hook's errors are logged
 *    and never reach a job.
 *  - nothing Python does can exit slurmctld: SystemExit is caught like any other
 *    exception, PyErr_Print is never called, Python installs no signal handlers.
 *
 * Built out of tree against the libslurm-dev headers of the slurmctld that loads it;
 * plugin_version must equal that slurmctld's version exactly.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dlfcn.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <slurm/slurm.h>
#include <slurm/slurm_errno.h>
#include <slurm/slurm_version.h>

/* From libslurmfull, already loaded by slurmctld (no internal headers ship). */
extern char *slurm_xstrdup(const char *str);
extern void slurm_xfree(void **ptr);
extern void slurm_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
extern int slurm_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
extern char *slurm_get_extra_conf_path(char *conf_name);

typedef struct job_record job_record_t; /* opaque out of tree */

const char plugin_name[] = "Job submit python plugin";
const char plugin_type[] = "job_submit/python";
const uint32_t plugin_version = SLURM_VERSION_NUMBER;

#ifndef PYTHON_PREFIX
#error "build with -DPYTHON_PREFIX=\"/usr\" (see Makefile)"
#endif
#ifndef LIBPYTHON_SONAME
#error "build with -DLIBPYTHON_SONAME=\"libpython3.X.so.1.0\" (see Makefile)"
#endif

#define LOG_PREFIX "job_submit/python: "

static pthread_mutex_t policy_lock = PTHREAD_MUTEX_INITIALIZER;
static int python_ready = 0;
static PyObject *policy_module = NULL;    /* the module serving now */
static PyObject *loader = NULL;           /* helper: _load(path) -> module */
static PyObject *formatter = NULL;        /* helper: _format_exception() -> str */
static char policy_path[4096];
static char python_path[4096];
static char stats_path[4096];
static struct timespec policy_mtime;      /* of the file policy_module came from */
static struct timespec failed_mtime;      /* of the last file that failed to load */
static int fail_open = 0;
static char load_error[512] = "not loaded";
/* One Python thread state per slurmctld thread, kept between calls (creating one per
 * call costs ~30 us) and freed when the thread exits (no leak with short-lived
 * threads). */
static __thread PyThreadState *thread_state = NULL;
static pthread_key_t thread_state_key;
static void destroy_thread_state(void *state);
static int make_keys(void);
static uint64_t stat_calls = 0, stat_total_ns = 0, stat_max_ns = 0;
/* Change detection: inotify on the policy's directory, so that a call costs no
 * stat() (a path walk through a FUSE root file system cost 50 us per call here);
 * without inotify, files are checked at most once per FALLBACK_CHECK_NS. */
static int inotify_fd = -1;
static uint64_t last_check_ns = 0;
#define FALLBACK_CHECK_NS 1000000000ULL

/* ------------------------------------------------------------------ helpers */

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t) ts.tv_sec * 1000000000ULL + (uint64_t) ts.tv_nsec;
}

static void set_msg(char **err_msg, const char *text)
{
	if (!err_msg || !text || !text[0])
		return;
	if (*err_msg)
		slurm_xfree((void **) err_msg);
	*err_msg = slurm_xstrdup(text); /* Slurm frees it: must be its allocator */
}

static void trim(char *text)
{
	char *end = text + strlen(text);
	while (end > text && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\n' ||
			      end[-1] == '\r'))
		*--end = '\0';
}

/* job_submit_python.conf: Key=Value lines; unknown keys are logged and ignored. */
static void read_conf(void)
{
	char *path = slurm_get_extra_conf_path("job_submit_python.conf");
	FILE *file;
	char line[4608];
	char *conf_dir_end;

	/* Defaults: next to slurm.conf. */
	snprintf(policy_path, sizeof(policy_path), "%s", path ? path : "");
	conf_dir_end = strrchr(policy_path, '/');
	if (conf_dir_end)
		snprintf(conf_dir_end + 1,
			 sizeof(policy_path) - (conf_dir_end + 1 - policy_path),
			 "job_submit.py");
	python_path[0] = '\0';
	stats_path[0] = '\0';
	fail_open = 0;

	if (!path || !(file = fopen(path, "r"))) {
		slurm_info(LOG_PREFIX "no %s; policy %s, FailMode=closed",
			   path ? path : "job_submit_python.conf", policy_path);
		if (path)
			slurm_xfree((void **) &path);
		return;
	}
	while (fgets(line, sizeof(line), file)) {
		char *eq, *key = line, *value;
		while (*key == ' ' || *key == '\t')
			key++;
		if (*key == '#' || *key == '\n' || *key == '\0')
			continue;
		trim(key);
		if (!(eq = strchr(key, '='))) {
			slurm_error(LOG_PREFIX "%s: ignoring line without '=': %s", path, key);
			continue;
		}
		*eq = '\0';
		value = eq + 1;
		trim(key);
		if (!strcasecmp(key, "Policy"))
			snprintf(policy_path, sizeof(policy_path), "%s", value);
		else if (!strcasecmp(key, "PythonPath"))
			snprintf(python_path, sizeof(python_path), "%s", value);
		else if (!strcasecmp(key, "StatsFile"))
			snprintf(stats_path, sizeof(stats_path), "%s", value);
		else if (!strcasecmp(key, "FailMode")) {
			if (!strcasecmp(value, "open"))
				fail_open = 1;
			else if (!strcasecmp(value, "closed"))
				fail_open = 0;
			else
				slurm_error(LOG_PREFIX "%s: FailMode=%s is neither open nor closed; using closed",
					    path, value);
		} else
			slurm_error(LOG_PREFIX "%s: unknown key %s (valid: Policy, FailMode, PythonPath, StatsFile)",
				    path, key);
	}
	fclose(file);
	slurm_xfree((void **) &path);
}

/* ------------------------------------------------------------------ _slurm module */

static PyObject *py_log_info(PyObject *self, PyObject *args)
{
	const char *text;
	if (!PyArg_ParseTuple(args, "s", &text))
		return NULL;
	slurm_info(LOG_PREFIX "%s", text);
	Py_RETURN_NONE;
}

static PyObject *py_log_error(PyObject *self, PyObject *args)
{
	const char *text;
	if (!PyArg_ParseTuple(args, "s", &text))
		return NULL;
	slurm_error(LOG_PREFIX "%s", text);
	Py_RETURN_NONE;
}

static PyMethodDef slurm_methods[] = {
	{"info", py_log_info, METH_VARARGS, "Log to slurmctld at info level."},
	{"error", py_log_error, METH_VARARGS, "Log to slurmctld at error level."},
	{NULL, NULL, 0, NULL},
};

static struct PyModuleDef slurm_module_def = {
	PyModuleDef_HEAD_INIT, "_slurm", "slurmctld logging for the policy", -1,
	slurm_methods, NULL, NULL, NULL, NULL,
};

static PyObject *init_slurm_module(void)
{
	PyObject *module = PyModule_Create(&slurm_module_def);
	if (module) {
		PyModule_AddIntConstant(module, "VERSION", SLURM_VERSION_NUMBER);
		PyModule_AddObject(module, "IN_SLURMCTLD", Py_NewRef(Py_True));
	}
	return module;
}

/* Python helpers, run once at start-up. */
static const char helpers_source[] =
	"import importlib.util, sys, traceback, itertools\n"
	"_counter = itertools.count()\n"
	"def _load(path):\n"
	"    name = f'slurm_job_submit_policy_{next(_counter)}'\n"
	"    spec = importlib.util.spec_from_file_location(name, path)\n"
	"    if spec is None or spec.loader is None:\n"
	"        raise ImportError(f'cannot load {path}')\n"
	"    module = importlib.util.module_from_spec(spec)\n"
	"    spec.loader.exec_module(module)\n"
	"    missing = [f for f in ('job_submit', 'job_modify') if not callable(getattr(module, f, None))]\n"
	"    if missing:\n"
	"        raise ImportError(f'{path} does not define ' + ' and '.join(missing))\n"
	"    return module\n"
	"def _format_exception(kind, value, tb):\n"
	"    return ''.join(traceback.format_exception(kind, value, tb)).rstrip()\n";

/* Fetch the pending exception as text (one line for users, full for the log). */
static void take_exception(char *summary, size_t size)
{
	PyObject *kind = NULL, *value = NULL, *tb = NULL, *text = NULL;
	PyErr_Fetch(&kind, &value, &tb);
	PyErr_NormalizeException(&kind, &value, &tb);
	snprintf(summary, size, "unknown error");
	if (value) {
		PyObject *repr = PyObject_Str(value);
		const char *name = kind ? ((PyTypeObject *) kind)->tp_name : "Exception";
		if (repr) {
			const char *utf8 = PyUnicode_AsUTF8(repr);
			if (!utf8)
				PyErr_Clear(); /* e.g. a lone surrogate in the message */
			snprintf(summary, size, "%s: %s", name, utf8 ? utf8 : "?");
			Py_DECREF(repr);
		} else {
			snprintf(summary, size, "%s", name);
		}
		PyErr_Clear();
	}
	if (formatter && kind)
		text = PyObject_CallFunctionObjArgs(formatter, kind,
						    value ? value : Py_None,
						    tb ? tb : Py_None, NULL);
	{
		const char *utf8 = (text && PyUnicode_Check(text)) ? PyUnicode_AsUTF8(text) : NULL;
		slurm_error(LOG_PREFIX "%s", utf8 ? utf8 : summary);
	}
	PyErr_Clear();
	Py_XDECREF(text);
	Py_XDECREF(kind);
	Py_XDECREF(value);
	Py_XDECREF(tb);
}

/* ------------------------------------------------------------------ start-up */

static int start_python(void)
{
	PyConfig config;
	PyStatus status;
	PyObject *globals;

	/* Re-open libpython globally: C extension modules (numpy, _json...) resolve
	 * Python's symbols through the global namespace, which a plugin's dlopen
	 * (RTLD_LOCAL) does not give them. */
	if (!dlopen(LIBPYTHON_SONAME, RTLD_NOW | RTLD_GLOBAL)) {
		snprintf(load_error, sizeof(load_error), "cannot load %s: %s",
			 LIBPYTHON_SONAME, dlerror());
		return -1;
	}
	if (PyImport_AppendInittab("_slurm", init_slurm_module) < 0) {
		snprintf(load_error, sizeof(load_error), "cannot register _slurm");
		return -1;
	}
	PyConfig_InitIsolatedConfig(&config);
	config.install_signal_handlers = 0; /* slurmctld owns the signals */
	config.site_import = 1;             /* Debian's dist-packages */
	config.parse_argv = 0;
	config.buffered_stdio = 0;
	/* Python finds its prefix from the program's location; slurmctld is not in
	 * Python's tree, so name the prefix it was built with (or site-packages under
	 * /usr/local, where Debian keeps local .pth files, would be missed). */
	status = PyConfig_SetBytesString(&config, &config.home, PYTHON_PREFIX);
	if (!PyStatus_Exception(status))
		status = PyConfig_SetString(&config, &config.program_name, L"slurmctld-python");
	if (!PyStatus_Exception(status))
		status = Py_InitializeFromConfig(&config);
	PyConfig_Clear(&config);
	if (PyStatus_Exception(status)) {
		snprintf(load_error, sizeof(load_error), "Python did not start: %s",
			 status.err_msg ? status.err_msg : "unknown");
		return -1;
	}
	if (python_path[0]) {
		/* Isolated mode ignores PYTHONPATH: prepend PythonPath= entries here. */
		PyObject *sys_path = PySys_GetObject("path");
		char copy[sizeof(python_path)], *save = NULL, *entry;
		Py_ssize_t index = 0;
		snprintf(copy, sizeof(copy), "%s", python_path);
		for (entry = strtok_r(copy, ":", &save); entry; entry = strtok_r(NULL, ":", &save)) {
			PyObject *item = PyUnicode_FromString(entry);
			if (item && sys_path)
				PyList_Insert(sys_path, index++, item);
			Py_XDECREF(item);
		}
	}
	globals = PyDict_New();
	if (!globals ||
	    PyDict_SetItemString(globals, "__builtins__", PyEval_GetBuiltins()) < 0) {
		take_exception(load_error, sizeof(load_error));
		Py_XDECREF(globals);
		PyEval_SaveThread();
		return -1;
	}
	PyObject *ran = PyRun_String(helpers_source, Py_file_input, globals, globals);
	if (!ran) {
		take_exception(load_error, sizeof(load_error));
		Py_DECREF(globals);
		PyEval_SaveThread();
		return -1;
	}
	Py_DECREF(ran);
	if (make_keys() != 0) {
		take_exception(load_error, sizeof(load_error));
		Py_DECREF(globals);
		PyEval_SaveThread();
		return -1;
	}
	loader = PyDict_GetItemString(globals, "_load");
	formatter = PyDict_GetItemString(globals, "_format_exception");
	Py_XINCREF(loader);
	Py_XINCREF(formatter);
	Py_DECREF(globals);
	if (!loader) {
		snprintf(load_error, sizeof(load_error), "the shim's Python helpers did not load");
		PyEval_SaveThread();
		return -1;
	}
	/* Release the GIL; every call takes it with its thread's own state. The
	 * initialising thread's state is never freed by the key's destructor. */
	thread_state = PyEval_SaveThread();
	pthread_key_create(&thread_state_key, destroy_thread_state);
	python_ready = 1;
	return 0;
}

/* pthread key destructor: the thread is exiting; free its thread state. */
static void destroy_thread_state(void *state)
{
	PyThreadState *exiting = state;
	if (!exiting)
		return;
	pthread_mutex_lock(&policy_lock);
	PyEval_RestoreThread(exiting);
	PyThreadState_Clear(exiting);
	PyThreadState_DeleteCurrent(); /* releases the GIL */
	pthread_mutex_unlock(&policy_lock);
}

/* Take the GIL with this thread's state. Returns -1 (no GIL taken) when no thread
 * state can be created (out of memory): the caller applies the fail mode. */
static int enter_python(void)
{
	if (!thread_state) {
		thread_state = PyThreadState_New(PyInterpreterState_Main());
		if (!thread_state)
			return -1;
		pthread_setspecific(thread_state_key, thread_state);
	}
	PyEval_RestoreThread(thread_state);
	return 0;
}

static void leave_python(void)
{
	PyEval_SaveThread();
}

/* Load the policy file if it changed. Caller holds policy_lock and the GIL. */
static void load_if_changed(void)
{
	struct stat st;
	PyObject *module, *path;
	char reason[sizeof(load_error)];

	if (stat(policy_path, &st) != 0) {
		if (!policy_module)
			snprintf(load_error, sizeof(load_error), "%s: %s", policy_path,
				 strerror(errno));
		return;
	}
	if (policy_module && st.st_mtim.tv_sec == policy_mtime.tv_sec &&
	    st.st_mtim.tv_nsec == policy_mtime.tv_nsec)
		return;
	if (st.st_mtim.tv_sec == failed_mtime.tv_sec &&
	    st.st_mtim.tv_nsec == failed_mtime.tv_nsec)
		return; /* this version already failed; wait for the next change */
	path = PyUnicode_FromString(policy_path);
	module = path ? PyObject_CallOneArg(loader, path) : NULL;
	Py_XDECREF(path);
	if (!module) {
		take_exception(reason, sizeof(reason));
		failed_mtime = st.st_mtim;
		if (policy_module) {
			slurm_error(LOG_PREFIX "reload of %s failed (%s); the previous policy keeps serving",
				    policy_path, reason);
		} else {
			snprintf(load_error, sizeof(load_error), "%s", reason);
			slurm_error(LOG_PREFIX "cannot load %s: %s; FailMode=%s", policy_path,
				    reason, fail_open ? "open" : "closed");
		}
		return;
	}
	Py_XDECREF(policy_module);
	policy_module = module;
	policy_mtime = st.st_mtim;
	failed_mtime.tv_sec = failed_mtime.tv_nsec = 0;
	load_error[0] = '\0';
	slurm_info(LOG_PREFIX "loaded %s", policy_path);
}

static void watch_policy_directory(void)
{
	char directory[sizeof(policy_path)];
	char *slash;
	snprintf(directory, sizeof(directory), "%s", policy_path);
	slash = strrchr(directory, '/');
	if (slash == directory)
		slash[1] = '\0';
	else if (slash)
		*slash = '\0';
	else
		snprintf(directory, sizeof(directory), ".");
	inotify_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (inotify_fd < 0 ||
	    inotify_add_watch(inotify_fd, directory, IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM |
			      IN_CREATE | IN_DELETE | IN_ATTRIB) < 0) {
		slurm_error(LOG_PREFIX "cannot watch %s (%s); checking for changes once a second",
			    directory, strerror(errno));
		if (inotify_fd >= 0)
			close(inotify_fd);
		inotify_fd = -1;
	}
}

/* Did anything in the policy's directory change since the last call? */
static int files_changed(void)
{
	char buffer[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
	int changed = 0;
	if (inotify_fd < 0) {
		uint64_t now = now_ns();
		if (now - last_check_ns < FALLBACK_CHECK_NS)
			return 0;
		last_check_ns = now;
		return 1;
	}
	while (read(inotify_fd, buffer, sizeof(buffer)) > 0)
		changed = 1; /* drain: one reload check covers every event */
	return changed;
}

/* Tell the policy module that files changed (it may reload its configuration). */
static void notify_module(void)
{
	PyObject *hook, *result;
	char reason[512];
	if (!policy_module || !PyObject_HasAttrString(policy_module, "files_changed"))
		return;
	hook = PyObject_GetAttrString(policy_module, "files_changed");
	result = hook ? PyObject_CallNoArgs(hook) : NULL;
	Py_XDECREF(hook);
	if (!result)
		take_exception(reason, sizeof(reason)); /* logged; the old config serves */
	Py_XDECREF(result);
}

int init(void)
{
	read_conf();
	watch_policy_directory();
	if (start_python() != 0) {
		slurm_error(LOG_PREFIX "%s; FailMode=%s", load_error, fail_open ? "open" : "closed");
		return SLURM_SUCCESS; /* slurmctld must start: the fail mode applies */
	}
	pthread_mutex_lock(&policy_lock);
	if (enter_python() == 0) {
		load_if_changed();
		leave_python();
	} else {
		snprintf(load_error, sizeof(load_error), "no Python thread state (out of memory)");
	}
	pthread_mutex_unlock(&policy_lock);
	return SLURM_SUCCESS;
}

int fini(void)
{
	/* No Py_FinalizeEx: other threads may still hold thread states, and
	 * finalizing an embedded interpreter in a daemon is not safe. */
	return SLURM_SUCCESS;
}

/* ------------------------------------------------------------------ job_desc <-> dict */

/* The dict's keys, created once (interned): building the dict is then one
 * PyDict_SetItem per field, no string allocation for keys. */
enum {
	K_ACCOUNT, K_ARRAY_INX, K_COMMENT, K_DEPENDENCY, K_EXC_NODES, K_FEATURES,
	K_JOB_ID_STR, K_LICENSES, K_NAME, K_PARTITION, K_QOS, K_REQ_NODES, K_RESERVATION,
	K_TRES_PER_JOB, K_TRES_PER_NODE, K_TRES_PER_SOCKET, K_TRES_PER_TASK, K_WCKEY,
	K_WORK_DIR, K_GROUP_ID, K_JOB_ID, K_MAX_NODES, K_MIN_NODES, K_NUM_TASKS, K_PRIORITY,
	K_TIME_LIMIT, K_TIME_MIN, K_USER_ID, K_CPUS_PER_TASK, K_NTASKS_PER_NODE, K_REQUEUE,
	K_WARN_FLAGS, K_WARN_SIGNAL, K_WARN_TIME, K_NICE, K_BATCH, K_SOCKETS_PER_NODE,
	K_NTASKS_PER_SOCKET, K_NTASKS_PER_TRES, K_COUNT
};
static const char *key_names[K_COUNT] = {
	"account", "array_inx", "comment", "dependency", "exc_nodes", "features",
	"job_id_str", "licenses", "name", "partition", "qos", "req_nodes", "reservation",
	"tres_per_job", "tres_per_node", "tres_per_socket", "tres_per_task", "wckey",
	"work_dir", "group_id", "job_id", "max_nodes", "min_nodes", "num_tasks", "priority",
	"time_limit", "time_min", "user_id", "cpus_per_task", "ntasks_per_node", "requeue",
	"warn_flags", "warn_signal", "warn_time", "nice", "batch", "sockets_per_node",
	"ntasks_per_socket", "ntasks_per_tres",
};
static PyObject *keys[K_COUNT];

static int make_keys(void)
{
	for (int i = 0; i < K_COUNT; i++)
		if (!(keys[i] = PyUnicode_InternFromString(key_names[i])))
			return -1;
	return 0;
}

/* Store one field; returns -1 with a Python exception set when the value could not
 * be built or stored. A field that cannot be converted must not reach the policy as
 * None ("not requested"): that would price a job without its GPU request. */
static int put(PyObject *dict, int key, PyObject *value)
{
	int rc;
	if (!value)
		return -1;
	rc = PyDict_SetItem(dict, keys[key], value);
	Py_DECREF(value);
	return rc;
}

static PyObject *str_or_none(const char *text)
{
	PyObject *value;
	Py_ssize_t length;
	if (!text)
		return Py_NewRef(Py_None);
	length = (Py_ssize_t) strlen(text);
	/* Strict UTF-8 first (fast path); odd bytes survive as surrogates. */
	value = PyUnicode_DecodeUTF8(text, length, NULL);
	if (!value) {
		PyErr_Clear();
		value = PyUnicode_DecodeUTF8(text, length, "surrogateescape");
	}
	return value;
}

static PyObject *u32_or_none(uint32_t value)
{
	return value == NO_VAL ? Py_NewRef(Py_None) : PyLong_FromUnsignedLong(value);
}

static PyObject *u16_or_none(uint16_t value)
{
	return value == NO_VAL16 ? Py_NewRef(Py_None) : PyLong_FromUnsignedLong(value);
}

/* After a failure nothing more is built (no Python call with an exception pending). */
#define PUT(key, expr) do { if (!failed && put(dict, key, (expr)) < 0) failed = 1; } while (0)
#define PUT_STR(key, field) PUT(key, str_or_none(job_desc->field))
#define PUT_U32(key, field) PUT(key, u32_or_none(job_desc->field))
#define PUT_U16(key, field) PUT(key, u16_or_none(job_desc->field))

/* The job as a dict, or NULL with a Python exception set (the fail mode applies). */
static PyObject *job_desc_dict(const job_desc_msg_t *job_desc)
{
	int failed = 0;
	PyObject *dict = PyDict_New();
	if (!dict)
		return NULL;
	PUT_STR(K_ACCOUNT, account);
	PUT_STR(K_ARRAY_INX, array_inx);
	PUT_STR(K_COMMENT, comment);
	PUT_STR(K_DEPENDENCY, dependency);
	PUT_STR(K_EXC_NODES, exc_nodes);
	PUT_STR(K_FEATURES, features);
	PUT_STR(K_JOB_ID_STR, job_id_str);
	PUT_STR(K_LICENSES, licenses);
	PUT_STR(K_NAME, name);
	PUT_STR(K_PARTITION, partition);
	PUT_STR(K_QOS, qos);
	PUT_STR(K_REQ_NODES, req_nodes);
	PUT_STR(K_RESERVATION, reservation);
	PUT_STR(K_TRES_PER_JOB, tres_per_job);
	PUT_STR(K_TRES_PER_NODE, tres_per_node);
	PUT_STR(K_TRES_PER_SOCKET, tres_per_socket);
	PUT_STR(K_TRES_PER_TASK, tres_per_task);
	PUT_STR(K_WCKEY, wckey);
	PUT_STR(K_WORK_DIR, work_dir);
	PUT_U32(K_GROUP_ID, group_id);
	PUT_U32(K_JOB_ID, job_id);
	PUT_U32(K_MAX_NODES, max_nodes);
	PUT_U32(K_MIN_NODES, min_nodes);
	PUT_U32(K_NUM_TASKS, num_tasks);
	PUT_U32(K_PRIORITY, priority);
	PUT_U32(K_TIME_LIMIT, time_limit);
	PUT_U32(K_TIME_MIN, time_min);
	PUT_U32(K_USER_ID, user_id);
	PUT_U16(K_CPUS_PER_TASK, cpus_per_task);
	PUT_U16(K_NTASKS_PER_NODE, ntasks_per_node);
	PUT_U16(K_REQUEUE, requeue);
	PUT_U16(K_WARN_FLAGS, warn_flags);
	PUT_U16(K_WARN_SIGNAL, warn_signal);
	PUT_U16(K_WARN_TIME, warn_time);
	PUT_U16(K_SOCKETS_PER_NODE, sockets_per_node);
	PUT_U16(K_NTASKS_PER_SOCKET, ntasks_per_socket);
	PUT_U16(K_NTASKS_PER_TRES, ntasks_per_tres);
	PUT(K_NICE, job_desc->nice == NO_VAL ? Py_NewRef(Py_None) :
	    PyLong_FromLong((long) job_desc->nice - (long) NICE_OFFSET));
	PUT(K_BATCH, PyBool_FromLong(job_desc->script != NULL));
	if (failed) {
		Py_DECREF(dict);
		if (!PyErr_Occurred())
			PyErr_SetString(PyExc_RuntimeError, "cannot convert the job description");
		return NULL;
	}
	return dict;
}

/* Where a settable field lives in job_desc_msg_t. */
typedef struct {
	char **string_field;
	uint16_t *u16_field;
	uint32_t *u32_field;
} field_ref_t;

static int find_field(job_desc_msg_t *job_desc, const char *key, field_ref_t *ref)
{
	memset(ref, 0, sizeof(*ref));
	if (!strcmp(key, "partition"))
		ref->string_field = &job_desc->partition;
	else if (!strcmp(key, "qos"))
		ref->string_field = &job_desc->qos;
	else if (!strcmp(key, "account"))
		ref->string_field = &job_desc->account;
	else if (!strcmp(key, "comment"))
		ref->string_field = &job_desc->comment;
	else if (!strcmp(key, "requeue"))
		ref->u16_field = &job_desc->requeue;
	else if (!strcmp(key, "warn_signal"))
		ref->u16_field = &job_desc->warn_signal;
	else if (!strcmp(key, "warn_time"))
		ref->u16_field = &job_desc->warn_time;
	else if (!strcmp(key, "warn_flags"))
		ref->u16_field = &job_desc->warn_flags;
	else if (!strcmp(key, "time_limit"))
		ref->u32_field = &job_desc->time_limit;
	else
		return -1;
	return 0;
}

/* Check one change without applying it. Returns 0, or -1 with a reason. */
static int check_change(job_desc_msg_t *job_desc, const char *key, PyObject *value,
			char *why, size_t size)
{
	field_ref_t ref;
	if (find_field(job_desc, key, &ref)) {
		snprintf(why, size, "the policy may not set %s", key);
		return -1;
	}
	if (ref.string_field) {
		if (!PyUnicode_Check(value) || !PyUnicode_AsUTF8(value)) {
			PyErr_Clear();
			snprintf(why, size, "%s must be a string", key);
			return -1;
		}
		return 0;
	}
	if (!PyLong_Check(value) || PyBool_Check(value)) {
		snprintf(why, size, "%s must be an integer", key);
		return -1;
	}
	unsigned long number = PyLong_AsUnsignedLong(value);
	if (PyErr_Occurred() || (ref.u16_field && number >= NO_VAL16) ||
	    (ref.u32_field && number >= NO_VAL)) {
		PyErr_Clear();
		snprintf(why, size, "%s is out of range", key);
		return -1;
	}
	return 0;
}

/* Apply a change that check_change accepted. */
static void apply_change(job_desc_msg_t *job_desc, const char *key, PyObject *value)
{
	field_ref_t ref;
	if (find_field(job_desc, key, &ref))
		return;
	if (ref.string_field) {
		if (*ref.string_field)
			slurm_xfree((void **) ref.string_field);
		*ref.string_field = slurm_xstrdup(PyUnicode_AsUTF8(value));
	} else if (ref.u16_field) {
		*ref.u16_field = (uint16_t) PyLong_AsUnsignedLong(value);
	} else {
		*ref.u32_field = (uint32_t) PyLong_AsUnsignedLong(value);
	}
}

/* Interpret the policy's result dict. Returns SLURM_SUCCESS, SLURM_ERROR (rejected),
 * or -2 when the result itself is malformed (fail mode applies). */
static int apply_result(job_desc_msg_t *job_desc, PyObject *result, char **err_msg,
			char *why, size_t size)
{
	PyObject *action, *message, *changes;
	const char *action_text, *message_text = NULL;

	if (!PyDict_Check(result)) {
		snprintf(why, size, "the policy returned %s, not a dict", Py_TYPE(result)->tp_name);
		return -2;
	}
	action = PyDict_GetItemString(result, "action");
	message = PyDict_GetItemString(result, "message");
	changes = PyDict_GetItemString(result, "changes");
	if (!action || !PyUnicode_Check(action) || !(action_text = PyUnicode_AsUTF8(action))) {
		PyErr_Clear();
		snprintf(why, size, "the policy's result has no action");
		return -2;
	}
	if (message && message != Py_None) {
		if (!PyUnicode_Check(message) || !(message_text = PyUnicode_AsUTF8(message))) {
			PyErr_Clear();
			message_text = NULL;
			if (strcmp(action_text, "reject")) {
				snprintf(why, size, "the policy's message is not a string");
				return -2;
			}
			/* A rejection stands whatever its message: never fail open on it. */
			slurm_error(LOG_PREFIX "the policy rejected a job with an unreadable message");
		}
	}
	if (!strcmp(action_text, "reject")) {
		set_msg(err_msg, message_text && message_text[0] ? message_text :
			"rejected by the job submission policy");
		return SLURM_ERROR;
	}
	if (strcmp(action_text, "accept")) {
		snprintf(why, size, "unknown action %.40s", action_text);
		return -2;
	}
	if (changes && changes != Py_None) {
		PyObject *key, *value;
		Py_ssize_t position = 0;
		if (!PyDict_Check(changes)) {
			snprintf(why, size, "the policy's changes are not a dict");
			return -2;
		}
		/* Check every change before applying any: all or nothing. */
		while (PyDict_Next(changes, &position, &key, &value)) {
			const char *name = PyUnicode_Check(key) ? PyUnicode_AsUTF8(key) : NULL;
			if (!name) {
				PyErr_Clear();
				snprintf(why, size, "a change key is not a string");
				return -2;
			}
			if (check_change(job_desc, name, value, why, size))
				return -2;
		}
		position = 0;
		while (PyDict_Next(changes, &position, &key, &value))
			apply_change(job_desc, PyUnicode_AsUTF8(key), value);
	}
	if (message_text && message_text[0])
		set_msg(err_msg, message_text); /* shown to the user, job accepted */
	return SLURM_SUCCESS;
}

/* ------------------------------------------------------------------ entry points */

static void record_stats(uint64_t elapsed_ns)
{
	stat_calls++;
	stat_total_ns += elapsed_ns;
	if (elapsed_ns > stat_max_ns)
		stat_max_ns = elapsed_ns;
	if (stats_path[0] && (stat_calls % 64 == 0)) {
		char tmp[sizeof(stats_path) + 8];
		FILE *file;
		snprintf(tmp, sizeof(tmp), "%s.tmp", stats_path);
		if ((file = fopen(tmp, "w"))) {
			fprintf(file, "calls=%" PRIu64 " total_ns=%" PRIu64 " max_ns=%" PRIu64 "\n",
				stat_calls, stat_total_ns, stat_max_ns);
			fclose(file);
			rename(tmp, stats_path);
		}
	}
}

static int fail_mode(const char *what, const char *reason, char **err_msg)
{
	char text[1024];
	if (fail_open)
		return SLURM_SUCCESS;
	snprintf(text, sizeof(text),
		 "job submission policy unavailable (%s: %s); the job was not submitted. "
		 "Please tell the cluster admins.", what, reason);
	set_msg(err_msg, text);
	return SLURM_ERROR;
}

static int call_policy(const char *function, job_desc_msg_t *job_desc,
		       uint32_t submit_uid, char **err_msg)
{
	PyObject *dict, *result = NULL, *callable, *uid;
	char why[512] = "";
	int rc;
	uint64_t started = now_ns();

	pthread_mutex_lock(&policy_lock);
	if (!python_ready) {
		pthread_mutex_unlock(&policy_lock);
		if (submit_uid == 0)
			return SLURM_SUCCESS;
		return fail_mode("Python", load_error, err_msg);
	}
	if (enter_python() != 0) {
		pthread_mutex_unlock(&policy_lock);
		if (submit_uid == 0)
			return SLURM_SUCCESS;
		return fail_mode("Python", "no Python thread state (out of memory)", err_msg);
	}
	if (files_changed() || !policy_module) {
		load_if_changed();
		notify_module();
	}
	if (!policy_module) {
		char reason[sizeof(load_error)];
		snprintf(reason, sizeof(reason), "%s", load_error);
		leave_python();
		pthread_mutex_unlock(&policy_lock);
		if (submit_uid == 0)
			return SLURM_SUCCESS;
		return fail_mode("policy not loaded", reason, err_msg);
	}
	/* Each step runs only if the previous one succeeded, so that a pending exception
	 * is never carried into another call; take_exception() reports the first. */
	dict = job_desc_dict(job_desc);
	callable = dict ? PyObject_GetAttrString(policy_module, function) : NULL;
	uid = callable ? PyLong_FromUnsignedLong(submit_uid) : NULL;
	if (uid)
		result = PyObject_CallFunctionObjArgs(callable, dict, uid, NULL);
	Py_XDECREF(dict);
	Py_XDECREF(callable);
	Py_XDECREF(uid);
	if (!result) {
		take_exception(why, sizeof(why));
		rc = -2;
	} else {
		rc = apply_result(job_desc, result, err_msg, why, sizeof(why));
		if (rc == -2)
			slurm_error(LOG_PREFIX "%s: %s", function, why);
		Py_DECREF(result);
	}
	leave_python();
	record_stats(now_ns() - started);
	pthread_mutex_unlock(&policy_lock);
	if (rc == -2)
		return submit_uid == 0 ? SLURM_SUCCESS : fail_mode(function, why, err_msg);
	return rc;
}

extern int job_submit(job_desc_msg_t *job_desc, uint32_t submit_uid, char **err_msg)
{
	return call_policy("job_submit", job_desc, submit_uid, err_msg);
}

extern int job_modify(job_desc_msg_t *job_desc, job_record_t *job_ptr,
		      uint32_t submit_uid, char **err_msg)
{
	(void) job_ptr; /* opaque out of tree: the policy sees the requested change only */
	return call_policy("job_modify", job_desc, submit_uid, err_msg);
}
