/* vmgpuctl logs ID [-f]: the guest's serial console, read from the file the shim writes. The
 * agent says where that file is (PodSandboxStatus, verbose info "vmgpu".console_log); the CLI
 * runs on the same node, so it reads the file itself. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli/api_client.h"
#include "cli/commands.h"
#include "cli/options.h"
#include "cli/sandbox_view.h"
#include "lib/cleanup.h"
#include "lib/error.h"

#define LOGS_FILE_POLL_MS 200
#define LOGS_STATUS_POLL_MS 1000
/* Each status call while following; --timeout bounds the whole follow instead. */
#define LOGS_STATUS_TIMEOUT_S 10

enum { FLAG_FOLLOW = 'f' };

static void logs_usage(FILE *out, const char *program)
{
	fprintf(out,
		"Usage: %s logs ID [-f] [--timeout SECONDS]\n"
		"\n"
		"Prints the sandbox's serial console log. With -f, keeps printing what the guest\n"
		"writes until the sandbox has exited or failed, Ctrl-C, or --timeout seconds.\n"
		"\n"
		"Flags:\n"
		"  -f, --follow            keep printing appended output\n",
		program);
	vg_cli_print_agent_flags(out, VG_CLI_DEFAULT_TIMEOUT_S);
}

static int on_logs_flag(void *ctx, int val, const char *arg, struct vg_error **err)
{
	(void)arg;
	if (val != FLAG_FOLLOW)
		return vg_error_set(err, EINVAL, "unhandled flag %d (a vmgpuctl bug)", val);
	*(bool *)ctx = true;
	return 0;
}

static volatile sig_atomic_t interrupted;

static void on_interrupt(int sig)
{
	(void)sig;
	interrupted = 1;
}

static long long monotonic_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int write_all(int fd, const char *buf, size_t len, struct vg_error **err)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return vg_error_set_errno(err, errno, "write to stdout");
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Copies what is new in the log since *offset to stdout. A file that shrank was truncated or
 * replaced: start again from its beginning. */
static int copy_new_output(int fd, off_t *offset, struct vg_error **err)
{
	struct stat st;
	if (fstat(fd, &st) < 0)
		return vg_error_set_errno(err, errno, "stat the console log");
	if (st.st_size < *offset)
		*offset = 0;
	char buf[65536];
	for (;;) {
		ssize_t n = pread(fd, buf, sizeof(buf), *offset);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return vg_error_set_errno(err, errno, "read the console log");
		if (n == 0)
			return 0;
		int ret = write_all(STDOUT_FILENO, buf, (size_t)n, err);
		if (ret < 0)
			return ret;
		*offset += n;
	}
}

struct log_source {
	char path[4096];
	char state[32];
};

static int fetch_log_source(struct vg_api *api, const char *id, struct log_source *src,
			    enum vg_grpc_code *code, struct vg_error **err)
{
	cleanup_proto Runtime__V1__PodSandboxStatusResponse *response = NULL;
	int ret = vg_api_sandbox_status(api, id, &response, code, err);
	if (ret < 0)
		return ret;
	struct vg_sandbox_view view;
	vg_sandbox_view_init(&view, response);
	snprintf(src->state, sizeof(src->state), "%s", view.state);
	if (view.console_log[0] == '\0')
		ret = vg_error_set(err, ENOENT,
				   "the agent reports no console log for sandbox %s (its \"vmgpu\" "
				   "info has no console_log)",
				   id);
	else if ((size_t)snprintf(src->path, sizeof(src->path), "%s", view.console_log) >=
		 sizeof(src->path))
		ret = vg_error_set(err, ENAMETOOLONG, "console log path is too long");
	vg_sandbox_view_clear(&view);
	return ret;
}

static int open_log(const struct log_source *src, int *fd, struct vg_error **err)
{
	*fd = open(src->path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (*fd >= 0)
		return 0;
	if (errno == ENOENT) /* the usual case: QEMU has not started (or never did) */
		return vg_error_set(err, ENOENT, "no console log yet at %s (the sandbox is %s)",
				    src->path, src->state);
	return vg_error_set_errno(err, errno, "console log %s", src->path);
}

static void sleep_ms(long long ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = ms % 1000 * 1000000 };
	nanosleep(&ts, NULL); /* a signal cuts it short, which is what Ctrl-C wants */
}

