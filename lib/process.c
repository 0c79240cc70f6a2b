#include "lib/process.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "lib/cleanup.h"
#include "lib/error.h"

int vg_proc_start_time(pid_t pid, uint64_t *out, struct vg_error **err)
{
	char path[64], buf[1024];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	cleanup_close int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return vg_error_set_errno(err, errno, "process %d", (int)pid);
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	if (n <= 0)
		return vg_error_set_errno(err, n < 0 ? errno : EIO, "read %s", path);
	buf[n] = '\0';
	/* The command name may hold spaces and parentheses: fields start after the last ')'. */
	char *p = strrchr(buf, ')');
	if (p == NULL)
		return vg_error_set(err, EIO, "malformed %s", path);
	unsigned long long start = 0;
	int field = 2;
	for (char *tok = strtok(p + 1, " "); tok != NULL; tok = strtok(NULL, " ")) {
		if (++field == 22) {
			if (sscanf(tok, "%llu", &start) != 1)
				return vg_error_set(err, EIO, "malformed start time in %s", path);
			*out = start;
			return 0;
		}
	}
	return vg_error_set(err, EIO, "no start time in %s", path);
}

int vg_pidfd_open_checked(pid_t pid, uint64_t start_time, struct vg_error **err)
{
	int fd = (int)syscall(SYS_pidfd_open, pid, 0);
	if (fd < 0)
		return vg_error_set_errno(err, errno, "pidfd_open %d", (int)pid);
	uint64_t actual = 0;
	/* Checked after opening the pidfd: from here on the pid cannot be reused under us. */
	if (vg_proc_start_time(pid, &actual, NULL) < 0 || actual != start_time) {
		close(fd);
		return vg_error_set(err, ESRCH,
				    "process %d is gone (its pid now belongs to another process)",
				    (int)pid);
	}
	return fd;
}

int vg_pidfd_signal(int pidfd, int sig, struct vg_error **err)
{
	if (syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0) < 0)
		return vg_error_set_errno(err, errno, "signal %d", sig);
	return 0;
}

bool vg_process_alive(pid_t pid, uint64_t start_time)
{
	uint64_t actual = 0;
	return pid > 0 && vg_proc_start_time(pid, &actual, NULL) == 0 && actual == start_time;
}

int64_t vg_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t vg_monotonic_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void vg_format_time(int64_t realtime_ns, char out[32])
{
	time_t secs = (time_t)(realtime_ns / 1000000000);
	struct tm tm;
	gmtime_r(&secs, &tm);
	size_t n = strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(out + n, 32 - n, ".%03dZ", (int)((realtime_ns / 1000000) % 1000));
}
