/* The QEMU command line for one sandbox, built from its spec: x86_64 on q35, aarch64 on virt. */
#pragma once

#include <stddef.h>

#include "lib/argv.h"
#include "shim/spec.h"

struct vg_error;

struct vg_qemu_fds {
	int tap_fd; /* -1 when the sandbox has no network */
};

/* Fills *out only on success. fds may be NULL when no fd is handed over. */
int vg_qemu_build_argv(const struct vg_sandbox_spec *spec, const struct vg_sandbox_paths *paths,
		       const struct vg_qemu_fds *fds, struct vg_argv *out, struct vg_error **err);

/* QEMU option values: ',' doubled as QEMU requires; other unsafe input refused. */
int vg_qemu_escape_value(const char *value, char *out, size_t size, struct vg_error **err);
