/*
 * Incoming calls. Each posts RECV_CLOSE_ON_SERVER as soon as it starts: that batch completes
 * when the call is over (our status went out, or the client left or its deadline passed), which
 * is how deferred replies and streams learn that nobody is listening any more.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/error.h"
#include "lib/grpc/server-priv.h"
#include "lib/log.h"

struct vg_grpc_call {
	struct server_call base;
	struct server_method *method;
	struct vg_grpc_tag send_tag;
	grpc_byte_buffer *reply; /* owned until its batch came back */
};

struct vg_grpc_stream {
	struct server_call base;
	struct server_method *method;
	struct vg_grpc_tag send_tag;
	grpc_byte_buffer *in_flight; /* the message of the send batch in flight */
	grpc_byte_buffer *pending;   /* the newest unsent snapshot */
	bool sending;
	bool initial_metadata_sent;
	bool finishing; /* finish was asked for: no more sends */
	bool status_sent;
	enum vg_grpc_code finish_code;
	char *finish_message;
	void *user;
};

static void on_call_closed(struct vg_grpc_tag *tag, bool ok);

static void op_init(grpc_op *op, grpc_op_type type)
{
	memset(op, 0, sizeof(*op));
	op->op = type;
}

/* The close batch that stays in flight until the call is over. */
static void start_close_batch(struct server_call *call)
{
	call->close_tag.fn = on_call_closed;
	grpc_op op;
	op_init(&op, GRPC_OP_RECV_CLOSE_ON_SERVER);
	op.data.recv_close_on_server.cancelled = &call->cancelled;
	grpc_call_error rc = grpc_call_start_batch(call->call, &op, 1, &call->close_tag, NULL);
	if (rc != GRPC_CALL_OK) {
		vg_warn("grpc server: cannot watch a call for its end: %s",
			grpc_call_error_to_string(rc));
		call->closed = true;
		call->cancelled = 1;
		grpc_call_cancel(call->call, NULL);
		return;
	}
	call->batches++;
}

/* Sends a status (and the given message, if any); details need to live only through
 * grpc_call_start_batch. Returns false when the batch could not start. A status must go with
 * the initial metadata when none went out yet: grpc 1.51 core never sends a status alone, the
 * client waits until its deadline. */
static bool start_send_batch(struct server_call *call, struct vg_grpc_tag *tag,
			     bool initial_metadata, grpc_byte_buffer *message, bool with_status,
			     enum vg_grpc_code code, const char *details)
{
	grpc_op ops[3];
	size_t n = 0;
	if (initial_metadata)
		op_init(&ops[n++], GRPC_OP_SEND_INITIAL_METADATA);
	if (message != NULL) {
		op_init(&ops[n], GRPC_OP_SEND_MESSAGE);
		ops[n++].data.send_message.send_message = message;
	}
	grpc_slice details_slice = grpc_empty_slice();
	if (with_status) {
		if (details != NULL && details[0] != '\0')
			details_slice = grpc_slice_from_copied_string(details);
		op_init(&ops[n], GRPC_OP_SEND_STATUS_FROM_SERVER);
		ops[n].data.send_status_from_server.status = (grpc_status_code)code;
		ops[n++].data.send_status_from_server.status_details = &details_slice;
	}
	grpc_call_error rc = grpc_call_start_batch(call->call, ops, n, tag, NULL);
	grpc_slice_unref(details_slice);
	if (rc != GRPC_CALL_OK) {
		vg_warn("grpc server: cannot send on a call: %s", grpc_call_error_to_string(rc));
		return false;
	}
	call->batches++;
	return true;
}

/* ---- unary ---- */

static void on_unary_sent(struct vg_grpc_tag *tag, bool ok)
{
	struct vg_grpc_call *call = vg_container_of(tag, struct vg_grpc_call, send_tag);
	if (!ok)
		vg_debug("grpc server: the reply to %s did not go out (client gone)",
			 call->method->path);
	if (call->reply != NULL) /* a failure status went without a message */
		grpc_byte_buffer_destroy(call->reply);
	call->reply = NULL;
	call->base.batches--;
	server_call_maybe_release(&call->base);
}

