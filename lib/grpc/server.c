/*
 * One grpc_server per unix socket, all on the loop's completion queue. Every registered method
 * keeps two request slots armed (re-armed as each is used) and a generic slot answers every
 * other method UNIMPLEMENTED: without it, calls to unknown methods hang until their deadline.
 */
#include <errno.h>
#include <grpc/grpc_security.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "lib/cleanup.h"
#include "lib/error.h"
#include "lib/grpc/server-priv.h"
#include "lib/log.h"

#define SLOTS_PER_METHOD 2

/* A pending grpc_server_request_*call. method NULL is the generic catch-all. */
struct request_slot {
	struct vg_grpc_tag tag;
	struct vg_grpc_server *server;
	struct server_method *method;
	grpc_call *call;
	gpr_timespec deadline;
	grpc_metadata_array metadata;
	grpc_byte_buffer *payload;
	grpc_call_details details;
};

static void on_new_call(struct vg_grpc_tag *tag, bool ok);
static void on_server_shutdown(struct vg_grpc_tag *tag, bool ok);

static void server_maybe_free(struct vg_grpc_server *server)
{
	if (!server->destroyed || server->refs > 0)
		return;
	struct vg_grpc_loop *loop = server->loop;
	for (struct vg_grpc_server **link = &loop->servers; *link != NULL;
	     link = &(*link)->next) {
		if (*link == server) {
			*link = server->next;
			break;
		}
	}
	while (server->methods != NULL) {
		struct server_method *method = server->methods;
		server->methods = method->next;
		free(method->path);
		free(method);
	}
	free(server->socket_path);
	free(server->lock_path);
	free(server);
}

int vg_grpc_server_new(struct vg_grpc_loop *loop, const char *socket_path, mode_t mode,
		       struct vg_grpc_server **out, struct vg_error **err)
{
	return vg_grpc_server_new_locked_at(loop, socket_path, NULL, mode, out, err);
}

int vg_grpc_server_new_locked_at(struct vg_grpc_loop *loop, const char *socket_path,
				 const char *lock_at, mode_t mode, struct vg_grpc_server **out,
				 struct vg_error **err)
{
	if (loop->phase >= LOOP_STOPPING)
		return vg_error_set(err, ESHUTDOWN, "the grpc loop is shutting down");
	if ((mode & ~(mode_t)0777) != 0)
		return vg_error_set(err, EINVAL, "socket mode %o is not a permission mode",
				    (unsigned)mode);
	if (strlen(socket_path) >= sizeof(((struct sockaddr_un *)NULL)->sun_path))
		return vg_error_set(err, ENAMETOOLONG,
				    "socket path %s is longer than a unix socket allows (%zu bytes)",
				    socket_path, sizeof(((struct sockaddr_un *)NULL)->sun_path) - 1);
	int rc = socket_dir_check(socket_path, err);
	if (rc < 0)
		return rc;
	cleanup_free char *lock_path = NULL;
	cleanup_close int lock_fd = socket_lock(socket_path, lock_at, &lock_path, err);
	if (lock_fd < 0)
		return lock_fd;

	struct vg_grpc_server *server = calloc(1, sizeof(*server));
	char *path_copy = strdup(socket_path);
	if (server == NULL || path_copy == NULL) {
		free(server);
		free(path_copy);
		unlink(lock_path);
		return vg_error_set(err, ENOMEM, "out of memory");
	}
	server->server = grpc_server_create(vg_grpc_server_args(), NULL);
	grpc_server_register_completion_queue(server->server, loop->cq, NULL);
	server->loop = loop;
	server->socket_path = path_copy;
	server->lock_path = TAKE_PTR(lock_path);
	server->lock_fd = TAKE_FD(lock_fd);
	server->mode = mode;
	server->shutdown_tag.fn = on_server_shutdown;
	server->next = loop->servers;
	loop->servers = server;
	*out = server;
	return 0;
}

static int server_add_method(struct vg_grpc_server *server, const char *path,
			     struct server_method *template, struct vg_error **err)
{
	if (server->started || server->shutting_down)
		return vg_error_set(err, EBUSY, "cannot add %s: server on %s already started",
				    path, server->socket_path);
	if (path[0] != '/' || strchr(path + 1, '/') == NULL)
		return vg_error_set(err, EINVAL, "method %s is not of the form /package.Service/Method",
				    path);
	for (struct server_method *m = server->methods; m != NULL; m = m->next)
		if (strcmp(m->path, path) == 0)
			return vg_error_set(err, EEXIST, "method %s is already registered on %s", path,
					    server->socket_path);
	struct server_method *method = malloc(sizeof(*method));
	if (method == NULL)
		return vg_error_set(err, ENOMEM, "out of memory");
	*method = *template;
	method->path = strdup(path);
	/* The payload arrives with the new call, so a unary call needs no extra receive. */
	method->registered = grpc_server_register_method(
		server->server, path, NULL, GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0);
	if (method->path == NULL || method->registered == NULL) {
		free(method->path);
		free(method);
		return vg_error_set(err, EINVAL, "grpc refused to register method %s", path);
	}
	method->next = server->methods;
	server->methods = method;
	return 0;
}

