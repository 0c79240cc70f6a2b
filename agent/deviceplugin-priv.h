/* Shared by deviceplugin.c (endpoints, registration, restarts) and deviceplugin_rpc.c (the
 * DevicePlugin RPCs). */
#pragma once

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "agent/deviceplugin.h"
#include "lib/bdf.h"

struct vg_grpc_server;
struct vg_grpc_stream;
struct vg_kubelet_watch;

struct lw_stream { /* one ListAndWatch call */
	struct lw_stream *next;
	struct vg_grpc_stream *stream;
};

struct known_gpu { /* a GPU the endpoint advertised once: it stays listed after it vanished */
	char bdf[VG_BDF_STRLEN];
	int numa_node;
};

struct endpoint { /* one resource name, one socket */
	struct endpoint *next;
	struct vg_device_plugin *dp;
	char resource[VG_RESOURCE_NAME_MAX];
	char socket_name[128]; /* what Register names: relative to kubelet_dir */
	char socket_path[PATH_MAX + 128];
	char lock_path[PATH_MAX + 256];
	struct vg_grpc_server *server; /* NULL while down */
	dev_t dev; /* our socket file, told apart from one a new kubelet left there (a deleted */
	ino_t ino; /* file's inode number is often reused at once, hence the ctime) */
	struct timespec ctime;
	uint64_t epoch; /* bumped when the server goes: older calls' answers are stale */
	struct lw_stream *streams;
	struct known_gpu *known;
	size_t n_known;
	uint8_t *list; /* the last device list sent */
	size_t list_len;
	uint64_t timer; /* the next attempt to serve or to register */
	int backoff_ms;
	int lock_waits;
	bool registering, register_again, registered, said_waiting;
	int64_t restart_ns; /* CLOCK_MONOTONIC of the last (re)start, for the log */
};

struct vg_device_plugin {
	const struct vg_config *config;
	struct vg_grpc_loop *loop;
	struct vg_device_table *table;
	void (*changed)(void *ctx);
	void *changed_ctx;
	char kubelet_socket[PATH_MAX + 16];
	char lock_dir[PATH_MAX + 32];
	struct endpoint *endpoints;
	struct vg_kubelet_watch *watch;
	bool dir_present;
	bool stopping;
	uint64_t holds_timer;
	bool holds_in_flight;
};

/* deviceplugin.c */
/* Whether the kubelet may use the GPU at pos (-1: vanished); why says why not. */
bool dp_gpu_is_healthy(const struct vg_device_table *table, int pos, const char **why);
/* Builds the endpoint's device list and sends it to every ListAndWatch stream when it changed
 * (or always, with force). */
void dp_endpoint_send_list(struct endpoint *ep, bool force);

/* deviceplugin_rpc.c */
int dp_register_methods(struct endpoint *ep, struct vg_grpc_server *server, struct vg_error **err);
