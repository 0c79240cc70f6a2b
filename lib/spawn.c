#include "lib/spawn.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "lib/cleanup.h"
#include "lib/error.h"

extern char **environ;

int vg_find_executable(const char *name, char *out, size_t size, struct vg_error **err)
{
	if (strchr(name, '/') != NULL) {
		if (access(name, X_OK) < 0)
			return vg_error_set_errno(err, errno, "%s", name);
		if ((size_t)snprintf(out, size, "%s", name) >= size)
			return vg_error_set(err, ENAMETOOLONG, "path too long: %s", name);
		return 0;
	}
	const char *path = getenv("PATH");
	if (path == NULL || path[0] == '\0')
		path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
	cleanup_free char *copy = strdup(path);
	if (copy == NULL)
		return vg_error_set(err, ENOMEM, "out of memory");
	char *save = NULL;
	for (char *dir = strtok_r(copy, ":", &save); dir; dir = strtok_r(NULL, ":", &save)) {
		char candidate[PATH_MAX];
		int n = snprintf(candidate, sizeof(candidate), "%s/%s", dir, name);
		if (n < 0 || (size_t)n >= sizeof(candidate))
			continue;
		if (access(candidate, X_OK) == 0) {
			if ((size_t)snprintf(out, size, "%s", candidate) >= size)
				return vg_error_set(err, ENAMETOOLONG, "path too long: %s",
						    candidate);
			return 0;
		}
	}
	return vg_error_set(err, ENOENT, "%s not found in PATH", name);
}

static long elapsed_ms(const struct timespec *start)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return (now.tv_sec - start->tv_sec) * 1000 + (now.tv_nsec - start->tv_nsec) / 1000000;
}

int vg_spawn_capture(char *const argv[], int timeout_ms, char *out, size_t size,
		     struct vg_error **err)
{
	char exe[PATH_MAX];
	int ret = vg_find_executable(argv[0], exe, sizeof(exe), err);
	if (ret < 0)
		return ret;
	int pipefd[2];
	if (pipe2(pipefd, O_CLOEXEC) < 0)
		return vg_error_set_errno(err, errno, "pipe");
	cleanup_close int read_end = pipefd[0];
	cleanup_close int write_end = pipefd[1];

	posix_spawn_file_actions_t actions;
	posix_spawn_file_actions_init(&actions);
	posix_spawn_file_actions_adddup2(&actions, write_end, STDOUT_FILENO);
	posix_spawn_file_actions_adddup2(&actions, write_end, STDERR_FILENO);
	posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
	pid_t pid;
	int spawn_err = posix_spawn(&pid, exe, &actions, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&actions);
	if (spawn_err != 0)
		return vg_error_set_errno(err, spawn_err, "run %s", exe);
	vg_closep(&write_end);
	write_end = -1;

	size_t len = 0;
	struct timespec start;
	clock_gettime(CLOCK_MONOTONIC, &start);
	bool timed_out = false;
	for (;;) {
		long left = timeout_ms - elapsed_ms(&start);
		if (left <= 0) {
			timed_out = true;
			break;
		}
		struct pollfd pfd = { .fd = read_end, .events = POLLIN };
		int pr = poll(&pfd, 1, (int)left);
		if (pr < 0 && errno == EINTR)
			continue;
		if (pr <= 0) {
			timed_out = pr == 0;
			break;
		}
		char chunk[512];
		ssize_t n = read(read_end, chunk, sizeof(chunk));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		size_t room = size > 0 ? size - 1 - len : 0;
		size_t take = (size_t)n < room ? (size_t)n : room;
		memcpy(out + len, chunk, take);
		len += take;
	}
	if (size > 0)
		out[len] = '\0';
	if (timed_out)
		kill(pid, SIGKILL);
	int status = 0;
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	if (timed_out)
		return vg_error_set(err, ETIMEDOUT, "%s did not finish within %d ms", exe,
				    timeout_ms);
	if (WIFSIGNALED(status))
		return vg_error_set(err, EIO, "%s was killed by signal %d", exe, WTERMSIG(status));
	return WEXITSTATUS(status);
}
