/*
 * Outgoing calls: asynchronous unary calls from the loop (kubelet Register), and blocking
 * calls with their own completion queue for short-lived clients. Both open a fresh channel to
 * a unix socket; a restarted peer (kubelet wipes and recreates its socket) is then always
 * dialled anew instead of through a channel stuck in reconnect backoff.
 */
#include <errno.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/error.h"
#include "lib/grpc/grpc-priv.h"
#include "lib/log.h"

/* The buffers of one unary exchange: the six-op batch of the design. */
struct unary_exchange {
	grpc_byte_buffer *request;
	grpc_byte_buffer *response;
	grpc_metadata_array initial_metadata;
	grpc_metadata_array trailing_metadata;
	grpc_status_code status;
	grpc_slice details;
	const char *error_string;
};

struct vg_grpc_client_call {
	struct vg_grpc_tag tag;
	struct vg_grpc_client_call *next, *prev; /* in loop->client_calls */
	struct vg_grpc_loop *loop;
	grpc_channel *channel;
	grpc_call *call;
	char *method;
	struct unary_exchange exchange;
	void (*done)(void *ctx, struct vg_grpc_reply *reply);
	void *ctx;
};

struct vg_grpc_client {
	grpc_completion_queue *cq;
	grpc_channel *channel;
	char *socket_path;
};

static void op_init(grpc_op *op, grpc_op_type type)
{
	memset(op, 0, sizeof(*op));
	op->op = type;
}

static grpc_channel *channel_open(const char *socket_path)
{
	char *target = NULL;
	if (asprintf(&target, "unix:%s", socket_path) < 0)
		return NULL;
	grpc_channel_credentials *creds = grpc_insecure_credentials_create();
	grpc_channel *channel = grpc_channel_create(target, creds, vg_grpc_client_args());
	grpc_channel_credentials_release(creds);
	free(target);
	return channel;
}

static grpc_call *call_create(grpc_channel *channel, grpc_completion_queue *cq,
			      const char *method, int timeout_ms)
{
	/* The method slice only has to outlive grpc_channel_create_call itself. */
	grpc_slice method_slice = grpc_slice_from_copied_string(method);
	grpc_call *call = grpc_channel_create_call(channel, NULL, GRPC_PROPAGATE_DEFAULTS, cq,
						   method_slice, NULL,
						   loop_deadline_from_ms(timeout_ms), NULL);
	grpc_slice_unref(method_slice);
	return call;
}

static void exchange_init(struct unary_exchange *ex, const uint8_t *request, size_t len)
{
	memset(ex, 0, sizeof(*ex));
	ex->request = vg_grpc_buffer_from_bytes(request, len);
	grpc_metadata_array_init(&ex->initial_metadata);
	grpc_metadata_array_init(&ex->trailing_metadata);
	ex->details = grpc_empty_slice();
}

static grpc_call_error exchange_start(struct unary_exchange *ex, grpc_call *call, void *tag,
				      bool wait_for_ready)
{
	grpc_op ops[6];
	op_init(&ops[0], GRPC_OP_SEND_INITIAL_METADATA);
	if (wait_for_ready)
		ops[0].flags = GRPC_INITIAL_METADATA_WAIT_FOR_READY;
	op_init(&ops[1], GRPC_OP_SEND_MESSAGE);
	ops[1].data.send_message.send_message = ex->request;
	op_init(&ops[2], GRPC_OP_SEND_CLOSE_FROM_CLIENT);
	op_init(&ops[3], GRPC_OP_RECV_INITIAL_METADATA);
	ops[3].data.recv_initial_metadata.recv_initial_metadata = &ex->initial_metadata;
	op_init(&ops[4], GRPC_OP_RECV_MESSAGE);
	ops[4].data.recv_message.recv_message = &ex->response;
	op_init(&ops[5], GRPC_OP_RECV_STATUS_ON_CLIENT);
	ops[5].data.recv_status_on_client.trailing_metadata = &ex->trailing_metadata;
	ops[5].data.recv_status_on_client.status = &ex->status;
	ops[5].data.recv_status_on_client.status_details = &ex->details;
	ops[5].data.recv_status_on_client.error_string = &ex->error_string;
	return grpc_call_start_batch(call, ops, 6, tag, NULL);
}

/* Status and details into a reply; error_string is grpc's debug blob, logged but not shown. */
static void status_to_reply(const char *method, grpc_status_code status, grpc_slice details,
			    const char **error_string, struct vg_grpc_reply *reply)
{
	reply->code = (enum vg_grpc_code)status;
	reply->details = vg_grpc_slice_to_string(details);
	if (*error_string != NULL) {
		if (status != GRPC_STATUS_OK)
			vg_debug("grpc call %s: %s", method, *error_string);
		gpr_free((void *)*error_string);
		*error_string = NULL;
	}
}

