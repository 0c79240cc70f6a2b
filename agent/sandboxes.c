#include "agent/sandboxes.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent/allocator.h"
#include "agent/crash_point.h"
#include "agent/gpu_request.h"
#include "agent/sandbox_record.h"
#include "agent/sandboxes-priv.h"
#include "lib/cleanup.h"
#include "lib/config.h"
#include "lib/error.h"
#include "lib/grpc/vg_grpc.h"
#include "lib/log.h"
#include "lib/process.h"

#define STATUS_POLL_MS 50
#define STOP_GRACE_MS 60000

enum waiter_kind { WAIT_READY, WAIT_EXIT };

struct vg_sb_waiter {
	enum waiter_kind kind;
	bool then_remove;
	vg_sb_done_fn done;
	void *ctx;
	struct vg_sb_waiter *next;
};

static void request_shim_stop(struct vg_sandbox *sb);
static bool stop_requested(const struct vg_sandbox *sb);

static void notify_change(struct vg_sandboxes *mgr)
{
	if (mgr->on_change)
		mgr->on_change(mgr->on_change_ctx);
}

static int add_waiter(struct vg_sandbox *sb, enum waiter_kind kind, bool then_remove,
		      vg_sb_done_fn done, void *ctx, struct vg_error **err)
{
	struct vg_sb_waiter *w = calloc(1, sizeof(*w));
	if (w == NULL)
		return vg_error_set(err, ENOMEM, "out of memory");
	*w = (struct vg_sb_waiter){ kind, then_remove, done, ctx, sb->waiters };
	sb->waiters = w;
	return 0;
}

/* Completes the waiters of one kind; err NULL means success. */
static void complete_waiters(struct vg_sandbox *sb, enum waiter_kind kind,
			     const struct vg_error *err)
{
	struct vg_sb_waiter **link = &sb->waiters;
	while (*link != NULL) {
		struct vg_sb_waiter *w = *link;
		if (w->kind != kind) {
			link = &w->next;
			continue;
		}
		*link = w->next;
		w->done(w->ctx, err ? NULL : sb->id, err);
		free(w);
	}
}

static void save_record(struct vg_sandbox *sb)
{
	cleanup_error struct vg_error *err = NULL;
	if (vg_sandbox_record_save(sb, &err) < 0)
		vg_err("sandbox %s: %s", sb->id, err->msg);
}

static void free_sandbox(struct vg_sandbox *sb)
{
	json_object_put(sb->labels);
	json_object_put(sb->annotations);
	free(sb);
}

static void unlink_sandbox(struct vg_sandboxes *mgr, struct vg_sandbox *sb)
{
	for (struct vg_sandbox **link = &mgr->list; *link; link = &(*link)->next) {
		if (*link == sb) {
			*link = sb->next;
			return;
		}
	}
}

static void stop_watching(struct vg_sandbox *sb)
{
	struct vg_grpc_loop *loop = sb->owner->loop;
	if (sb->poll_timer)
		vg_grpc_loop_cancel_timer(loop, sb->poll_timer);
	if (sb->stop_timer)
		vg_grpc_loop_cancel_timer(loop, sb->stop_timer);
	if (sb->pidfd_watch)
		vg_grpc_loop_unwatch_fd(loop, sb->pidfd_watch);
	if (sb->pidfd >= 0)
		close(sb->pidfd);
	sb->poll_timer = sb->stop_timer = sb->pidfd_watch = 0;
	sb->pidfd = -1;
}

static void delete_sandbox(struct vg_sandboxes *mgr, struct vg_sandbox *sb)
{
	stop_watching(sb);
	cleanup_error struct vg_error *err = NULL;
	if (vg_sandbox_remove_dir(sb->dir, &err) < 0)
		vg_warn("sandbox %s: %s", sb->id, err->msg);
	unlink_sandbox(mgr, sb);
	vg_info("sandbox %s: removed", sb->id);
	free_sandbox(sb);
	notify_change(mgr);
}

