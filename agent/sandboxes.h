/* The node's sandbox table: create, stop, remove, adopt after a restart, repair after a crash.
 * Everything runs on the agent's loop thread; a sandbox's truth is on disk in
 * <state_dir>/sandboxes/<id>/ (record.json is ours, status.json and exit.json the shim's). */
#pragma once

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "agent/device_table.h"
#include "agent/net_pool.h"
#include "lib/bdf.h"

struct vg_config;
struct vg_error;
struct vg_grpc_loop;

enum vg_sb_state { VG_SB_CREATING, VG_SB_READY, VG_SB_STOPPING, VG_SB_EXITED, VG_SB_FAILED };

struct vg_sb_waiter; /* a caller waiting for ready, or for the shim to exit */
struct vg_pod_lookup; /* a RunPodSandbox waiting for PodResources */

struct vg_sandbox {
	char id[65];
	char dir[3900];
	/* CRI metadata, labels and annotations, kept as given so they are echoed unchanged. */
	char name[254], uid[128], pod_namespace[254];
	uint32_t attempt;
	char runtime_handler[64];
	json_object *labels; /* object of strings */
	json_object *annotations;
	int64_t created_ns;
	enum vg_sb_state state;
	char reason[512];
	char gpus[16][VG_BDF_STRLEN];
	size_t n_gpus;
	bool has_net;
	uint32_t subnet; /* the /30: host .1, guest .2 */
	char tap[16];
	pid_t shim_pid;
	uint64_t shim_start_time;
	pid_t qemu_pid;
	int pidfd;
	uint64_t pidfd_watch;
	uint64_t poll_timer;
	uint64_t stop_timer;
	/* The shim launcher's stdout, which carries its one "started" line. */
	pid_t launcher_pid;
	int launcher_fd;
	uint64_t launcher_watch;
	char launcher_out[2048];
	size_t launcher_len;
	struct vg_sb_waiter *waiters;
	bool removing;
	struct vg_sandboxes *owner;
	struct vg_sandbox *next;
};

/* Called once per request: sandbox_id on success, err on failure. */
typedef void (*vg_sb_done_fn)(void *ctx, const char *sandbox_id, const struct vg_error *err);

struct vg_sb_run_request {
	const char *name, *uid, *pod_namespace;
	uint32_t attempt;
	const char *runtime_handler;
	json_object *labels; /* borrowed; copied */
	json_object *annotations;
};

struct vg_sandboxes {
	const struct vg_config *config;
	struct vg_grpc_loop *loop;
	struct vg_device_table *devices;
	struct vg_net_pool pool;
	char root[3800]; /* <state_dir>/sandboxes */
	char shim_binary[4096];
	struct vg_sandbox *list;
	struct vg_pod_lookup *lookups; /* RunPodSandbox calls waiting for the kubelet's answer */
	void (*on_change)(void *ctx); /* GPU ownership or a sandbox's state changed */
	void *on_change_ctx;
};

int vg_sandboxes_init(struct vg_sandboxes *mgr, const struct vg_config *config,
		      struct vg_grpc_loop *loop, struct vg_device_table *devices,
		      struct vg_error **err);
/* Adopts every live shim and repairs what dead sandboxes left behind. Idempotent. */
int vg_sandboxes_recover(struct vg_sandboxes *mgr, struct vg_error **err);
/* Validation and allocation errors come back at once (<0, *err); afterwards done() is called
 * exactly once, when the sandbox is ready or has failed. */
int vg_sandboxes_run(struct vg_sandboxes *mgr, const struct vg_sb_run_request *req,
		     vg_sb_done_fn done, void *ctx, struct vg_error **err);
/* ENOENT for an unknown id; otherwise done() once the shim has exited (at once if it had). */
int vg_sandboxes_stop(struct vg_sandboxes *mgr, const char *id, vg_sb_done_fn done, void *ctx,
		      struct vg_error **err);
/* Stops if needed, then deletes the sandbox; an unknown id is already removed (success). */
int vg_sandboxes_remove(struct vg_sandboxes *mgr, const char *id, vg_sb_done_fn done,
			void *ctx, struct vg_error **err);
struct vg_sandbox *vg_sandboxes_find(struct vg_sandboxes *mgr, const char *id);
/* Drops in-memory state without touching shims: the agent is going away, the sandboxes stay.
 * Waiters, and RunPodSandbox calls still waiting for PodResources, get done() with ECANCELED. */
void vg_sandboxes_detach(struct vg_sandboxes *mgr);

const char *vg_sb_state_name(enum vg_sb_state state);
/* The "vmgpu" entry of a verbose PodSandboxStatus: state, reason, GPUs, addresses, pids. */
json_object *vg_sandbox_details(const struct vg_sandbox *sb);