static void exchange_to_reply(struct unary_exchange *ex, const char *method,
			      struct vg_grpc_reply *reply)
{
	memset(reply, 0, sizeof(*reply));
	status_to_reply(method, ex->status, ex->details, &ex->error_string, reply);
	if (reply->code != VG_GRPC_OK)
		return;
	int rc = ex->response ? vg_grpc_buffer_to_bytes(ex->response, &reply->message,
							&reply->message_len)
			      : -EBADMSG;
	if (rc < 0) {
		free(reply->details);
		reply->code = VG_GRPC_INTERNAL;
		reply->details = strdup(rc == -EBADMSG ? "the server answered OK without a message"
						       : "cannot read the server's message");
	}
}

static void exchange_destroy(struct unary_exchange *ex)
{
	if (ex->request != NULL)
		grpc_byte_buffer_destroy(ex->request);
	if (ex->response != NULL)
		grpc_byte_buffer_destroy(ex->response);
	grpc_metadata_array_destroy(&ex->initial_metadata);
	grpc_metadata_array_destroy(&ex->trailing_metadata);
	grpc_slice_unref(ex->details);
	if (ex->error_string != NULL)
		gpr_free((void *)ex->error_string);
}

/* ---- calls from the loop ---- */

static void client_call_free(struct vg_grpc_client_call *c)
{
	exchange_destroy(&c->exchange);
	if (c->call != NULL)
		grpc_call_unref(c->call);
	if (c->channel != NULL)
		grpc_channel_destroy(c->channel);
	free(c->method);
	free(c);
}

static void on_client_call_done(struct vg_grpc_tag *tag, bool ok)
{
	(void)ok; /* a client batch always completes with a status, even when it failed */
	struct vg_grpc_client_call *c = vg_container_of(tag, struct vg_grpc_client_call, tag);
	struct vg_grpc_loop *loop = c->loop;
	if (c->prev != NULL)
		c->prev->next = c->next;
	else
		loop->client_calls = c->next;
	if (c->next != NULL)
		c->next->prev = c->prev;
	loop->n_client_calls--;

	struct vg_grpc_reply reply;
	exchange_to_reply(&c->exchange, c->method, &reply);
	void (*done)(void *, struct vg_grpc_reply *) = c->done;
	void *ctx = c->ctx;
	client_call_free(c);
	if (done != NULL)
		done(ctx, &reply);
	vg_grpc_reply_clear(&reply); /* in case done kept nothing and cleared nothing */
}

int vg_grpc_loop_call(struct vg_grpc_loop *loop, const char *socket_path, const char *method,
		      const uint8_t *request, size_t request_len, int timeout_ms,
		      bool wait_for_ready,
		      void (*done)(void *ctx, struct vg_grpc_reply *reply), void *ctx,
		      struct vg_error **err)
{
	if (loop->phase >= LOOP_CLIENTS_DOWN)
		return vg_error_set(err, ESHUTDOWN, "the grpc loop is shutting down");
	struct vg_grpc_client_call *c = calloc(1, sizeof(*c));
	if (c == NULL)
		return vg_error_set(err, ENOMEM, "out of memory");
	c->tag.fn = on_client_call_done;
	c->loop = loop;
	c->done = done;
	c->ctx = ctx;
	exchange_init(&c->exchange, request, request_len);
	c->method = strdup(method);
	c->channel = channel_open(socket_path);
	if (c->method == NULL || c->channel == NULL) {
		client_call_free(c);
		return vg_error_set(err, ENOMEM, "cannot open a channel to %s", socket_path);
	}
	c->call = call_create(c->channel, loop->cq, method, timeout_ms);
	grpc_call_error rc = c->call ? exchange_start(&c->exchange, c->call, &c->tag,
						      wait_for_ready)
				     : GRPC_CALL_ERROR;
	if (rc != GRPC_CALL_OK) {
		client_call_free(c);
		return vg_error_set(err, EIO, "cannot start call %s on %s: %s", method, socket_path,
				    grpc_call_error_to_string(rc));
	}
	c->next = loop->client_calls;
	if (loop->client_calls != NULL)
		loop->client_calls->prev = c;
	loop->client_calls = c;
	loop->n_client_calls++;
	return 0;
}

void client_calls_cancel_all(struct vg_grpc_loop *loop)
{
	for (struct vg_grpc_client_call *c = loop->client_calls; c != NULL; c = c->next)
		grpc_call_cancel(c->call, NULL);
}

/* ---- blocking clients ---- */

