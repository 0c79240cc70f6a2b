#include "shim/qemu_child.h"

#include <errno.h>
#include <stdbool.h>
#include <fcntl.h>
#include <linux/close_range.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <grp.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lib/cleanup.h"
#include "lib/error.h"

/* What a child that failed before exec sends back. */
struct child_failure {
	int code;
	char step[112];
};

static void __attribute__((noreturn)) child_fail(int report_fd, const char *step)
{
	struct child_failure failure = { .code = errno };
	snprintf(failure.step, sizeof(failure.step), "%s", step);
	ssize_t ignored = write(report_fd, &failure, sizeof(failure));
	(void)ignored;
	_exit(127);
}

static void __attribute__((noreturn)) run_child(const struct vg_qemu_launch *launch,
						 pid_t parent, int report_fd)
{
	if (launch->memlock_bytes > 0) {
		struct rlimit limit = { launch->memlock_bytes, launch->memlock_bytes };
		if (setrlimit(RLIMIT_MEMLOCK, &limit) < 0)
			child_fail(report_fd, "raise RLIMIT_MEMLOCK for VFIO");
	}
	if (launch->gid >= 0 && (setgroups(0, NULL) < 0 || setgid((gid_t)launch->gid) < 0))
		child_fail(report_fd, "drop to the sandbox's gid");
	if (launch->uid >= 0 && setuid((uid_t)launch->uid) < 0)
		child_fail(report_fd, "drop to the sandbox's uid");
	/* After the credential change, which clears it: QEMU must not outlive the shim. */
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0)
		child_fail(report_fd, "set PR_SET_PDEATHSIG");
	if (getppid() != parent)
		child_fail(report_fd, "check the shim is still alive");
	sigset_t none;
	sigemptyset(&none);
	if (sigprocmask(SIG_SETMASK, &none, NULL) < 0)
		child_fail(report_fd, "reset the signal mask");
	for (int sig = 1; sig < NSIG; sig++)
		signal(sig, SIG_DFL);

	int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	int log_fd = open(launch->log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	if (null_fd < 0 || log_fd < 0)
		child_fail(report_fd, "open QEMU's log file");
	if (dup2(null_fd, STDIN_FILENO) < 0 || dup2(log_fd, STDOUT_FILENO) < 0 ||
	    dup2(log_fd, STDERR_FILENO) < 0)
		child_fail(report_fd, "redirect QEMU's output");
	/* Everything but stdio and the TAP closes on exec: the shim's sockets stay the shim's. */
	if (close_range(3, ~0U, CLOSE_RANGE_CLOEXEC) < 0)
		child_fail(report_fd, "mark inherited fds close-on-exec");
	if (launch->pass_fd >= 0 && fcntl(launch->pass_fd, F_SETFD, 0) < 0)
		child_fail(report_fd, "pass the TAP fd");
	execvp(launch->argv[0], launch->argv);
	child_fail(report_fd, "exec");
}

int vg_qemu_spawn(const struct vg_qemu_launch *launch, pid_t *out_pid, struct vg_error **err)
{
	int pair[2];
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) < 0)
		return vg_error_set_errno(err, errno, "socketpair");
	cleanup_close int parent_end = pair[0];
	cleanup_close int child_end = pair[1];
	pid_t parent = getpid();
	pid_t pid = fork();
	if (pid < 0)
		return vg_error_set_errno(err, errno, "fork QEMU");
	if (pid == 0)
		run_child(launch, parent, child_end);
	vg_closep(&child_end);
	child_end = -1;

	/* exec closes the child's end, so EOF means QEMU is running; a record means it is not. */
	struct child_failure failure;
	ssize_t n;
	do {
		n = read(parent_end, &failure, sizeof(failure));
	} while (n < 0 && errno == EINTR);
	if (n == 0) {
		*out_pid = pid;
		return 0;
	}
	int status;
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	if (n != (ssize_t)sizeof(failure))
		return vg_error_set(err, EIO, "QEMU child died before exec without a report");
	failure.step[sizeof(failure.step) - 1] = '\0';
	return vg_error_set_errno(err, failure.code, "start %s: %s", launch->argv[0],
				  failure.step);
}
