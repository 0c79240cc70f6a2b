/* vmgpu-shim: one sandbox VM, detached from whoever started it (the conmon process model). */
#include <errno.h>
#include <stdbool.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lib/log.h"
#include "shim/lifecycle.h"

static const char usage[] =
	"Usage: vmgpu-shim --dir SANDBOX_DIR [--foreground] [--log-format text|json]\n"
	"\n"
	"Runs the sandbox described by SANDBOX_DIR/spec.json. By default the shim detaches\n"
	"(setsid, double fork, subreaper), prints one JSON line saying whether it started,\n"
	"and keeps running after its parent exits. Send SIGTERM to stop the sandbox.\n";

/* The parent side: wait for the one line the shim sends, print it, exit with its verdict. */
static int await_start(int sync_fd, pid_t child)
{
	char buf[2048];
	size_t len = 0;
	ssize_t n;
	while (len + 1 < sizeof(buf) &&
	       ((n = read(sync_fd, buf + len, sizeof(buf) - 1 - len)) > 0 ||
		(n < 0 && errno == EINTR)))
		len += n > 0 ? (size_t)n : 0;
	buf[len] = '\0';
	int status;
	while (waitpid(child, &status, 0) < 0 && errno == EINTR)
		;
	if (len == 0) {
		fprintf(stderr, "vmgpu-shim: error: the shim exited before reporting; see "
				"shim.log in the sandbox directory\n");
		return 1;
	}
	fputs(buf, stdout);
	return strstr(buf, "\"started\":true") != NULL ? 0 : 1;
}

static int redirect_output(const char *dir)
{
	char path[4096];
	if (snprintf(path, sizeof(path), "%s/shim.log", dir) >= (int)sizeof(path))
		return -1;
	int log_fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (log_fd < 0 || null_fd < 0)
		return -1;
	if (dup2(null_fd, STDIN_FILENO) < 0 || dup2(log_fd, STDOUT_FILENO) < 0 ||
	    dup2(log_fd, STDERR_FILENO) < 0)
		return -1;
	close(log_fd);
	close(null_fd);
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option options[] = {
		{ "dir", required_argument, NULL, 'd' },
		{ "foreground", no_argument, NULL, 'f' },
		{ "log-format", required_argument, NULL, 'l' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *dir = NULL;
	bool foreground = false;
	enum vg_log_format log_format = VG_LOG_TEXT;
	int c;
	while ((c = getopt_long(argc, argv, "d:fh", options, NULL)) != -1) {
		switch (c) {
		case 'd':
			dir = optarg;
			break;
		case 'f':
			foreground = true;
			break;
		case 'l':
			if (vg_log_parse_format(optarg, &log_format, NULL) < 0) {
				fprintf(stderr, "vmgpu-shim: error: log format '%s' is not one of: "
						"text, json\n",
					optarg);
				return 2;
			}
			break;
		case 'h':
			printf("%s", usage);
			return 0;
		default:
			fprintf(stderr, "%s", usage);
			return 2;
		}
	}
	struct stat st;
	if (dir == NULL || optind < argc) {
		fprintf(stderr, "%s", usage);
		return 2;
	}
	if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
		fprintf(stderr, "vmgpu-shim: error: sandbox directory %s: %s\n", dir,
			strerror(errno ? errno : ENOTDIR));
		return 2;
	}
	vg_log_setup("vmgpu-shim", log_format, VG_LOG_INFO, stderr);
	if (foreground) {
		struct vg_shim_options opts = { dir, -1 };
		return vg_shim_run(&opts);
	}

	int sync[2];
	if (pipe2(sync, O_CLOEXEC) < 0) {
		perror("vmgpu-shim: pipe");
		return 1;
	}
	pid_t child = fork();
	if (child < 0) {
		perror("vmgpu-shim: fork");
		return 1;
	}
	if (child > 0) {
		close(sync[1]);
		return await_start(sync[0], child);
	}
	close(sync[0]);
	/* A new session and a second fork: no controlling terminal, and our parent's exit or
	 * process-group signals do not reach the sandbox. */
	if (setsid() < 0)
		_exit(1);
	pid_t shim = fork();
	if (shim < 0)
		_exit(1);
	if (shim > 0)
		_exit(0);
	/* Orphans of QEMU's helpers are reparented to us, not to init, and we reap them. */
	prctl(PR_SET_CHILD_SUBREAPER, 1);
	if (redirect_output(dir) < 0)
		_exit(1);
	struct vg_shim_options opts = { dir, sync[1] };
	return vg_shim_run(&opts);
}