int vg_grpc_client_new(const char *socket_path, struct vg_grpc_client **out,
		       struct vg_error **err)
{
	struct vg_grpc_client *client = calloc(1, sizeof(*client));
	if (client == NULL)
		return vg_error_set(err, ENOMEM, "out of memory");
	client->socket_path = strdup(socket_path);
	vg_grpc_global_init();
	client->cq = grpc_completion_queue_create_for_next(NULL);
	client->channel = channel_open(socket_path);
	if (client->socket_path == NULL || client->cq == NULL || client->channel == NULL) {
		vg_grpc_client_free(client);
		return vg_error_set(err, ENOMEM, "cannot open a channel to %s", socket_path);
	}
	*out = client;
	return 0;
}

void vg_grpc_client_free(struct vg_grpc_client *client)
{
	if (client == NULL)
		return;
	if (client->channel != NULL)
		grpc_channel_destroy(client->channel);
	if (client->cq != NULL) {
		grpc_completion_queue_shutdown(client->cq);
		while (grpc_completion_queue_next(client->cq, gpr_inf_future(GPR_CLOCK_REALTIME),
						  NULL)
			       .type != GRPC_QUEUE_SHUTDOWN) {
		}
		grpc_completion_queue_destroy(client->cq);
	}
	free(client->socket_path);
	free(client);
	grpc_shutdown(); /* paired with the init in vg_grpc_client_new */
}