/* The one answer: a message with OK, or a status without one. */
static void unary_answer(struct vg_grpc_call *call, grpc_byte_buffer *reply,
			 enum vg_grpc_code code, const char *message)
{
	if (!call->base.user_holds) {
		vg_err("grpc server: %s answered twice; the second answer is dropped",
		       call->method->path);
		if (reply != NULL)
			grpc_byte_buffer_destroy(reply);
		return;
	}
	call->base.user_holds = false;
	if (call->base.call == NULL || call->base.closed) {
		vg_debug("grpc server: %s was cancelled by its client; the answer is dropped",
			 call->method->path);
		if (reply != NULL)
			grpc_byte_buffer_destroy(reply);
	} else {
		call->reply = reply;
		call->send_tag.fn = on_unary_sent;
		if (!start_send_batch(&call->base, &call->send_tag, true, reply, true, code,
				      message)) {
			if (reply != NULL)
				grpc_byte_buffer_destroy(reply);
			call->reply = NULL;
			grpc_call_cancel(call->base.call, NULL);
		}
	}
	server_call_maybe_release(&call->base);
}

void vg_grpc_call_reply(struct vg_grpc_call *call, const uint8_t *response, size_t len)
{
	unary_answer(call, vg_grpc_buffer_from_bytes(response, len), VG_GRPC_OK, NULL);
}

void vg_grpc_call_fail(struct vg_grpc_call *call, enum vg_grpc_code code, const char *message)
{
	if (code == VG_GRPC_OK) /* a failure without a message would read as success */
		code = VG_GRPC_UNKNOWN;
	unary_answer(call, NULL, code, message);
}

void vg_grpc_call_fail_error(struct vg_grpc_call *call, const struct vg_error *err)
{
	if (err == NULL) {
		vg_grpc_call_fail(call, VG_GRPC_INTERNAL, "unknown error");
		return;
	}
	vg_grpc_call_fail(call, vg_grpc_code_from_errno(err->code),
			  err->msg ? err->msg : "unknown error");
}

bool vg_grpc_call_cancelled(const struct vg_grpc_call *call)
{
	if (call->base.cancelled || call->base.closed || call->base.call == NULL)
		return true;
	gpr_timespec deadline = call->base.deadline;
	if (deadline.clock_type == GPR_TIMESPAN)
		return false;
	return gpr_time_cmp(gpr_now(deadline.clock_type), deadline) >= 0;
}

/* The request is handed over as one contiguous slice; NULL payload means no message. */
static bool payload_to_slice(grpc_byte_buffer *payload, grpc_slice *out)
{
	if (payload == NULL)
		return false;
	bool ok = vg_grpc_buffer_to_slice(payload, out);
	grpc_byte_buffer_destroy(payload);
	return ok;
}

void unary_call_start(struct vg_grpc_server *server, struct server_method *method,
		      grpc_call *grpc_call, gpr_timespec deadline, grpc_byte_buffer *payload)
{
	struct vg_grpc_call *call = calloc(1, sizeof(*call));
	if (call == NULL) {
		vg_err("grpc server: out of memory for a call to %s", method->path);
		grpc_call_cancel_with_status(grpc_call, GRPC_STATUS_RESOURCE_EXHAUSTED,
					     "out of memory", NULL);
		grpc_call_unref(grpc_call);
		if (payload != NULL)
			grpc_byte_buffer_destroy(payload);
		return;
	}
	server_call_link(server, &call->base, CALL_UNARY, grpc_call, deadline);
	call->method = method;
	start_close_batch(&call->base);
	if (call->base.closed) { /* the call is already dead: the handler never sees it */
		if (payload != NULL)
			grpc_byte_buffer_destroy(payload);
		server_call_maybe_release(&call->base);
		return;
	}
	call->base.user_holds = true;
	grpc_slice request;
	if (!payload_to_slice(payload, &request)) {
		vg_grpc_call_fail(call, VG_GRPC_INVALID_ARGUMENT, "the request carried no message");
		return;
	}
	/* The request bytes live only through the handler; a deferred answer unpacks first. */
	method->unary(method->ctx, call, GRPC_SLICE_START_PTR(request), GRPC_SLICE_LENGTH(request));
	grpc_slice_unref(request);
}

