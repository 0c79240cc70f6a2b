/* Starting QEMU as the shim's child: PDEATHSIG, only the fds it needs, typed pre-exec errors. */
#pragma once

#include <stdint.h>
#include <sys/types.h>

struct vg_error;

struct vg_qemu_launch {
	char *const *argv;
	int pass_fd; /* kept open across exec (the TAP), -1 for none */
	const char *log_path; /* QEMU's own stdout and stderr */
	int64_t uid; /* drop to this uid/gid before exec; -1: keep the shim's */
	int64_t gid;
	uint64_t memlock_bytes; /* RLIMIT_MEMLOCK for VFIO's pinned guest RAM; 0: leave it */
};

/* Returns once QEMU has exec'd (or failed to, with the child's errno and step). */
int vg_qemu_spawn(const struct vg_qemu_launch *launch, pid_t *out_pid, struct vg_error **err);
