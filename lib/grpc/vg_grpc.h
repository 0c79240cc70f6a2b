/*
 * The one place that talks to grpc core: servers on unix sockets, unary and server-streaming
 * handlers, client calls from the same loop, timers, fd watches and a cross-thread wake.
 * Everything runs on the thread that calls vg_grpc_loop_run (the "loop thread"); other threads
 * only call vg_grpc_loop_wake. Messages are opaque bytes here: callers pack and unpack them
 * with protobuf-c. See shared facts in docs/architecture.md ("The gRPC layer").
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct vg_error;

/* gRPC status codes we use (same numbers as grpc_status_code). */
enum vg_grpc_code {
	VG_GRPC_OK = 0,
	VG_GRPC_CANCELLED = 1,
	VG_GRPC_UNKNOWN = 2,
	VG_GRPC_INVALID_ARGUMENT = 3,
	VG_GRPC_DEADLINE_EXCEEDED = 4,
	VG_GRPC_NOT_FOUND = 5,
	VG_GRPC_ALREADY_EXISTS = 6,
	VG_GRPC_RESOURCE_EXHAUSTED = 8,
	VG_GRPC_FAILED_PRECONDITION = 9,
	VG_GRPC_UNIMPLEMENTED = 12,
	VG_GRPC_INTERNAL = 13,
	VG_GRPC_UNAVAILABLE = 14,
};

struct vg_grpc_loop;
struct vg_grpc_server;
struct vg_grpc_call;   /* an incoming unary call, answered exactly once */
struct vg_grpc_stream; /* an incoming server-streaming call */

/* ---- loop ---- */
/* Blocks SIGINT, SIGTERM and SIGHUP and ignores SIGPIPE before grpc_init, so grpc's threads
 * inherit the mask; the caller watches a signalfd with vg_grpc_loop_watch_fd. */
int vg_grpc_loop_new(struct vg_grpc_loop **out, struct vg_error **err);
/* Runs until vg_grpc_loop_stop; then shuts every server down in the documented order
 * (streams get UNAVAILABLE, 2 s grace, cancel_all_calls) before returning. */
int vg_grpc_loop_run(struct vg_grpc_loop *loop, struct vg_error **err);
void vg_grpc_loop_stop(struct vg_grpc_loop *loop); /* loop thread only */
/* Frees everything, drains the completion queue, grpc_shutdown. Accepts NULL. Between the
 * return of vg_grpc_loop_run and this, the loop thread may still answer calls it kept (the
 * answers are dropped: those calls were cancelled), cancel timers and unwatch fds; a call
 * never answered at all is freed here. */
void vg_grpc_loop_free(struct vg_grpc_loop *loop);

/* Thread-safe: runs fn(ctx) on the loop thread soon; coalesces repeated wakes of the same
 * handler. The handler is set once with vg_grpc_loop_set_wake_handler. */
void vg_grpc_loop_set_wake_handler(struct vg_grpc_loop *loop, void (*fn)(void *ctx), void *ctx);
void vg_grpc_loop_wake(struct vg_grpc_loop *loop);

/* Timers: fn runs on the loop thread once, at or after delay_ms. Returns an id > 0 (0 only
 * when out of memory). Timers with the same deadline fire in the order they were added. */
uint64_t vg_grpc_loop_add_timer(struct vg_grpc_loop *loop, int64_t delay_ms,
				void (*fn)(void *ctx), void *ctx);
void vg_grpc_loop_cancel_timer(struct vg_grpc_loop *loop, uint64_t id);

/* fd watches (pidfds, signalfd, inotify): fn runs on the loop thread when fd is readable,
 * level-triggered, until vg_grpc_loop_unwatch_fd. Returns an id > 0 or 0 with *err set. */
uint64_t vg_grpc_loop_watch_fd(struct vg_grpc_loop *loop, int fd, void (*fn)(void *ctx, int fd),
			       void *ctx, struct vg_error **err);
void vg_grpc_loop_unwatch_fd(struct vg_grpc_loop *loop, uint64_t id);

/* ---- servers ---- */
/* The request bytes are valid only during the callback: a handler that answers later unpacks
 * (or copies) them first. */
typedef void (*vg_grpc_unary_fn)(void *ctx, struct vg_grpc_call *call, const uint8_t *request,
				 size_t request_len);
typedef void (*vg_grpc_stream_open_fn)(void *ctx, struct vg_grpc_stream *stream,
				       const uint8_t *request, size_t request_len);
/* Called once when the client goes away or the stream was finished; the stream pointer is
 * invalid afterwards. */
typedef void (*vg_grpc_stream_closed_fn)(void *ctx, struct vg_grpc_stream *stream);

/* A server on one unix socket. The parent directory must exist and be owned by root (or by
 * our euid) and not writable by others; a lock file "<path>.lock" (flock) stops a second
 * instance from stealing a live socket (EADDRINUSE, with a message naming the holder's pid).
 * The socket gets `mode` (0600 or 0660) after bind. */
int vg_grpc_server_new(struct vg_grpc_loop *loop, const char *socket_path, mode_t mode,
		       struct vg_grpc_server **out, struct vg_error **err);
/* The same with the lock file at lock_path, for a socket in a directory that another program
 * cleans out (the kubelet deletes files in its device-plugins directory when it starts): a lock
 * deleted while held would let the next server bind before the old one has let go. */
int vg_grpc_server_new_locked_at(struct vg_grpc_loop *loop, const char *socket_path,
				 const char *lock_path, mode_t mode, struct vg_grpc_server **out,
				 struct vg_error **err);