/* ---- server streams ---- */

static void stream_flush(struct vg_grpc_stream *stream);

static void on_stream_sent(struct vg_grpc_tag *tag, bool ok)
{
	struct vg_grpc_stream *stream = vg_container_of(tag, struct vg_grpc_stream, send_tag);
	if (stream->in_flight != NULL) {
		grpc_byte_buffer_destroy(stream->in_flight);
		stream->in_flight = NULL;
	}
	stream->sending = false;
	stream->base.batches--;
	if (ok) {
		stream_flush(stream);
	} else if (stream->pending != NULL) { /* the client is gone; its close comes next */
		grpc_byte_buffer_destroy(stream->pending);
		stream->pending = NULL;
	}
	server_call_maybe_release(&stream->base);
}

/* Starts the next send: the pending snapshot, the status, or both in one batch. */
static void stream_flush(struct vg_grpc_stream *stream)
{
	if (stream->sending)
		return;
	bool with_status = stream->finishing && !stream->status_sent;
	if (stream->pending == NULL && !with_status)
		return;
	if (stream->base.call == NULL || stream->base.closed) {
		if (stream->pending != NULL)
			grpc_byte_buffer_destroy(stream->pending);
		stream->pending = NULL;
		return;
	}
	grpc_byte_buffer *message = stream->pending;
	bool initial_metadata = !stream->initial_metadata_sent;
	stream->send_tag.fn = on_stream_sent;
	if (!start_send_batch(&stream->base, &stream->send_tag, initial_metadata, message,
			      with_status, stream->finish_code, stream->finish_message)) {
		grpc_call_cancel(stream->base.call, NULL);
		return; /* pending is dropped by the close */
	}
	stream->pending = NULL;
	stream->in_flight = message;
	stream->sending = true;
	if (initial_metadata)
		stream->initial_metadata_sent = true;
	if (with_status)
		stream->status_sent = true;
}

int vg_grpc_stream_send(struct vg_grpc_stream *stream, const uint8_t *message, size_t len)
{
	if (stream->finishing || stream->base.closed || stream->base.call == NULL)
		return -EPIPE;
	/* Streams carry snapshots: an unsent older one is simply replaced. */
	if (stream->pending != NULL)
		grpc_byte_buffer_destroy(stream->pending);
	stream->pending = vg_grpc_buffer_from_bytes(message, len);
	stream_flush(stream);
	return 0;
}

void vg_grpc_stream_finish(struct vg_grpc_stream *stream, enum vg_grpc_code code,
			   const char *message)
{
	if (stream->finishing || stream->base.closed)
		return;
	stream->finishing = true;
	stream->finish_code = code;
	stream->finish_message = message ? strdup(message) : NULL;
	stream_flush(stream);
}

void *vg_grpc_stream_get_user(struct vg_grpc_stream *stream)
{
	return stream->user;
}

void vg_grpc_stream_set_user(struct vg_grpc_stream *stream, void *user)
{
	stream->user = user;
}

void stream_call_start(struct vg_grpc_server *server, struct server_method *method,
		       grpc_call *grpc_call, gpr_timespec deadline, grpc_byte_buffer *payload)
{
	struct vg_grpc_stream *stream = calloc(1, sizeof(*stream));
	if (stream == NULL) {
		vg_err("grpc server: out of memory for a stream of %s", method->path);
		grpc_call_cancel_with_status(grpc_call, GRPC_STATUS_RESOURCE_EXHAUSTED,
					     "out of memory", NULL);
		grpc_call_unref(grpc_call);
		if (payload != NULL)
			grpc_byte_buffer_destroy(payload);
		return;
	}
	server_call_link(server, &stream->base, CALL_STREAM, grpc_call, deadline);
	stream->method = method;
	start_close_batch(&stream->base);
	if (stream->base.closed) {
		if (payload != NULL)
			grpc_byte_buffer_destroy(payload);
		server_call_maybe_release(&stream->base);
		return;
	}
	grpc_slice request;
	if (!payload_to_slice(payload, &request)) {
		/* Never shown to the user, so no closed callback either. */
		vg_grpc_stream_finish(stream, VG_GRPC_INVALID_ARGUMENT,
				      "the request carried no message");
		server_call_maybe_release(&stream->base);
		return;
	}
	stream->base.user_holds = true;
	method->open(method->ctx, stream, GRPC_SLICE_START_PTR(request),
		     GRPC_SLICE_LENGTH(request));
	grpc_slice_unref(request);
	/* A stream that slipped in while the server began shutting down ends at once. */
	if (server->shutting_down)
		vg_grpc_stream_finish(stream, VG_GRPC_UNAVAILABLE, "server shutting down");
}