/* The shim is gone, cleanly or not: repair what it left, free its GPUs, answer waiters. */
static void on_shim_gone(struct vg_sandbox *sb)
{
	struct vg_sandboxes *mgr = sb->owner;
	stop_watching(sb);
	bool clean = vg_sandbox_has_exit_record(sb);
	if (vg_sandbox_read_shim_status(sb) < 0 || !clean) {
		sb->state = VG_SB_FAILED;
		snprintf(sb->reason, sizeof(sb->reason), "shim died");
	}
	vg_sandbox_repair(mgr, sb);
	vg_device_table_release(mgr->devices, sb->id);
	vg_info("sandbox %s: shim exited; %s%s%s", sb->id, vg_sb_state_name(sb->state),
		sb->reason[0] ? ": " : "", sb->reason);
	save_record(sb);
	cleanup_error struct vg_error *err = NULL;
	vg_error_set(&err, EIO, "sandbox %s did not become ready: %s", sb->id,
		     sb->reason[0] ? sb->reason : vg_sb_state_name(sb->state));
	complete_waiters(sb, WAIT_READY, err);
	bool remove = false;
	for (struct vg_sb_waiter *w = sb->waiters; w; w = w->next)
		remove |= w->then_remove;
	complete_waiters(sb, WAIT_EXIT, NULL);
	if (remove || sb->removing)
		delete_sandbox(mgr, sb);
	else
		notify_change(mgr);
}

static void on_pidfd(void *ctx, int fd)
{
	(void)fd;
	on_shim_gone(ctx);
}

static void poll_status(void *ctx)
{
	struct vg_sandbox *sb = ctx;
	sb->poll_timer = 0;
	enum vg_sb_state before = sb->state;
	if (vg_sandbox_read_shim_status(sb) == 0 && sb->state != before)
		notify_change(sb->owner);
	if (sb->state == VG_SB_READY) {
		save_record(sb);
		complete_waiters(sb, WAIT_READY, NULL);
		return;
	}
	if (sb->state == VG_SB_FAILED) {
		/* The shim is tearing down; its exit frees the GPUs. Answer the caller now. */
		save_record(sb);
		cleanup_error struct vg_error *err = NULL;
		vg_error_set(&err, EIO, "sandbox %s failed: %s", sb->id, sb->reason);
		complete_waiters(sb, WAIT_READY, err);
		return;
	}
	if (sb->state == VG_SB_CREATING)
		sb->poll_timer = vg_grpc_loop_add_timer(sb->owner->loop, STATUS_POLL_MS, poll_status, sb);
}

/* Tracks a running shim by a pidfd checked against its start time. */
int vg_sandbox_watch_shim(struct vg_sandbox *sb, struct vg_error **err)
{
	int fd = vg_pidfd_open_checked(sb->shim_pid, sb->shim_start_time, err);
	if (fd < 0)
		return fd;
	sb->pidfd = fd;
	sb->pidfd_watch = vg_grpc_loop_watch_fd(sb->owner->loop, fd, on_pidfd, sb, err);
	if (sb->pidfd_watch == 0) {
		close(fd);
		sb->pidfd = -1;
		return -EIO;
	}
	if (sb->state == VG_SB_CREATING && sb->poll_timer == 0)
		sb->poll_timer = vg_grpc_loop_add_timer(sb->owner->loop, STATUS_POLL_MS, poll_status, sb);
	return 0;
}

static void launcher_failed(struct vg_sandbox *sb, const char *reason, int code)
{
	struct vg_sandboxes *mgr = sb->owner;
	sb->state = VG_SB_FAILED;
	snprintf(sb->reason, sizeof(sb->reason), "%s", reason);
	vg_sandbox_repair(mgr, sb);
	vg_device_table_release(mgr->devices, sb->id);
	save_record(sb);
	vg_warn("sandbox %s: failed to start: %s", sb->id, reason);
	cleanup_error struct vg_error *err = NULL;
	vg_error_set(&err, code, "sandbox %s failed to start: %s", sb->id, reason);
	complete_waiters(sb, WAIT_READY, err);
	complete_waiters(sb, WAIT_EXIT, NULL);
	notify_change(mgr);
}