/* Until the state is final (after one last read), Ctrl-C or the deadline. Returns the exit
 * code, or <0 with *err set. */
static int follow(struct vg_api *api, const char *program, const char *id,
		  struct log_source *src, long long timeout_s, struct vg_error **err)
{
	struct sigaction sa = { .sa_handler = on_interrupt };
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	long long start = monotonic_ms(), next_status = start + LOGS_STATUS_POLL_MS;
	cleanup_close int fd = -1;
	off_t offset = 0;
	bool finished = vg_sandbox_state_is_final(src->state);
	for (;;) {
		/* The shim creates the file when QEMU starts: until then there is nothing to show,
		 * and only a finished sandbox without one is an error. */
		if (fd < 0) {
			int ret = open_log(src, &fd, finished ? err : NULL);
			if (ret < 0 && finished)
				return ret;
		}
		int ret = fd >= 0 ? copy_new_output(fd, &offset, err) : 0;
		if (ret < 0)
			return ret;
		if (finished)
			return 0;
		if (interrupted)
			return 130; /* as a shell reports a Ctrl-C'd command */
		long long now = monotonic_ms();
		if (timeout_s > 0 && now - start >= timeout_s * 1000) {
			fprintf(stderr,
				"%s: stopped following after %lld s (--timeout); the sandbox is %s\n",
				program, timeout_s, src->state);
			return 0;
		}
		if (now >= next_status) {
			enum vg_grpc_code code;
			cleanup_error struct vg_error *status_err = NULL;
			if (fetch_log_source(api, id, src, &code, &status_err) < 0) {
				if (code != VG_GRPC_NOT_FOUND) {
					*err = TAKE_PTR(status_err);
					return -vg_error_code(*err);
				}
				finished = true; /* removed while we followed it */
			}
			finished |= vg_sandbox_state_is_final(src->state);
			next_status = monotonic_ms() + LOGS_STATUS_POLL_MS;
			continue; /* read once more before leaving, so the last lines are shown */
		}
		sleep_ms(LOGS_FILE_POLL_MS);
	}
}

int vg_cmd_logs(int argc, char **argv, const char *program)
{
	bool follow_flag = false;
	static const struct option logs_options[] = {
		{ "follow", no_argument, NULL, FLAG_FOLLOW },
		{ NULL, 0, NULL, 0 },
	};
	struct vg_cli_verb_flags verb_flags = { .options = logs_options,
						.short_options = "f",
						.on_flag = on_logs_flag,
						.ctx = &follow_flag };
	struct vg_cli_options opts;
	cleanup_error struct vg_error *err = NULL;
	int ret = vg_cli_parse(argc, argv, program, logs_usage, &verb_flags, &opts, &err);
	if (ret == 0)
		ret = vg_cli_refuse_output(&opts, &err);
	if (ret == 0 && argc - opts.first_arg != 1)
		ret = vg_error_set(&err, EINVAL, "logs takes one sandbox ID; see %s logs --help",
				   program);
	if (ret != 0)
		return ret > 0 ? 0 : vg_cli_fail(program, err);
	const char *id = argv[opts.first_arg];

	struct vg_api api;
	vg_api_init(&api, &opts, VG_CLI_DEFAULT_TIMEOUT_S);
	if (follow_flag) /* --timeout bounds the follow, not each status call */
		api.timeout_ms = LOGS_STATUS_TIMEOUT_S * 1000;
	struct log_source src = { 0 };
	if (fetch_log_source(&api, id, &src, NULL, &err) < 0)
		return vg_cli_error(program, err);
	if (follow_flag) {
		ret = follow(&api, program, id, &src, opts.timeout_s, &err);
		return ret < 0 ? vg_cli_error(program, err) : ret;
	}
	cleanup_close int fd = -1;
	off_t offset = 0;
	if (open_log(&src, &fd, &err) < 0 || copy_new_output(fd, &offset, &err) < 0)
		return vg_cli_error(program, err);
	return 0;
}
