/*
 * A small server on the grpc glue for interop tests with other grpc clients:
 *   grpc_echo_server SOCKET
 * serves /vmgpu.test.Echo/{Unary,Fail,Stream} with raw bytes, prints "READY" once it listens
 * and exits 0 on SIGTERM or SIGINT after the full shutdown.
 *   Unary:  answers the request unchanged.
 *   Fail:   NOT_FOUND "no gpu named <request>".
 *   Stream: "<request>-1", "<request>-2", "<request>-3" 20 ms apart, then OK.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "lib/error.h"
#include "lib/grpc/vg_grpc.h"
#include "lib/log.h"

#define SVC "/vmgpu.test.Echo/"

struct echo_server {
	struct vg_grpc_loop *loop;
	int signal_fd;
};

struct stream_state {
	struct echo_server *server;
	struct vg_grpc_stream *stream;
	char prefix[64];
	int sent;
	uint64_t timer;
};

static void unary(void *ctx, struct vg_grpc_call *call, const uint8_t *req, size_t len)
{
	(void)ctx;
	vg_grpc_call_reply(call, req, len);
}

static void fail(void *ctx, struct vg_grpc_call *call, const uint8_t *req, size_t len)
{
	(void)ctx;
	char msg[128];
	snprintf(msg, sizeof(msg), "no gpu named %.*s", (int)(len > 64 ? 64 : len),
		 (const char *)req);
	vg_grpc_call_fail(call, VG_GRPC_NOT_FOUND, msg);
}

static void stream_tick(void *ctx)
{
	struct stream_state *st = ctx;
	st->timer = 0;
	char text[96];
	int n = snprintf(text, sizeof(text), "%s-%d", st->prefix, ++st->sent);
	vg_grpc_stream_send(st->stream, (const uint8_t *)text, (size_t)n);
	if (st->sent == 3)
		vg_grpc_stream_finish(st->stream, VG_GRPC_OK, NULL);
	else
		st->timer = vg_grpc_loop_add_timer(st->server->loop, 20, stream_tick, st);
}

static void stream_open(void *ctx, struct vg_grpc_stream *stream, const uint8_t *req,
			size_t len)
{
	struct stream_state *st = calloc(1, sizeof(*st));
	if (st == NULL) {
		vg_grpc_stream_finish(stream, VG_GRPC_RESOURCE_EXHAUSTED, "out of memory");
		return;
	}
	st->server = ctx;
	st->stream = stream;
	snprintf(st->prefix, sizeof(st->prefix), "%.*s", (int)(len > 60 ? 60 : len),
		 (const char *)req);
	vg_grpc_stream_set_user(stream, st);
	stream_tick(st);
}

static void stream_closed(void *ctx, struct vg_grpc_stream *stream)
{
	struct echo_server *server = ctx;
	struct stream_state *st = vg_grpc_stream_get_user(stream);
	if (st != NULL && st->timer != 0)
		vg_grpc_loop_cancel_timer(server->loop, st->timer);
	free(st);
}

static void on_signal(void *ctx, int fd)
{
	struct echo_server *server = ctx;
	struct signalfd_siginfo info;
	if (read(fd, &info, sizeof(info)) == sizeof(info))
		vg_info("signal %u: shutting down", info.ssi_signo);
	vg_grpc_loop_stop(server->loop);
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s SOCKET\n", argv[0]);
		return 2;
	}
	vg_log_setup("grpc_echo_server", VG_LOG_TEXT, VG_LOG_INFO, stderr);
	struct echo_server server = { .signal_fd = -1 };
	struct vg_grpc_server *grpc_server = NULL;
	struct vg_error *err = NULL;
	int rc = vg_grpc_loop_new(&server.loop, &err);
	if (rc == 0) {
		sigset_t set;
		sigemptyset(&set);
		sigaddset(&set, SIGTERM);
		sigaddset(&set, SIGINT);
		server.signal_fd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
		if (server.signal_fd < 0)
			rc = vg_error_set_errno(&err, errno, "signalfd");
	}
	if (rc == 0 &&
	    vg_grpc_loop_watch_fd(server.loop, server.signal_fd, on_signal, &server, &err) == 0)
		rc = -1;
	if (rc == 0)
		rc = vg_grpc_server_new(server.loop, argv[1], 0600, &grpc_server, &err);
	if (rc == 0)
		rc = vg_grpc_server_add_unary(grpc_server, SVC "Unary", unary, NULL, &err);
	if (rc == 0)
		rc = vg_grpc_server_add_unary(grpc_server, SVC "Fail", fail, NULL, &err);
	if (rc == 0)
		rc = vg_grpc_server_add_stream(grpc_server, SVC "Stream", stream_open,
					       stream_closed, &server, &err);
	if (rc == 0)
		rc = vg_grpc_server_start(grpc_server, &err);
	if (rc == 0) {
		printf("READY\n");
		fflush(stdout);
		rc = vg_grpc_loop_run(server.loop, &err);
	}
	if (rc < 0)
		vg_err("%s", err ? err->msg : "failed");
	vg_error_free(err);
	vg_grpc_loop_free(server.loop);
	if (server.signal_fd >= 0)
		close(server.signal_fd);
	return rc < 0 ? 1 : 0;
}