/* ---- unknown methods ---- */

void unimplemented_call_start(struct vg_grpc_server *server, grpc_call *grpc_call,
			      grpc_slice method)
{
	struct server_call *call = calloc(1, sizeof(*call));
	if (call == NULL) {
		grpc_call_cancel_with_status(grpc_call, GRPC_STATUS_UNIMPLEMENTED,
					     "unknown method", NULL);
		grpc_call_unref(grpc_call);
		return;
	}
	server_call_link(server, call, CALL_UNIMPLEMENTED, grpc_call,
			 gpr_inf_future(GPR_CLOCK_REALTIME));
	char details[256];
	snprintf(details, sizeof(details), "method %.*s is not served on this socket",
		 (int)(GRPC_SLICE_LENGTH(method) > 200 ? 200 : GRPC_SLICE_LENGTH(method)),
		 (const char *)GRPC_SLICE_START_PTR(method));
	vg_debug("grpc server %s: %s", server->socket_path, details);
	/* One batch: the status goes out and the close comes back with it. */
	grpc_op ops[3];
	op_init(&ops[0], GRPC_OP_RECV_CLOSE_ON_SERVER);
	ops[0].data.recv_close_on_server.cancelled = &call->cancelled;
	op_init(&ops[1], GRPC_OP_SEND_INITIAL_METADATA);
	grpc_slice details_slice = grpc_slice_from_copied_string(details);
	op_init(&ops[2], GRPC_OP_SEND_STATUS_FROM_SERVER);
	ops[2].data.send_status_from_server.status = GRPC_STATUS_UNIMPLEMENTED;
	ops[2].data.send_status_from_server.status_details = &details_slice;
	call->close_tag.fn = on_call_closed;
	grpc_call_error rc = grpc_call_start_batch(grpc_call, ops, 3, &call->close_tag, NULL);
	grpc_slice_unref(details_slice);
	if (rc == GRPC_CALL_OK)
		call->batches++;
	else
		grpc_call_cancel(grpc_call, NULL);
	server_call_maybe_release(call);
}

/* ---- common ---- */

static void on_call_closed(struct vg_grpc_tag *tag, bool ok)
{
	struct server_call *call = vg_container_of(tag, struct server_call, close_tag);
	if (!ok)
		call->cancelled = 1;
	call->closed = true;
	call->batches--;
	if (call->kind == CALL_STREAM && call->user_holds) {
		struct vg_grpc_stream *stream = (struct vg_grpc_stream *)call;
		if (stream->pending != NULL) {
			grpc_byte_buffer_destroy(stream->pending);
			stream->pending = NULL;
		}
		call->user_holds = false;
		if (stream->method->closed != NULL)
			stream->method->closed(stream->method->ctx, stream);
	}
	server_call_maybe_release(call);
}

void server_call_free(struct server_call *call)
{
	if (call->kind == CALL_STREAM) {
		struct vg_grpc_stream *stream = (struct vg_grpc_stream *)call;
		if (stream->pending != NULL)
			grpc_byte_buffer_destroy(stream->pending);
		if (stream->in_flight != NULL)
			grpc_byte_buffer_destroy(stream->in_flight);
		free(stream->finish_message);
	} else if (call->kind == CALL_UNARY) {
		struct vg_grpc_call *unary = (struct vg_grpc_call *)call;
		if (unary->reply != NULL)
			grpc_byte_buffer_destroy(unary->reply);
	}
	free(call);
}
