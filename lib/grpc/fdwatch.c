/*
 * fd watches. grpc's completion queue cannot poll our fds, so one helper thread epoll_waits on
 * them and wakes the loop; the callbacks themselves run on the loop thread. Each fd is armed
 * EPOLLONESHOT and re-armed after its callback ran: level-triggered for the user, yet a slow
 * callback does not make the helper spin.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "lib/error.h"
#include "lib/grpc/grpc-priv.h"
#include "lib/log.h"

/* epoll data 0 is the helper's exit eventfd; watch ids start at 1. */
#define EXIT_EVENT_ID 0

struct fd_watch {
	struct fd_watch *next;
	uint64_t id;
	int fd;
	void (*fn)(void *ctx, int fd);
	void *ctx;
	bool ready;    /* set by the helper, under mu */
	bool dispatch; /* loop thread only: callback due in the current dispatch round */
};

struct vg_grpc_fd_watcher {
	struct vg_grpc_loop *loop;
	int epoll_fd;
	int exit_fd;
	pthread_t thread;
	bool thread_started;
	pthread_mutex_t mu; /* guards the list's links and the ready flags */
	struct fd_watch *watches;
	uint64_t last_id;
};

static void *fd_watcher_main(void *arg)
{
	struct vg_grpc_fd_watcher *watcher = arg;
	struct epoll_event events[16];
	for (;;) {
		int n = epoll_wait(watcher->epoll_fd, events, 16, -1);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			vg_err("grpc loop: epoll_wait failed, fd watches stop: %m");
			return NULL;
		}
		bool any = false;
		pthread_mutex_lock(&watcher->mu);
		for (int i = 0; i < n; i++) {
			if (events[i].data.u64 == EXIT_EVENT_ID) {
				pthread_mutex_unlock(&watcher->mu);
				return NULL;
			}
			for (struct fd_watch *w = watcher->watches; w != NULL; w = w->next) {
				if (w->id == events[i].data.u64) {
					w->ready = true;
					any = true;
				}
			}
		}
		pthread_mutex_unlock(&watcher->mu);
		if (any)
			loop_wake_internal(watcher->loop);
	}
}

static int fd_watcher_start(struct vg_grpc_loop *loop, struct vg_error **err)
{
	struct vg_grpc_fd_watcher *watcher = calloc(1, sizeof(*watcher));
	if (watcher == NULL)
		return vg_error_set(err, ENOMEM, "out of memory for the fd watcher");
	watcher->loop = loop;
	watcher->exit_fd = -1;
	pthread_mutex_init(&watcher->mu, NULL);
	watcher->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
	if (watcher->epoll_fd < 0) {
		int rc = vg_error_set_errno(err, errno, "epoll_create1");
		fd_watcher_free(watcher);
		return rc;
	}
	watcher->exit_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = EXIT_EVENT_ID };
	if (watcher->exit_fd < 0 ||
	    epoll_ctl(watcher->epoll_fd, EPOLL_CTL_ADD, watcher->exit_fd, &ev) < 0) {
		int rc = vg_error_set_errno(err, errno, "cannot set up the fd watcher's eventfd");
		fd_watcher_free(watcher);
		return rc;
	}
	/* The helper must never take a signal meant for the daemon's signalfd. */
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	int rc = pthread_create(&watcher->thread, NULL, fd_watcher_main, watcher);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc != 0) {
		fd_watcher_free(watcher);
		return vg_error_set_errno(err, rc, "cannot start the fd watcher thread");
	}
	watcher->thread_started = true;
	loop->fd_watcher = watcher;
	return 0;
}

