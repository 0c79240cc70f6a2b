#include "lib/sysfs_timed.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "lib/cleanup.h"
#include "lib/error.h"
#include "lib/log.h"
#include "lib/sysfs.h"

/* After SIGKILL, how long to wait for the writer to die before leaving it to the reap loop. */
#define KILLED_WRITER_GRACE_MS 1000

/* What the writer child did, sent back over a pipe: the stage that failed and its errno. */
enum write_stage { WRITE_DONE, WRITE_OPEN_FAILED, WRITE_FAILED, WRITE_SHORT };

struct write_report {
	int stage;
	int error;
};

/* Runs in the forked child: only async-signal-safe calls, and _exit so no atexit handler runs. */
__attribute__((noreturn)) static void writer_child(const char *path, const char *value,
						   int report_fd)
{
	struct write_report report = { .stage = WRITE_DONE };
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0) {
		report = (struct write_report){ .stage = WRITE_OPEN_FAILED, .error = errno };
	} else {
		size_t len = strlen(value);
		ssize_t n;
		do {
			n = write(fd, value, len);
		} while (n < 0 && errno == EINTR);
		if (n < 0)
			report = (struct write_report){ .stage = WRITE_FAILED, .error = errno };
		else if ((size_t)n != len)
			report = (struct write_report){ .stage = WRITE_SHORT };
		close(fd);
	}
	/* A pipe write this small is atomic; if the parent is gone, nobody needs the report. */
	ssize_t sent = write(report_fd, &report, sizeof(report));
	_exit(sent == (ssize_t)sizeof(report) ? 0 : 1);
}

static long ms_until(const struct timespec *deadline)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return (deadline->tv_sec - now.tv_sec) * 1000 + (deadline->tv_nsec - now.tv_nsec) / 1000000;
}

static struct timespec deadline_after(int ms)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	t.tv_sec += ms / 1000;
	t.tv_nsec += (long)(ms % 1000) * 1000000;
	if (t.tv_nsec >= 1000000000) {
		t.tv_sec++;
		t.tv_nsec -= 1000000000;
	}
	return t;
}

static int open_pidfd(pid_t pid)
{
#ifdef SYS_pidfd_open
	/* pidfd_open fds are always close-on-exec. */
	return (int)syscall(SYS_pidfd_open, pid, 0);
#else
	(void)pid;
	errno = ENOSYS;
	return -1;
#endif
}

/* Through the pidfd when there is one: even if another reaper took the pid, no stranger is hit. */
static void kill_writer(pid_t pid, int pidfd)
{
#ifdef SYS_pidfd_send_signal
	if (pidfd >= 0) {
		syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, NULL, 0);
		return;
	}
#endif
	(void)pidfd;
	kill(pid, SIGKILL);
}

/*
 * Waits up to timeout_ms for the child to exit and reaps it. Returns 0 with *status filled,
 * -ETIMEDOUT when it is still running, or another -errno. With a pidfd the wait is one poll;
 * kernels older than 5.3 have none, and then waitpid(WNOHANG) is polled every millisecond.
 */
static int reap_within(pid_t pid, int pidfd, int timeout_ms, int *status)
{
	struct timespec deadline = deadline_after(timeout_ms);
	for (;;) {
		pid_t got = waitpid(pid, status, WNOHANG);
		if (got == pid)
			return 0;
		if (got < 0 && errno == ECHILD) {
			/* SIGCHLD is ignored and the kernel reaped it: it exited, status unknown. */
			*status = 0;
			return 0;
		}
		if (got < 0 && errno != EINTR)
			return -errno;
		long left = ms_until(&deadline);
		if (left <= 0)
			return -ETIMEDOUT;
		if (pidfd >= 0) {
			struct pollfd pfd = { .fd = pidfd, .events = POLLIN };
			if (poll(&pfd, 1, left > INT_MAX ? INT_MAX : (int)left) < 0 &&
			    errno != EINTR)
				return -errno;
		} else {
			struct timespec tick = { .tv_nsec = 1000000 };
			nanosleep(&tick, NULL);
		}
	}
}

/* The value as it reads in a message: up to its first newline, so "\n" shows as ''. */
static int shown_len(const char *value)
{
	size_t len = strcspn(value, "\n");
	return len > 256 ? 256 : (int)len;
}

static int report_to_error(const struct write_report *report, const char *path, const char *value,
			   struct vg_error **err)
{
	switch (report->stage) {
	case WRITE_DONE:
		return 0;
	case WRITE_OPEN_FAILED:
		return vg_error_set_errno(err, report->error, "open %s for writing", path);
	case WRITE_FAILED:
		return vg_error_set_errno(err, report->error, "write '%.*s' to %s",
					  shown_len(value), value, path);
	case WRITE_SHORT:
		return vg_error_set(err, EIO, "short write of '%.*s' to %s", shown_len(value),
				    value, path);
	default:
		return vg_error_set(err, EIO, "write '%.*s' to %s: garbled report from the writer",
				    shown_len(value), value, path);
	}
}

int vg_sysfs_write_timed(const struct vg_sysfs *sysfs, const char *rel, const char *value,
			 int timeout_ms, struct vg_error **err)
{
	if (timeout_ms <= 0)
		return vg_error_set(err, EINVAL, "write to %s: timeout must be positive, got %d ms",
				    rel, timeout_ms);
	char path[PATH_MAX];
	int ret = vg_sysfs_path(sysfs, path, sizeof(path), err, "%s", rel);
	if (ret < 0)
		return ret;

	int pipefd[2];
	if (pipe2(pipefd, O_CLOEXEC) < 0)
		return vg_error_set_errno(err, errno, "write to %s: pipe", path);
	cleanup_close int report_read = pipefd[0];
	cleanup_close int report_write = pipefd[1];

	pid_t pid = fork();
	if (pid < 0)
		return vg_error_set_errno(err, errno, "write to %s: fork", path);
	if (pid == 0)
		writer_child(path, value, report_write);
	vg_closep(&report_write);
	report_write = -1;

	cleanup_close int pidfd = open_pidfd(pid);
	int status = 0;
	ret = reap_within(pid, pidfd, timeout_ms, &status);
	if (ret == -ETIMEDOUT) {
		kill_writer(pid, pidfd);
		if (reap_within(pid, pidfd, KILLED_WRITER_GRACE_MS, &status) < 0)
			vg_warn("writer pid %ld for %s is stuck in the kernel after SIGKILL; "
				"left for the reap loop",
				(long)pid, path);
		return vg_error_set(err, ETIMEDOUT,
				    "write '%.*s' to %s did not finish within %d ms; the writer "
				    "was "
				    "killed",
				    shown_len(value), value, path, timeout_ms);
	}
	if (ret < 0) {
		kill_writer(pid, pidfd);
		return vg_error_set_errno(err, -ret, "write to %s: wait for the writer", path);
	}

	struct write_report report;
	ssize_t n;
	do {
		n = read(report_read, &report, sizeof(report));
	} while (n < 0 && errno == EINTR);
	if (n != (ssize_t)sizeof(report)) {
		if (WIFSIGNALED(status))
			return vg_error_set(err, EIO,
					    "write '%.*s' to %s: the writer died of signal %d",
					    shown_len(value), value, path, WTERMSIG(status));
		return vg_error_set(err, EIO, "write '%.*s' to %s: the writer sent no report",
				    shown_len(value), value, path);
	}
	return report_to_error(&report, path, value, err);
}
