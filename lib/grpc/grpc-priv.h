/*
 * Internals shared by the files of the grpc glue; nothing outside lib/grpc includes this.
 * The loop thread owns every grpc object; the only cross-thread entry is loop_wake_internal.
 */
#pragma once

#include <grpc/byte_buffer.h>
#include <grpc/grpc.h>
#include <grpc/support/time.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/grpc/vg_grpc.h"

#define VG_GRPC_MAX_MESSAGE (16 * 1024 * 1024)
/* The documented shutdown grace: deferred replies get this long before calls are cancelled. */
#define VG_GRPC_SHUTDOWN_GRACE_MS 2000

#define vg_container_of(ptr, type, member) ((type *)((char *)(ptr) - offsetof(type, member)))

/* Every pointer handed to grpc as a tag is one of these, embedded in the struct it serves. */
struct vg_grpc_tag {
	void (*fn)(struct vg_grpc_tag *tag, bool ok);
};

struct vg_grpc_timer;
struct vg_grpc_fd_watcher;
struct vg_grpc_client_call;

enum vg_grpc_loop_phase {
	LOOP_IDLE,         /* created, run not called yet */
	LOOP_RUNNING,
	LOOP_STOPPING,     /* servers shutting down; timers, watches and wakes still work */
	LOOP_CLIENTS_DOWN, /* outgoing calls cancelled and drained; no new ones */
	LOOP_QUIESCED,     /* wake call gone; only the CQ drain is left */
};

struct vg_grpc_loop {
	grpc_completion_queue *cq;
	bool grpc_initialized;
	enum vg_grpc_loop_phase phase;
	bool stop_requested;

	/* Cross-thread wake: an empty batch on a call of a lame channel. */
	pthread_mutex_t wake_mu;
	grpc_channel *wake_channel;
	grpc_call *wake_call;      /* under wake_mu; NULL once torn down */
	atomic_bool wake_pending;  /* one empty batch in flight at most */
	atomic_bool user_wake;     /* vg_grpc_loop_wake was called */
	struct vg_grpc_tag wake_tag;
	void (*wake_fn)(void *ctx);
	void *wake_ctx;

	/* Timers sorted by deadline (ties in insertion order). */
	struct vg_grpc_timer *timers;
	uint64_t last_timer_id;

	struct vg_grpc_fd_watcher *fd_watcher; /* started on the first watch */

	struct vg_grpc_server *servers;
	struct vg_grpc_client_call *client_calls;
	size_t n_client_calls;
};

/* ---- loop.c ---- */
/* Any thread: makes the loop thread run loop_on_wake soon. */
void loop_wake_internal(struct vg_grpc_loop *loop);
/* Loop thread: waits for one event or the next timer and dispatches it. */
void loop_iterate(struct vg_grpc_loop *loop);
int64_t loop_now_ns(void);
gpr_timespec loop_deadline_from_ms(int timeout_ms);

/* ---- init.c ---- */
/* grpc_init with our log sink installed; paired with grpc_shutdown. */
void vg_grpc_global_init(void);
/* Channel args shared by servers and channels: the 16 MiB receive limit and so on. */
const grpc_channel_args *vg_grpc_server_args(void);
const grpc_channel_args *vg_grpc_client_args(void);
/* Copies len bytes into a new byte buffer (never NULL; grpc aborts on OOM itself). */
grpc_byte_buffer *vg_grpc_buffer_from_bytes(const uint8_t *data, size_t len);
/* The whole message as one contiguous slice, to be unreffed; false when it cannot be read. */
bool vg_grpc_buffer_to_slice(grpc_byte_buffer *buffer, grpc_slice *out);
/* A malloc'ed copy of the whole message (never NULL on success, even for 0 bytes). */
int vg_grpc_buffer_to_bytes(grpc_byte_buffer *buffer, uint8_t **data, size_t *len);
/* A malloc'ed NUL-terminated copy of a slice; NULL on OOM. */
char *vg_grpc_slice_to_string(grpc_slice slice);

/* ---- fdwatch.c ---- */
/* Loop thread, after each wake: runs the callbacks of fds the helper found readable. */
void fd_watcher_dispatch(struct vg_grpc_loop *loop);
/* Stops and joins the helper thread and frees all watches. */
void fd_watcher_free(struct vg_grpc_fd_watcher *watcher);

/* ---- timer.c ---- */
gpr_timespec timers_next_deadline(struct vg_grpc_loop *loop);
void timers_run_expired(struct vg_grpc_loop *loop);
void timers_free_all(struct vg_grpc_loop *loop);

/* ---- server.c ---- */
/* Starts the shutdown of every server; true once all of them are destroyed and no call struct
 * holds a grpc_call any more. */
void servers_begin_shutdown(struct vg_grpc_loop *loop);
bool servers_all_down(const struct vg_grpc_loop *loop);
/* After the CQ drain: frees server structs and calls a handler never answered. */
void servers_free_all(struct vg_grpc_loop *loop);

/* ---- client.c ---- */
void client_calls_cancel_all(struct vg_grpc_loop *loop);