/* method is the byte-exact path "/package.Service/Method". Register before start. */
int vg_grpc_server_add_unary(struct vg_grpc_server *server, const char *method,
			     vg_grpc_unary_fn fn, void *ctx, struct vg_error **err);
int vg_grpc_server_add_stream(struct vg_grpc_server *server, const char *method,
			      vg_grpc_stream_open_fn open, vg_grpc_stream_closed_fn closed, void *ctx,
			      struct vg_error **err);
/* Starts serving; every unregistered method is answered UNIMPLEMENTED. */
int vg_grpc_server_start(struct vg_grpc_server *server, struct vg_error **err);
/* Shuts one server down (streams get UNAVAILABLE) and removes its socket; for restarting an
 * endpoint (kubelet restarts) while the loop keeps running. The server pointer is invalid
 * afterwards; the loop frees it once its calls are over. Until then its lock is held, so a
 * new server on the same path fails with EADDRINUSE for up to the 2 s grace: retry it from a
 * timer. */
void vg_grpc_server_shutdown(struct vg_grpc_server *server);

/* Answer a unary call, now or later (a handler may keep the call and answer from a timer or
 * another event). Exactly one of these per call. */
void vg_grpc_call_reply(struct vg_grpc_call *call, const uint8_t *response, size_t len);
void vg_grpc_call_fail(struct vg_grpc_call *call, enum vg_grpc_code code, const char *message);
/* Maps an errno-bearing vg_error to a status: EINVAL->INVALID_ARGUMENT, ENOENT->NOT_FOUND,
 * EBUSY->FAILED_PRECONDITION, ENOSPC->RESOURCE_EXHAUSTED, EEXIST->ALREADY_EXISTS,
 * ETIMEDOUT->DEADLINE_EXCEEDED, others INTERNAL. */
void vg_grpc_call_fail_error(struct vg_grpc_call *call, const struct vg_error *err);
enum vg_grpc_code vg_grpc_code_from_errno(int code);
/* True once the client cancelled or its deadline passed (a deferred reply is then dropped). */
bool vg_grpc_call_cancelled(const struct vg_grpc_call *call);

/* Queue a message on a stream. Only one send is in flight; a newer message replaces an
 * unsent older one (streams carry snapshots). Returns -EPIPE once the stream is closed. */
int vg_grpc_stream_send(struct vg_grpc_stream *stream, const uint8_t *message, size_t len);
void vg_grpc_stream_finish(struct vg_grpc_stream *stream, enum vg_grpc_code code,
			   const char *message);
void *vg_grpc_stream_get_user(struct vg_grpc_stream *stream);
void vg_grpc_stream_set_user(struct vg_grpc_stream *stream, void *user);

/* ---- clients ---- */
struct vg_grpc_reply {
	enum vg_grpc_code code;
	char *details; /* owned; may be "" */
	uint8_t *message; /* owned; NULL when the call failed */
	size_t message_len;
};
void vg_grpc_reply_clear(struct vg_grpc_reply *reply);

/* An asynchronous unary call made from the loop (kubelet Register, PodResources). done runs
 * on the loop thread with the reply, which it must clear. wait_for_ready waits for the socket
 * to appear within timeout_ms instead of failing fast. */
int vg_grpc_loop_call(struct vg_grpc_loop *loop, const char *socket_path, const char *method,
		      const uint8_t *request, size_t request_len, int timeout_ms,
		      bool wait_for_ready,
		      void (*done)(void *ctx, struct vg_grpc_reply *reply), void *ctx,
		      struct vg_error **err);

/* A client connection for several blocking calls from one thread (vmgpuctl, benchmarks):
 * one channel and one completion queue, both its own. vg_grpc_call_blocking and
 * vg_grpc_stream_blocking below are new + one call + free. Calls fail fast (UNAVAILABLE) when
 * nothing listens on the socket. timeout_ms <= 0 means no deadline. */
struct vg_grpc_client;
int vg_grpc_client_new(const char *socket_path, struct vg_grpc_client **out,
		       struct vg_error **err);
int vg_grpc_client_call(struct vg_grpc_client *client, const char *method,
			const uint8_t *request, size_t request_len, int timeout_ms,
			struct vg_grpc_reply *reply, struct vg_error **err);
int vg_grpc_client_stream(struct vg_grpc_client *client, const char *method,
			  const uint8_t *request, size_t request_len, int timeout_ms,
			  bool (*on_message)(void *ctx, const uint8_t *message, size_t len),
			  void *ctx, struct vg_grpc_reply *final_status, struct vg_error **err);
void vg_grpc_client_free(struct vg_grpc_client *client); /* accepts NULL */

/* A blocking unary call with its own completion queue, for short-lived clients (vmgpuctl).
 * Returns 0 when the call completed (reply->code may still be an error status). */
int vg_grpc_call_blocking(const char *socket_path, const char *method, const uint8_t *request,
			  size_t request_len, int timeout_ms, struct vg_grpc_reply *reply,
			  struct vg_error **err);
/* A blocking server-stream read for clients: on_message runs for each message until it returns
 * false, the stream ends, or timeout_ms (-1: none) passes. When on_message stops the stream,
 * the call is cancelled from our side and final_status reads CANCELLED; final_status may be
 * NULL. */
int vg_grpc_stream_blocking(const char *socket_path, const char *method, const uint8_t *request,
			    size_t request_len, int timeout_ms,
			    bool (*on_message)(void *ctx, const uint8_t *message, size_t len),
			    void *ctx, struct vg_grpc_reply *final_status, struct vg_error **err);