static void on_launcher_output(void *ctx, int fd)
{
	struct vg_sandbox *sb = ctx;
	size_t room = sizeof(sb->launcher_out) - 1 - sb->launcher_len;
	ssize_t n = read(fd, sb->launcher_out + sb->launcher_len, room);
	if (n > 0) {
		sb->launcher_len += (size_t)n;
		if (room > (size_t)n)
			return;
	} else if (n < 0 && errno == EINTR) {
		return;
	}
	vg_grpc_loop_unwatch_fd(sb->owner->loop, sb->launcher_watch);
	sb->launcher_watch = 0;
	close(sb->launcher_fd);
	sb->launcher_fd = -1;
	int status = 0;
	while (waitpid(sb->launcher_pid, &status, 0) < 0 && errno == EINTR)
		;
	sb->launcher_out[sb->launcher_len] = '\0';
	char *line = strrchr(sb->launcher_out, '{');
	json_object *obj = line ? json_tokener_parse(line) : NULL;
	json_object *v = NULL;
	bool started = obj && json_object_object_get_ex(obj, "started", &v) &&
		       json_object_get_boolean(v);
	if (!started) {
		const char *message = obj && json_object_object_get_ex(obj, "error", &v)
					      ? json_object_get_string(v)
					      : sb->launcher_out[0] ? sb->launcher_out
								    : "the shim exited without a word";
		int code = obj && json_object_object_get_ex(obj, "errno", &v) ? json_object_get_int(v)
									       : EIO;
		char reason[512];
		snprintf(reason, sizeof(reason), "%.500s", message);
		reason[strcspn(reason, "\n")] = '\0';
		json_object_put(obj);
		launcher_failed(sb, reason, code);
		return;
	}
	json_object_put(obj);
	vg_crash_point("after-started");
	cleanup_error struct vg_error *err = NULL;
	if (vg_sandbox_read_shim_status(sb) < 0 || vg_sandbox_watch_shim(sb, &err) < 0) {
		/* It reported started and died already: the pidfd path cannot see it, repair now. */
		on_shim_gone(sb);
		return;
	}
	if (stop_requested(sb))
		request_shim_stop(sb);
	notify_change(sb->owner);
}

static int spawn_shim(struct vg_sandbox *sb, struct vg_error **err)
{
	int pipefd[2];
	if (pipe2(pipefd, O_CLOEXEC) < 0)
		return vg_error_set_errno(err, errno, "pipe");
	const char *shim = sb->owner->shim_binary;
	pid_t pid = fork();
	if (pid < 0) {
		close(pipefd[0]);
		close(pipefd[1]);
		return vg_error_set_errno(err, errno, "fork the shim");
	}
	if (pid == 0) {
		/* The agent's signal mask must not leak into the sandbox's processes. */
		sigset_t none;
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		dup2(pipefd[1], STDOUT_FILENO);
		dup2(pipefd[1], STDERR_FILENO);
		execl(shim, "vmgpu-shim", "--dir", sb->dir, (char *)NULL);
		dprintf(STDOUT_FILENO, "exec %s: %s\n", shim, strerror(errno));
		_exit(127);
	}
	close(pipefd[1]);
	sb->launcher_pid = pid;
	sb->launcher_fd = pipefd[0];
	sb->launcher_watch = vg_grpc_loop_watch_fd(sb->owner->loop, pipefd[0], on_launcher_output,
						   sb, err);
	return sb->launcher_watch ? 0 : -EIO;
}

int vg_sandboxes_stop(struct vg_sandboxes *mgr, const char *id, vg_sb_done_fn done, void *ctx,
		      struct vg_error **err)
{
	struct vg_sandbox *sb = vg_sandboxes_find(mgr, id);
	if (sb == NULL)
		return vg_error_set(err, ENOENT, "no sandbox %s on this node", id);
	return vg_sandbox_stop(sb, false, done, ctx, err);
}

static void stop_overdue(void *ctx);

static void request_shim_stop(struct vg_sandbox *sb)
{
	if (sb->pidfd < 0 || sb->stop_timer != 0)
		return;
	cleanup_error struct vg_error *err = NULL;
	if (vg_pidfd_signal(sb->pidfd, SIGTERM, &err) < 0)
		vg_warn("sandbox %s: %s", sb->id, err->msg);
	sb->stop_timer = vg_grpc_loop_add_timer(sb->owner->loop, STOP_GRACE_MS, stop_overdue, sb);
}