uint64_t vg_grpc_loop_watch_fd(struct vg_grpc_loop *loop, int fd, void (*fn)(void *ctx, int fd),
			       void *ctx, struct vg_error **err)
{
	if (loop->phase >= LOOP_QUIESCED) {
		vg_error_set(err, ESHUTDOWN, "the grpc loop has shut down");
		return 0;
	}
	if (loop->fd_watcher == NULL && fd_watcher_start(loop, err) < 0)
		return 0;
	struct vg_grpc_fd_watcher *watcher = loop->fd_watcher;
	struct fd_watch *w = calloc(1, sizeof(*w));
	if (w == NULL) {
		vg_error_set(err, ENOMEM, "out of memory for an fd watch");
		return 0;
	}
	w->id = ++watcher->last_id;
	w->fd = fd;
	w->fn = fn;
	w->ctx = ctx;
	/* Linked first, so the helper finds it as soon as epoll reports it. */
	pthread_mutex_lock(&watcher->mu);
	w->next = watcher->watches;
	watcher->watches = w;
	pthread_mutex_unlock(&watcher->mu);
	struct epoll_event ev = { .events = EPOLLIN | EPOLLONESHOT, .data.u64 = w->id };
	if (epoll_ctl(watcher->epoll_fd, EPOLL_CTL_ADD, fd, &ev) < 0) {
		vg_error_set_errno(err, errno, "cannot watch fd %d", fd);
		vg_grpc_loop_unwatch_fd(loop, w->id);
		return 0;
	}
	return w->id;
}

static struct fd_watch *find_watch(struct vg_grpc_fd_watcher *watcher, uint64_t id)
{
	for (struct fd_watch *w = watcher->watches; w != NULL; w = w->next)
		if (w->id == id)
			return w;
	return NULL;
}

void vg_grpc_loop_unwatch_fd(struct vg_grpc_loop *loop, uint64_t id)
{
	struct vg_grpc_fd_watcher *watcher = loop->fd_watcher;
	if (watcher == NULL || id == 0)
		return;
	pthread_mutex_lock(&watcher->mu);
	struct fd_watch *found = NULL;
	for (struct fd_watch **link = &watcher->watches; *link != NULL; link = &(*link)->next) {
		if ((*link)->id == id) {
			found = *link;
			*link = found->next;
			break;
		}
	}
	pthread_mutex_unlock(&watcher->mu);
	if (found == NULL)
		return;
	/* Fails harmlessly when the caller closed the fd already (epoll dropped it then). */
	epoll_ctl(watcher->epoll_fd, EPOLL_CTL_DEL, found->fd, NULL);
	free(found);
}

void fd_watcher_dispatch(struct vg_grpc_loop *loop)
{
	struct vg_grpc_fd_watcher *watcher = loop->fd_watcher;
	if (watcher == NULL)
		return;
	/* This round covers what was ready now; readiness found meanwhile wakes us again. */
	pthread_mutex_lock(&watcher->mu);
	for (struct fd_watch *w = watcher->watches; w != NULL; w = w->next) {
		w->dispatch = w->ready;
		w->ready = false;
	}
	pthread_mutex_unlock(&watcher->mu);

	/* Callbacks may watch or unwatch anything, so look the next one up from the head. */
	for (;;) {
		struct fd_watch *w = watcher->watches;
		while (w != NULL && !w->dispatch)
			w = w->next;
		if (w == NULL)
			break;
		w->dispatch = false;
		uint64_t id = w->id;
		w->fn(w->ctx, w->fd);
		w = find_watch(watcher, id);
		if (w != NULL) {
			struct epoll_event ev = { .events = EPOLLIN | EPOLLONESHOT, .data.u64 = id };
			if (epoll_ctl(watcher->epoll_fd, EPOLL_CTL_MOD, w->fd, &ev) < 0)
				vg_warn("grpc loop: cannot re-arm the watch of fd %d: %m", w->fd);
		}
	}
}

void fd_watcher_free(struct vg_grpc_fd_watcher *watcher)
{
	if (watcher == NULL)
		return;
	if (watcher->thread_started) {
		uint64_t one = 1;
		if (write(watcher->exit_fd, &one, sizeof(one)) != sizeof(one))
			vg_warn("grpc loop: cannot tell the fd watcher to exit: %m");
		pthread_join(watcher->thread, NULL);
	}
	while (watcher->watches != NULL) {
		struct fd_watch *w = watcher->watches;
		watcher->watches = w->next;
		free(w);
	}
	if (watcher->exit_fd >= 0)
		close(watcher->exit_fd);
	if (watcher->epoll_fd >= 0)
		close(watcher->epoll_fd);
	pthread_mutex_destroy(&watcher->mu);
	free(watcher);
}