int vg_grpc_server_add_unary(struct vg_grpc_server *server, const char *method,
			     vg_grpc_unary_fn fn, void *ctx, struct vg_error **err)
{
	struct server_method template = { .kind = METHOD_UNARY, .unary = fn, .ctx = ctx };
	return server_add_method(server, method, &template, err);
}

int vg_grpc_server_add_stream(struct vg_grpc_server *server, const char *method,
			      vg_grpc_stream_open_fn open, vg_grpc_stream_closed_fn closed, void *ctx,
			      struct vg_error **err)
{
	struct server_method template = {
		.kind = METHOD_STREAM, .open = open, .closed = closed, .ctx = ctx
	};
	return server_add_method(server, method, &template, err);
}

static void request_slot_free(struct request_slot *slot)
{
	grpc_metadata_array_destroy(&slot->metadata);
	if (slot->method == NULL)
		grpc_call_details_destroy(&slot->details);
	if (slot->payload != NULL)
		grpc_byte_buffer_destroy(slot->payload);
	free(slot);
}

static void server_arm_slot(struct vg_grpc_server *server, struct server_method *method)
{
	struct request_slot *slot = calloc(1, sizeof(*slot));
	if (slot == NULL) {
		vg_err("grpc server %s: out of memory for a request slot", server->socket_path);
		return;
	}
	slot->tag.fn = on_new_call;
	slot->server = server;
	slot->method = method;
	grpc_metadata_array_init(&slot->metadata);
	grpc_completion_queue *cq = server->loop->cq;
	grpc_call_error rc;
	if (method != NULL) {
		rc = grpc_server_request_registered_call(server->server, method->registered,
							 &slot->call, &slot->deadline,
							 &slot->metadata, &slot->payload, cq, cq,
							 &slot->tag);
	} else {
		grpc_call_details_init(&slot->details);
		rc = grpc_server_request_call(server->server, &slot->call, &slot->details,
					      &slot->metadata, cq, cq, &slot->tag);
	}
	if (rc != GRPC_CALL_OK) {
		vg_err("grpc server %s: cannot request calls for %s: %s", server->socket_path,
		       method ? method->path : "unknown methods", grpc_call_error_to_string(rc));
		request_slot_free(slot);
		return;
	}
	server->slots++;
	server->refs++;
}

static void on_new_call(struct vg_grpc_tag *tag, bool ok)
{
	struct request_slot *slot = vg_container_of(tag, struct request_slot, tag);
	struct vg_grpc_server *server = slot->server;
	server->slots--;
	if (ok) {
		if (!server->shutting_down)
			server_arm_slot(server, slot->method);
		grpc_byte_buffer *payload = TAKE_PTR(slot->payload);
		if (slot->method == NULL)
			unimplemented_call_start(server, slot->call, slot->details.method);
		else if (slot->method->kind == METHOD_UNARY)
			unary_call_start(server, slot->method, slot->call, slot->deadline, payload);
		else
			stream_call_start(server, slot->method, slot->call, slot->deadline, payload);
	}
	/* !ok: the server is shutting down and this slot was never used. */
	request_slot_free(slot);
	server->refs--;
	server_maybe_free(server);
}

void server_call_link(struct vg_grpc_server *server, struct server_call *call,
		      enum call_kind kind, grpc_call *grpc_call, gpr_timespec deadline)
{
	call->kind = kind;
	call->server = server;
	call->call = grpc_call;
	call->deadline = deadline;
	call->next = server->calls;
	if (server->calls != NULL)
		server->calls->prev = call;
	server->calls = call;
	server->refs++;
	server->grpc_calls++;
}

static void server_call_unlink_free(struct server_call *call)
{
	struct vg_grpc_server *server = call->server;
	if (call->prev != NULL)
		call->prev->next = call->next;
	else
		server->calls = call->next;
	if (call->next != NULL)
		call->next->prev = call->prev;
	server_call_free(call);
	server->refs--;
}

void server_call_maybe_release(struct server_call *call)
{
	if (call->batches > 0)
		return;
	struct vg_grpc_server *server = call->server;
	if (call->call != NULL) {
		grpc_call_unref(call->call);
		call->call = NULL;
		server->grpc_calls--;
	}
	if (!call->user_holds) {
		server_call_unlink_free(call);
		server_maybe_free(server);
	}
}

