/*
 * The loop: one completion queue, one thread, and every grpc object owned by it. Other threads
 * reach it only through the wake (an empty batch on a call of a lame channel, which grpc puts
 * on the queue at once). Shutdown follows docs: servers, then outgoing calls, then the wake
 * call, then the queue itself.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "lib/error.h"
#include "lib/grpc/grpc-priv.h"
#include "lib/log.h"

static void on_wake(struct vg_grpc_tag *tag, bool ok);

int64_t loop_now_ns(void)
{
	gpr_timespec now = gpr_now(GPR_CLOCK_MONOTONIC);
	return now.tv_sec * 1000000000LL + now.tv_nsec;
}

gpr_timespec loop_deadline_from_ms(int timeout_ms)
{
	if (timeout_ms <= 0)
		return gpr_inf_future(GPR_CLOCK_REALTIME);
	return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
			    gpr_time_from_millis(timeout_ms, GPR_TIMESPAN));
}

/* grpc starts its own threads in grpc_init; they inherit the mask of the thread that calls it,
 * so the signals the daemon handles through a signalfd must be blocked first. */
static int block_daemon_signals(struct vg_error **err)
{
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGHUP);
	int rc = pthread_sigmask(SIG_BLOCK, &set, NULL);
	if (rc != 0)
		return vg_error_set_errno(err, rc, "cannot block SIGINT, SIGTERM and SIGHUP");
	struct sigaction ignore = { .sa_handler = SIG_IGN };
	sigemptyset(&ignore.sa_mask);
	if (sigaction(SIGPIPE, &ignore, NULL) < 0)
		return vg_error_set_errno(err, errno, "cannot ignore SIGPIPE");
	return 0;
}

