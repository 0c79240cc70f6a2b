/* Loop timers: grpc core has no alarms, so the earliest deadline of this sorted list becomes the
 * deadline of grpc_completion_queue_next. A daemon has a handful of timers; a list is enough. */
#include <stdlib.h>

#include "lib/grpc/grpc-priv.h"
#include "lib/log.h"

struct vg_grpc_timer {
	struct vg_grpc_timer *next;
	uint64_t id;
	int64_t deadline_ns; /* gpr's monotonic clock */
	void (*fn)(void *ctx);
	void *ctx;
};

uint64_t vg_grpc_loop_add_timer(struct vg_grpc_loop *loop, int64_t delay_ms,
				void (*fn)(void *ctx), void *ctx)
{
	struct vg_grpc_timer *timer = calloc(1, sizeof(*timer));
	if (timer == NULL) {
		vg_err("grpc loop: out of memory for a timer");
		return 0;
	}
	if (delay_ms < 0)
		delay_ms = 0;
	/* A year is "never" for a daemon's timer and keeps the arithmetic far from overflow. */
	if (delay_ms > 365LL * 24 * 3600 * 1000)
		delay_ms = 365LL * 24 * 3600 * 1000;
	timer->id = ++loop->last_timer_id;
	timer->deadline_ns = loop_now_ns() + delay_ms * 1000000;
	timer->fn = fn;
	timer->ctx = ctx;

	/* After every timer with the same deadline, so equal deadlines fire in the order added. */
	struct vg_grpc_timer **link = &loop->timers;
	while (*link != NULL && (*link)->deadline_ns <= timer->deadline_ns)
		link = &(*link)->next;
	timer->next = *link;
	*link = timer;
	return timer->id;
}

void vg_grpc_loop_cancel_timer(struct vg_grpc_loop *loop, uint64_t id)
{
	for (struct vg_grpc_timer **link = &loop->timers; *link != NULL; link = &(*link)->next) {
		if ((*link)->id == id) {
			struct vg_grpc_timer *timer = *link;
			*link = timer->next;
			free(timer);
			return;
		}
	}
}

gpr_timespec timers_next_deadline(struct vg_grpc_loop *loop)
{
	if (loop->timers == NULL)
		return gpr_inf_future(GPR_CLOCK_MONOTONIC);
	int64_t ns = loop->timers->deadline_ns;
	gpr_timespec deadline = {
		.tv_sec = ns / 1000000000,
		.tv_nsec = (int32_t)(ns % 1000000000),
		.clock_type = GPR_CLOCK_MONOTONIC,
	};
	return deadline;
}

void timers_run_expired(struct vg_grpc_loop *loop)
{
	int64_t now = loop_now_ns();
	/* Timers added by a callback wait for the next pass, so one re-adding itself with delay 0
	 * cannot starve the completion queue. */
	uint64_t newest = loop->last_timer_id;
	while (loop->timers != NULL && loop->timers->deadline_ns <= now &&
	       loop->timers->id <= newest) {
		struct vg_grpc_timer *timer = loop->timers;
		loop->timers = timer->next;
		void (*fn)(void *) = timer->fn;
		void *ctx = timer->ctx;
		free(timer); /* first, so the callback may cancel or add timers freely */
		fn(ctx);
	}
}

void timers_free_all(struct vg_grpc_loop *loop)
{
	while (loop->timers != NULL) {
		struct vg_grpc_timer *timer = loop->timers;
		loop->timers = timer->next;
		free(timer);
	}
}
