#include "agent/kubelet_watch.h"

#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/error.h"
#include "lib/grpc/vg_grpc.h"
#include "lib/log.h"

#define KUBELET_SOCKET_NAME "kubelet.sock"

struct vg_kubelet_watch {
	struct vg_grpc_loop *loop;
	char dir[PATH_MAX];
	char kubelet_socket[PATH_MAX + 16];
	int interval_ms;
	vg_kubelet_event_fn fn;
	void *ctx;
	int inotify_fd;
	int wd; /* -1 while the directory is not watched */
	uint64_t fd_watch;
	uint64_t timer;
	bool dir_present;
	bool said_missing;
	/* The kubelet.sock we saw last: another inode or ctime is a new kubelet (a deleted
	 * file's inode number is often reused at once, hence the ctime). */
	bool have_socket;
	dev_t socket_dev;
	ino_t socket_ino;
	struct timespec socket_ctime;
};

static void emit(struct vg_kubelet_watch *w, enum vg_kubelet_event event)
{
	w->fn(w->ctx, event);
}

/* Remembers kubelet.sock's identity; true when it is a socket we had not seen. */
static bool kubelet_socket_is_new(struct vg_kubelet_watch *w)
{
	struct stat st;
	if (stat(w->kubelet_socket, &st) < 0 || !S_ISSOCK(st.st_mode)) {
		w->have_socket = false;
		return false;
	}
	bool is_new = !w->have_socket || st.st_dev != w->socket_dev || st.st_ino != w->socket_ino ||
		      st.st_ctim.tv_sec != w->socket_ctime.tv_sec ||
		      st.st_ctim.tv_nsec != w->socket_ctime.tv_nsec;
	w->have_socket = true;
	w->socket_dev = st.st_dev;
	w->socket_ino = st.st_ino;
	w->socket_ctime = st.st_ctim;
	return is_new;
}

static void dir_lost(struct vg_kubelet_watch *w)
{
	if (w->wd >= 0)
		inotify_rm_watch(w->inotify_fd, w->wd); /* fails harmlessly once it is gone */
	w->wd = -1;
	w->have_socket = false;
	if (w->dir_present) {
		w->dir_present = false;
		vg_warn("kubelet: %s went away; the device plugin waits for it to come back",
			w->dir);
		emit(w, VG_KUBELET_DIR_GONE);
	}
}

/* Starts watching the directory if it exists now; true when it is watched. */
static bool dir_try_watch(struct vg_kubelet_watch *w)
{
	if (w->wd >= 0)
		return true;
	w->wd = inotify_add_watch(w->inotify_fd, w->dir,
				  IN_CREATE | IN_MOVED_TO | IN_DELETE | IN_MOVED_FROM |
					  IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR);
	if (w->wd < 0) {
		if (!w->said_missing)
			vg_info("kubelet: cannot watch %s (%s); looking again every %d ms", w->dir,
				strerror(errno), w->interval_ms);
		w->said_missing = true;
		return false;
	}
	w->said_missing = false;
	if (!w->dir_present) {
		w->dir_present = true;
		emit(w, VG_KUBELET_DIR_BACK);
	}
	return true;
}

static void on_inotify(void *ctx, int fd)
{
	struct vg_kubelet_watch *w = ctx;
	char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
	bool removed = false, created = false, overflow = false, gone = false;
	for (;;) {
		ssize_t n = read(fd, buf, sizeof(buf));
		if (n <= 0)
			break;
		for (char *p = buf; p < buf + n;) {
			const struct inotify_event *ev = (const struct inotify_event *)p;
			p += sizeof(*ev) + ev->len;
			if (ev->mask & IN_Q_OVERFLOW) {
				overflow = true;
				continue;
			}
			if (ev->wd != w->wd)
				continue; /* a watch we dropped already */
			if (ev->mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED))
				gone = true;
			else if (ev->len > 0 && (ev->mask & (IN_DELETE | IN_MOVED_FROM))) {
				removed = true;
				if (strcmp(ev->name, KUBELET_SOCKET_NAME) == 0)
					w->have_socket = false; /* whatever comes next is new */
			} else if (ev->len > 0 && (ev->mask & (IN_CREATE | IN_MOVED_TO)) &&
				   strcmp(ev->name, KUBELET_SOCKET_NAME) == 0)
				created = true;
		}
	}
	/* Removals first: a restarting kubelet deletes our socket before it serves its own. */
	if (gone)
		dir_lost(w);
	if (removed || overflow)
		emit(w, VG_KUBELET_SOCKET_REMOVED);
	if ((created || overflow) && w->dir_present && kubelet_socket_is_new(w)) {
		vg_info("kubelet: %s was created: the kubelet (re)started", w->kubelet_socket);
		emit(w, VG_KUBELET_STARTED);
	}
}

static void on_tick(void *ctx)
{
	struct vg_kubelet_watch *w = ctx;
	w->timer = vg_grpc_loop_add_timer(w->loop, w->interval_ms, on_tick, w);
	struct stat st;
	if (w->dir_present && (stat(w->dir, &st) < 0 || !S_ISDIR(st.st_mode)))
		dir_lost(w);
	if (!dir_try_watch(w))
		return;
	if (kubelet_socket_is_new(w)) {
		vg_info("kubelet: %s is a new socket: the kubelet (re)started", w->kubelet_socket);
		emit(w, VG_KUBELET_STARTED);
	}
	emit(w, VG_KUBELET_TICK);
}

int vg_kubelet_watch_start(struct vg_grpc_loop *loop, const char *dir, int interval_ms,
			   vg_kubelet_event_fn fn, void *ctx, struct vg_kubelet_watch **out,
			   struct vg_error **err)
{
	struct vg_kubelet_watch *w = calloc(1, sizeof(*w));
	if (w == NULL)
		return vg_error_set(err, ENOMEM, "out of memory");
	w->loop = loop;
	snprintf(w->dir, sizeof(w->dir), "%s", dir);
	snprintf(w->kubelet_socket, sizeof(w->kubelet_socket), "%s/%s", dir, KUBELET_SOCKET_NAME);
	w->interval_ms = interval_ms;
	w->fn = fn;
	w->ctx = ctx;
	w->wd = -1;
	w->inotify_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (w->inotify_fd < 0) {
		int ret = vg_error_set_errno(err, errno, "inotify_init1 for %s", dir);
		free(w);
		return ret;
	}
	w->fd_watch = vg_grpc_loop_watch_fd(loop, w->inotify_fd, on_inotify, w, err);
	w->timer = vg_grpc_loop_add_timer(loop, interval_ms, on_tick, w);
	if (w->fd_watch == 0 || w->timer == 0) {
		vg_kubelet_watch_free(w);
		return vg_error_prefix(err, "watching %s", dir);
	}
	/* The kubelet already running is not a restart: the plugin registers once it serves. */
	if (dir_try_watch(w))
		kubelet_socket_is_new(w);
	*out = w;
	return 0;
}

bool vg_kubelet_watch_dir_present(const struct vg_kubelet_watch *watch)
{
	return watch->dir_present;
}

const char *vg_kubelet_watch_socket(const struct vg_kubelet_watch *watch)
{
	return watch->kubelet_socket;
}

void vg_kubelet_watch_free(struct vg_kubelet_watch *watch)
{
	if (watch == NULL)
		return;
	if (watch->timer)
		vg_grpc_loop_cancel_timer(watch->loop, watch->timer);
	if (watch->fd_watch)
		vg_grpc_loop_unwatch_fd(watch->loop, watch->fd_watch);
	if (watch->inotify_fd >= 0)
		close(watch->inotify_fd);
	free(watch);
}