static bool stop_requested(const struct vg_sandbox *sb)
{
	for (const struct vg_sb_waiter *w = sb->waiters; w; w = w->next)
		if (w->kind == WAIT_EXIT)
			return true;
	return false;
}

static void stop_overdue(void *ctx)
{
	struct vg_sandbox *sb = ctx;
	sb->stop_timer = 0;
	vg_warn("sandbox %s: the shim did not stop in %d s; killing it", sb->id,
		STOP_GRACE_MS / 1000);
	if (sb->pidfd >= 0)
		vg_pidfd_signal(sb->pidfd, SIGKILL, NULL);
}

int vg_sandbox_stop(struct vg_sandbox *sb, bool then_remove, vg_sb_done_fn done, void *ctx,
		    struct vg_error **err)
{
	bool alive = sb->pidfd >= 0 || sb->launcher_fd >= 0;
	if (!alive) {
		if (then_remove)
			sb->removing = true;
		done(ctx, sb->id, NULL);
		if (then_remove)
			delete_sandbox(sb->owner, sb);
		return 0;
	}
	int ret = add_waiter(sb, WAIT_EXIT, then_remove, done, ctx, err);
	if (ret < 0)
		return ret;
	/* A launcher still starting gets the stop once it has reported (on_launcher_output). */
	request_shim_stop(sb);
	return 0;
}

int vg_sandboxes_remove(struct vg_sandboxes *mgr, const char *id, vg_sb_done_fn done,
			void *ctx, struct vg_error **err)
{
	struct vg_sandbox *sb = vg_sandboxes_find(mgr, id);
	if (sb == NULL) {
		done(ctx, id, NULL); /* CRI: removing what is gone is not an error */
		return 0;
	}
	return vg_sandbox_stop(sb, true, done, ctx, err);
}

struct vg_sandbox *vg_sandboxes_find(struct vg_sandboxes *mgr, const char *id)
{
	for (struct vg_sandbox *sb = mgr->list; sb; sb = sb->next)
		if (strcmp(sb->id, id) == 0)
			return sb;
	return NULL;
}

void vg_sandboxes_detach(struct vg_sandboxes *mgr)
{
	vg_sandboxes_cancel_lookups(mgr);
	while (mgr->list != NULL) {
		struct vg_sandbox *sb = mgr->list;
		mgr->list = sb->next;
		stop_watching(sb);
		if (sb->launcher_watch)
			vg_grpc_loop_unwatch_fd(mgr->loop, sb->launcher_watch);
		if (sb->launcher_fd >= 0)
			close(sb->launcher_fd);
		cleanup_error struct vg_error *err = NULL;
		vg_error_set(&err, ECANCELED, "the agent is shutting down; sandbox %s keeps running",
			     sb->id);
		complete_waiters(sb, WAIT_READY, err);
		complete_waiters(sb, WAIT_EXIT, err);
		free_sandbox(sb);
	}
}

struct vg_sandbox *vg_sandbox_new(struct vg_sandboxes *mgr, const char *id)
{
	struct vg_sandbox *sb = calloc(1, sizeof(*sb));
	if (sb == NULL)
		return NULL;
	snprintf(sb->id, sizeof(sb->id), "%s", id);
	snprintf(sb->dir, sizeof(sb->dir), "%s/%s", mgr->root, id);
	sb->pidfd = -1;
	sb->launcher_fd = -1;
	sb->owner = mgr;
	return sb;
}

void vg_sandbox_link(struct vg_sandboxes *mgr, struct vg_sandbox *sb)
{
	sb->next = mgr->list;
	mgr->list = sb;
}

int vg_sandbox_launch(struct vg_sandbox *sb, vg_sb_done_fn done, void *ctx, struct vg_error **err)
{
	int ret = add_waiter(sb, WAIT_READY, false, done, ctx, err);
	if (ret < 0)
		return ret;
	ret = spawn_shim(sb, err);
	if (ret < 0) {
		struct vg_sb_waiter *w = sb->waiters;
		sb->waiters = w->next;
		free(w);
		return ret;
	}
	vg_crash_point("after-spawn");
	return 0;
}