int vg_grpc_server_start(struct vg_grpc_server *server, struct vg_error **err)
{
	if (server->started)
		return vg_error_set(err, EALREADY, "server on %s already started",
				    server->socket_path);
	if (server->shutting_down)
		return vg_error_set(err, ESHUTDOWN, "server on %s is shut down", server->socket_path);
	cleanup_free char *address = NULL;
	if (asprintf(&address, "unix:%s", server->socket_path) < 0)
		return vg_error_set(err, ENOMEM, "out of memory");
	grpc_server_credentials *creds = grpc_insecure_server_credentials_create();
	int port = grpc_server_add_http2_port(server->server, address, creds);
	grpc_server_credentials_release(creds);
	if (port == 0) /* grpc logged the cause */
		return vg_error_set(err, EADDRNOTAVAIL, "cannot listen on %s", server->socket_path);
	grpc_server_start(server->server);
	server->started = true;
	/* The socket was created under the umask; narrow or widen it to what was asked. */
	if (chmod(server->socket_path, server->mode) < 0) {
		int rc = vg_error_set_errno(err, errno, "cannot chmod %s to %04o",
					    server->socket_path, (unsigned)server->mode);
		vg_grpc_server_shutdown(server);
		return rc;
	}
	for (struct server_method *m = server->methods; m != NULL; m = m->next)
		for (int i = 0; i < SLOTS_PER_METHOD; i++)
			server_arm_slot(server, m);
	server_arm_slot(server, NULL);
	return 0;
}

static void server_release_socket(struct vg_grpc_server *server)
{
	/* grpc unlinked the socket already when its listener went away; the lock protects the
	 * path until now, so removing it again cannot hit another instance's socket. */
	if (server->started && unlink(server->socket_path) < 0 && errno != ENOENT)
		vg_warn("grpc server: cannot remove %s: %m", server->socket_path);
	socket_unlock(server->lock_fd, server->lock_path);
	server->lock_fd = -1;
}

static void on_server_shutdown(struct vg_grpc_tag *tag, bool ok)
{
	(void)ok;
	struct vg_grpc_server *server = vg_container_of(tag, struct vg_grpc_server, shutdown_tag);
	vg_grpc_loop_cancel_timer(server->loop, server->grace_timer);
	server->grace_timer = 0;
	grpc_server_destroy(server->server);
	server->server = NULL;
	server->destroyed = true;
	server_release_socket(server);
	vg_debug("grpc server on %s is down", server->socket_path);
	server_maybe_free(server);
}

static void on_shutdown_grace_over(void *ctx)
{
	struct vg_grpc_server *server = ctx;
	server->grace_timer = 0;
	vg_info("grpc server on %s: cancelling calls still open after %d ms", server->socket_path,
		VG_GRPC_SHUTDOWN_GRACE_MS);
	grpc_server_cancel_all_calls(server->server);
	/* Belt and braces: our own calls too, in case grpc no longer counts one as the server's. */
	for (struct server_call *call = server->calls; call != NULL; call = call->next)
		if (call->call != NULL)
			grpc_call_cancel(call->call, NULL);
}

void vg_grpc_server_shutdown(struct vg_grpc_server *server)
{
	if (server == NULL || server->shutting_down)
		return;
	server->shutting_down = true;
	if (!server->started) {
		/* No listener was added, so grpc allows destroying it without a shutdown. */
		grpc_server_destroy(server->server);
		server->server = NULL;
		server->destroyed = true;
		server_release_socket(server);
		server_maybe_free(server);
		return;
	}
	for (struct server_call *call = server->calls; call != NULL; call = call->next)
		if (call->kind == CALL_STREAM && call->user_holds)
			vg_grpc_stream_finish((struct vg_grpc_stream *)call, VG_GRPC_UNAVAILABLE,
					      "server shutting down");
	grpc_server_shutdown_and_notify(server->server, server->loop->cq, &server->shutdown_tag);
	server->grace_timer = vg_grpc_loop_add_timer(server->loop, VG_GRPC_SHUTDOWN_GRACE_MS,
						     on_shutdown_grace_over, server);
}

void servers_begin_shutdown(struct vg_grpc_loop *loop)
{
	/* Shutting one down may free it (an unstarted one), so step with a saved next. */
	struct vg_grpc_server *server = loop->servers;
	while (server != NULL) {
		struct vg_grpc_server *next = server->next;
		vg_grpc_server_shutdown(server);
		server = next;
	}
}

bool servers_all_down(const struct vg_grpc_loop *loop)
{
	for (const struct vg_grpc_server *s = loop->servers; s != NULL; s = s->next)
		if (!s->destroyed || s->grpc_calls > 0 || s->slots > 0)
			return false;
	return true;
}

void servers_free_all(struct vg_grpc_loop *loop)
{
	/* What is left are calls whose handler never answered (their grpc_call is long gone) and
	 * the servers they kept alive. */
	while (loop->servers != NULL) {
		struct vg_grpc_server *server = loop->servers;
		while (server->calls != NULL) {
			struct server_call *call = server->calls;
			if (call->call != NULL) {
				grpc_call_unref(call->call);
				call->call = NULL;
				server->grpc_calls--;
			}
			server_call_unlink_free(call);
		}
		if (server->server != NULL) {
			grpc_server_destroy(server->server);
			server->server = NULL;
		}
		server->destroyed = true;
		server->refs = 0;
		server_maybe_free(server);
	}
}