int vg_grpc_loop_new(struct vg_grpc_loop **out, struct vg_error **err)
{
	int rc = block_daemon_signals(err);
	if (rc < 0)
		return rc;
	struct vg_grpc_loop *loop = calloc(1, sizeof(*loop));
	if (loop == NULL)
		return vg_error_set(err, ENOMEM, "out of memory for the grpc loop");
	pthread_mutex_init(&loop->wake_mu, NULL);
	atomic_init(&loop->wake_pending, false);
	atomic_init(&loop->user_wake, false);
	loop->wake_tag.fn = on_wake;
	loop->phase = LOOP_IDLE;

	vg_grpc_global_init();
	loop->grpc_initialized = true;
	loop->cq = grpc_completion_queue_create_for_next(NULL);
	loop->wake_channel =
		grpc_lame_client_channel_create(NULL, GRPC_STATUS_UNAVAILABLE, "loop wake channel");
	if (loop->cq != NULL && loop->wake_channel != NULL) {
		grpc_slice method = grpc_slice_from_static_string("/vmgpu.internal.Loop/Wake");
		loop->wake_call = grpc_channel_create_call(
			loop->wake_channel, NULL, GRPC_PROPAGATE_DEFAULTS, loop->cq, method, NULL,
			gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
	}
	if (loop->wake_call == NULL) {
		vg_grpc_loop_free(loop);
		return vg_error_set(err, EIO, "cannot create the grpc completion queue and wake call");
	}
	*out = loop;
	return 0;
}

void loop_wake_internal(struct vg_grpc_loop *loop)
{
	/* One empty batch in flight is enough: the handler clears the flag before it looks. */
	if (atomic_exchange(&loop->wake_pending, true))
		return;
	pthread_mutex_lock(&loop->wake_mu); /* start_batch needs external synchronisation */
	if (loop->wake_call != NULL) {
		grpc_call_error rc = grpc_call_start_batch(loop->wake_call, NULL, 0, &loop->wake_tag,
							   NULL);
		if (rc != GRPC_CALL_OK) {
			atomic_store(&loop->wake_pending, false);
			vg_warn("grpc loop: wake failed: %s", grpc_call_error_to_string(rc));
		}
	}
	pthread_mutex_unlock(&loop->wake_mu);
}

void vg_grpc_loop_set_wake_handler(struct vg_grpc_loop *loop, void (*fn)(void *ctx), void *ctx)
{
	loop->wake_fn = fn;
	loop->wake_ctx = ctx;
}

void vg_grpc_loop_wake(struct vg_grpc_loop *loop)
{
	atomic_store(&loop->user_wake, true);
	loop_wake_internal(loop);
}

static void on_wake(struct vg_grpc_tag *tag, bool ok)
{
	(void)ok; /* an empty batch always succeeds */
	struct vg_grpc_loop *loop = vg_container_of(tag, struct vg_grpc_loop, wake_tag);
	/* Cleared before reading anything, so a wake that races with us is never lost. */
	atomic_store(&loop->wake_pending, false);
	if (loop->phase >= LOOP_QUIESCED)
		return; /* the final drain: nothing may call back into users any more */
	fd_watcher_dispatch(loop);
	if (atomic_exchange(&loop->user_wake, false) && loop->wake_fn != NULL)
		loop->wake_fn(loop->wake_ctx);
}

static void dispatch_event(grpc_event ev)
{
	if (ev.type == GRPC_OP_COMPLETE) {
		struct vg_grpc_tag *tag = ev.tag;
		tag->fn(tag, ev.success != 0);
	}
}

void loop_iterate(struct vg_grpc_loop *loop)
{
	grpc_event ev = grpc_completion_queue_next(loop->cq, timers_next_deadline(loop), NULL);
	dispatch_event(ev);
	timers_run_expired(loop);
}

void vg_grpc_loop_stop(struct vg_grpc_loop *loop)
{
	loop->stop_requested = true;
}

/* Section 7 of the design: servers (streams get UNAVAILABLE, grace, cancel_all_calls), then
 * outgoing calls, then the wake call and its lame channel, all before the CQ is shut down. */
static void loop_shutdown(struct vg_grpc_loop *loop)
{
	if (loop->phase >= LOOP_QUIESCED)
		return;
	if (loop->phase < LOOP_STOPPING) {
		loop->phase = LOOP_STOPPING;
		servers_begin_shutdown(loop);
	}
	while (!servers_all_down(loop))
		loop_iterate(loop);
	if (loop->phase < LOOP_CLIENTS_DOWN) {
		loop->phase = LOOP_CLIENTS_DOWN;
		client_calls_cancel_all(loop);
	}
	while (loop->n_client_calls > 0)
		loop_iterate(loop);

	pthread_mutex_lock(&loop->wake_mu);
	grpc_call *wake_call = loop->wake_call;
	loop->wake_call = NULL; /* from now on wakes are no-ops */
	pthread_mutex_unlock(&loop->wake_mu);
	if (wake_call != NULL)
		grpc_call_unref(wake_call);
	if (loop->wake_channel != NULL) {
		grpc_channel_destroy(loop->wake_channel);
		loop->wake_channel = NULL;
	}
	loop->phase = LOOP_QUIESCED;
}

int vg_grpc_loop_run(struct vg_grpc_loop *loop, struct vg_error **err)
{
	if (loop->phase != LOOP_IDLE)
		return vg_error_set(err, EALREADY, "the grpc loop has already run");
	loop->phase = LOOP_RUNNING;
	while (!loop->stop_requested)
		loop_iterate(loop);
	loop_shutdown(loop);
	return 0;
}

void vg_grpc_loop_free(struct vg_grpc_loop *loop)
{
	if (loop == NULL)
		return;
	if (loop->cq != NULL) {
		/* A loop freed without having run still shuts its servers down properly. */
		loop_shutdown(loop);
		grpc_completion_queue_shutdown(loop->cq);
		for (;;) {
			grpc_event ev = grpc_completion_queue_next(
				loop->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
			if (ev.type == GRPC_QUEUE_SHUTDOWN)
				break;
			dispatch_event(ev);
		}
		grpc_completion_queue_destroy(loop->cq);
	} else if (loop->wake_channel != NULL) {
		grpc_channel_destroy(loop->wake_channel);
	}
	fd_watcher_free(loop->fd_watcher);
	timers_free_all(loop);
	servers_free_all(loop);
	pthread_mutex_destroy(&loop->wake_mu);
	bool initialized = loop->grpc_initialized;
	free(loop);
	/* Last, from a thread grpc does not own, so its clean-up runs synchronously. */
	if (initialized)
		grpc_shutdown();
}
