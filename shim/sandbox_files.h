/* Everything about a sandbox lives in its directory, so a restarted agent finds it again. */
#pragma once

#include <stdint.h>
#include <sys/types.h>

#include "shim/spec.h"

struct vg_error;

enum vg_sandbox_state {
	VG_SANDBOX_CREATING,
	VG_SANDBOX_READY,
	VG_SANDBOX_STOPPING,
	VG_SANDBOX_EXITED,
	VG_SANDBOX_FAILED,
};

struct vg_sandbox_status {
	enum vg_sandbox_state state;
	char reason[512];
	pid_t shim_pid;
	uint64_t shim_start_time;
	pid_t qemu_pid;
	char tap[16];
	int64_t created_ns;
	int64_t qemu_exec_ns; /* when QEMU's exec succeeded */
	int64_t ready_ns;
	char guest_pci[VG_SPEC_MAX_GPUS * 2 * 10 + 64]; /* from the ready line */
	char guest_net[8]; /* ok, fail or none: whether the guest reached the host */
};

struct vg_exit_record {
	int exit_code; /* QEMU's, -1 when it was killed by a signal or never ran */
	int signal;
	char reason[512];
	int64_t started_ns;
	int64_t exited_ns;
};

const char *vg_sandbox_state_name(enum vg_sandbox_state state);
int vg_sandbox_paths_init(const char *dir, struct vg_sandbox_paths *paths, struct vg_error **err);
/* <dir>/<name>, refusing names that would not fit. */
int vg_sandbox_file(const struct vg_sandbox_paths *paths, const char *name, char *out,
		    size_t size, struct vg_error **err);
int vg_status_write(const struct vg_sandbox_paths *paths, const char *id,
		    const struct vg_sandbox_status *status, struct vg_error **err);
int vg_exit_record_write(const struct vg_sandbox_paths *paths, const struct vg_exit_record *rec,
			 struct vg_error **err);