/* Waits for one of our own tags; the call's deadline bounds the wait. */
static void *client_wait(struct vg_grpc_client *client)
{
	for (;;) {
		grpc_event ev = grpc_completion_queue_next(
			client->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
		if (ev.type == GRPC_OP_COMPLETE)
			return ev.tag;
	}
}

int vg_grpc_client_call(struct vg_grpc_client *client, const char *method,
			const uint8_t *request, size_t request_len, int timeout_ms,
			struct vg_grpc_reply *reply, struct vg_error **err)
{
	memset(reply, 0, sizeof(*reply));
	grpc_call *call = call_create(client->channel, client->cq, method, timeout_ms);
	if (call == NULL)
		return vg_error_set(err, EIO, "cannot create call %s", method);
	struct unary_exchange ex;
	exchange_init(&ex, request, request_len);
	int tag;
	grpc_call_error rc = exchange_start(&ex, call, &tag, false);
	if (rc == GRPC_CALL_OK) {
		client_wait(client);
		exchange_to_reply(&ex, method, reply);
	}
	exchange_destroy(&ex);
	grpc_call_unref(call);
	if (rc != GRPC_CALL_OK)
		return vg_error_set(err, EIO, "cannot start call %s on %s: %s", method,
				    client->socket_path, grpc_call_error_to_string(rc));
	return 0;
}

int vg_grpc_call_blocking(const char *socket_path, const char *method, const uint8_t *request,
			  size_t request_len, int timeout_ms, struct vg_grpc_reply *reply,
			  struct vg_error **err)
{
	memset(reply, 0, sizeof(*reply));
	struct vg_grpc_client *client = NULL;
	int rc = vg_grpc_client_new(socket_path, &client, err);
	if (rc < 0)
		return rc;
	rc = vg_grpc_client_call(client, method, request, request_len, timeout_ms, reply, err);
	vg_grpc_client_free(client);
	return rc;
}

/* One server stream: the request goes out with the first batch, the status is awaited in its
 * own batch from the start, and one RECV_MESSAGE is in flight at a time. */
struct stream_read {
	grpc_call *call;
	grpc_byte_buffer *request;
	grpc_byte_buffer *message;
	grpc_metadata_array initial_metadata;
	grpc_metadata_array trailing_metadata;
	grpc_status_code status;
	grpc_slice details;
	const char *error_string;
	int send_tag, recv_tag, status_tag; /* only their addresses matter */
	int in_flight;
	bool stopping;
};

static bool stream_read_start_recv(struct stream_read *s)
{
	grpc_op op;
	op_init(&op, GRPC_OP_RECV_MESSAGE);
	op.data.recv_message.recv_message = &s->message;
	if (grpc_call_start_batch(s->call, &op, 1, &s->recv_tag, NULL) != GRPC_CALL_OK)
		return false;
	s->in_flight++;
	return true;
}

static grpc_call_error stream_read_start(struct stream_read *s)
{
	grpc_op ops[4];
	op_init(&ops[0], GRPC_OP_SEND_INITIAL_METADATA);
	op_init(&ops[1], GRPC_OP_SEND_MESSAGE);
	ops[1].data.send_message.send_message = s->request;
	op_init(&ops[2], GRPC_OP_SEND_CLOSE_FROM_CLIENT);
	op_init(&ops[3], GRPC_OP_RECV_INITIAL_METADATA);
	ops[3].data.recv_initial_metadata.recv_initial_metadata = &s->initial_metadata;
	grpc_call_error rc = grpc_call_start_batch(s->call, ops, 4, &s->send_tag, NULL);
	if (rc != GRPC_CALL_OK)
		return rc;
	s->in_flight++;
	grpc_op status;
	op_init(&status, GRPC_OP_RECV_STATUS_ON_CLIENT);
	status.data.recv_status_on_client.trailing_metadata = &s->trailing_metadata;
	status.data.recv_status_on_client.status = &s->status;
	status.data.recv_status_on_client.status_details = &s->details;
	status.data.recv_status_on_client.error_string = &s->error_string;
	rc = grpc_call_start_batch(s->call, &status, 1, &s->status_tag, NULL);
	if (rc != GRPC_CALL_OK) {
		grpc_call_cancel(s->call, NULL);
		return rc;
	}
	s->in_flight++;
	if (!stream_read_start_recv(s))
		grpc_call_cancel(s->call, NULL);
	return GRPC_CALL_OK;
}

/* A received message goes to on_message; returns false when reading should stop. */
static bool stream_read_deliver(struct stream_read *s,
				bool (*on_message)(void *, const uint8_t *, size_t), void *ctx,
				struct vg_error **err)
{
	uint8_t *data = NULL;
	size_t len = 0;
	int rc = vg_grpc_buffer_to_bytes(s->message, &data, &len);
	grpc_byte_buffer_destroy(s->message);
	s->message = NULL;
	if (rc < 0) {
		vg_error_set(err, -rc, "cannot read a stream message");
		return false;
	}
	bool more = on_message(ctx, data, len);
	free(data);
	return more;
}

int vg_grpc_client_stream(struct vg_grpc_client *client, const char *method,
			  const uint8_t *request, size_t request_len, int timeout_ms,
			  bool (*on_message)(void *ctx, const uint8_t *message, size_t len),
			  void *ctx, struct vg_grpc_reply *final_status, struct vg_error **err)
{
	struct vg_grpc_reply ignored;
	if (final_status == NULL)
		final_status = &ignored;
	memset(final_status, 0, sizeof(*final_status));
	struct stream_read s;
	memset(&s, 0, sizeof(s));
	s.call = call_create(client->channel, client->cq, method, timeout_ms);
	if (s.call == NULL)
		return vg_error_set(err, EIO, "cannot create call %s", method);
	s.request = vg_grpc_buffer_from_bytes(request, request_len);
	grpc_metadata_array_init(&s.initial_metadata);
	grpc_metadata_array_init(&s.trailing_metadata);
	s.details = grpc_empty_slice();
	struct vg_error *local_err = NULL;

	grpc_call_error rc = stream_read_start(&s);
	while (s.in_flight > 0) {
		void *tag = client_wait(client);
		s.in_flight--;
		if (tag != &s.recv_tag || s.message == NULL)
			continue; /* the send or status batch, or the end of the stream */
		if (!s.stopping && stream_read_deliver(&s, on_message, ctx, &local_err) &&
		    stream_read_start_recv(&s))
			continue;
		if (s.message != NULL) {
			grpc_byte_buffer_destroy(s.message);
			s.message = NULL;
		}
		if (!s.stopping) { /* the caller has seen enough: end the call from our side */
			s.stopping = true;
			grpc_call_cancel(s.call, NULL);
		}
	}
	if (rc == GRPC_CALL_OK)
		status_to_reply(method, s.status, s.details, &s.error_string, final_status);
	grpc_byte_buffer_destroy(s.request);
	grpc_metadata_array_destroy(&s.initial_metadata);
	grpc_metadata_array_destroy(&s.trailing_metadata);
	grpc_slice_unref(s.details);
	if (s.error_string != NULL)
		gpr_free((void *)s.error_string);
	grpc_call_unref(s.call);
	if (final_status == &ignored)
		vg_grpc_reply_clear(&ignored);
	if (rc != GRPC_CALL_OK) {
		vg_error_free(local_err);
		return vg_error_set(err, EIO, "cannot start call %s on %s: %s", method,
				    client->socket_path, grpc_call_error_to_string(rc));
	}
	if (local_err != NULL) {
		int code = local_err->code;
		vg_error_keep_first(err, local_err);
		return -code;
	}
	return 0;
}

int vg_grpc_stream_blocking(const char *socket_path, const char *method, const uint8_t *request,
			    size_t request_len, int timeout_ms,
			    bool (*on_message)(void *ctx, const uint8_t *message, size_t len),
			    void *ctx, struct vg_grpc_reply *final_status, struct vg_error **err)
{
	if (final_status != NULL)
		memset(final_status, 0, sizeof(*final_status));
	struct vg_grpc_client *client = NULL;
	int rc = vg_grpc_client_new(socket_path, &client, err);
	if (rc < 0)
		return rc;
	rc = vg_grpc_client_stream(client, method, request, request_len, timeout_ms, on_message,
				   ctx, final_status, err);
	vg_grpc_client_free(client);
	return rc;
}
