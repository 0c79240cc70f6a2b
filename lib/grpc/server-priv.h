/* Server-side internals shared by server.c (servers, request slots) and server_call.c (the
 * per-call state machines). */
#pragma once

#include <sys/types.h>

#include "lib/grpc/grpc-priv.h"

struct vg_error;

enum method_kind { METHOD_UNARY, METHOD_STREAM };

struct server_method {
	struct server_method *next;
	enum method_kind kind;
	char *path;
	void *registered; /* grpc's handle from grpc_server_register_method */
	vg_grpc_unary_fn unary;
	vg_grpc_stream_open_fn open;
	vg_grpc_stream_closed_fn closed;
	void *ctx;
};

enum call_kind { CALL_UNARY, CALL_STREAM, CALL_UNIMPLEMENTED };

/* What every incoming call has. The struct lives while grpc holds a batch of it or the user
 * holds its pointer; the grpc_call is released as soon as no batch is in flight (the close
 * batch stays in flight until the call is over, so that means "the call ended"). */
struct server_call {
	struct server_call *next, *prev; /* in server->calls */
	enum call_kind kind;
	struct vg_grpc_server *server;
	grpc_call *call;   /* NULL once released */
	unsigned batches;  /* in flight */
	bool user_holds;   /* unary: until answered; stream: until the closed callback ran */
	bool closed;       /* RECV_CLOSE_ON_SERVER came back: the call is over */
	int cancelled;     /* filled by RECV_CLOSE_ON_SERVER */
	gpr_timespec deadline;
	struct vg_grpc_tag close_tag;
};

struct vg_grpc_server {
	struct vg_grpc_server *next; /* in loop->servers */
	struct vg_grpc_loop *loop;
	grpc_server *server; /* NULL once destroyed */
	char *socket_path;
	char *lock_path;
	int lock_fd;
	mode_t mode;
	struct server_method *methods;
	bool started;
	bool shutting_down;
	bool destroyed;
	struct vg_grpc_tag shutdown_tag;
	uint64_t grace_timer;
	size_t slots;      /* request slots armed */
	size_t grpc_calls; /* call structs still holding a grpc_call */
	size_t refs;       /* slots and call structs alive: the struct is freed at 0 once down */
	struct server_call *calls;
};

/* server_socket.c */
int socket_dir_check(const char *socket_path, struct vg_error **err);
/* Returns the locked fd (our pid written into it) and the lock file's path: lock_at, or
 * "<socket_path>.lock" when lock_at is NULL. */
int socket_lock(const char *socket_path, const char *lock_at, char **lock_path,
		struct vg_error **err);
void socket_unlock(int fd, const char *lock_path);

/* server.c */
void server_call_link(struct vg_grpc_server *server, struct server_call *call,
		      enum call_kind kind, grpc_call *grpc_call, gpr_timespec deadline);
/* Releases the grpc_call when no batch is in flight and frees the struct when the user is
 * done with it too. */
void server_call_maybe_release(struct server_call *call);

/* server_call.c: take over a new call (the payload is consumed). */
void unary_call_start(struct vg_grpc_server *server, struct server_method *method,
		      grpc_call *grpc_call, gpr_timespec deadline, grpc_byte_buffer *payload);
void stream_call_start(struct vg_grpc_server *server, struct server_method *method,
		       grpc_call *grpc_call, gpr_timespec deadline, grpc_byte_buffer *payload);
void unimplemented_call_start(struct vg_grpc_server *server, grpc_call *grpc_call,
			      grpc_slice method);
/* Free the kind-specific parts of a call struct (then the caller frees it). */
void server_call_free(struct server_call *call);
