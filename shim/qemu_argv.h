/* The QEMU command line for one sandbox, built from its spec: x86_64 on q35, aarch64 on virt. */
#pragma once

#include <stddef.h>

#include "shim/spec.h"

struct vg_error;

struct vg_argv {
	char **argv; /* NULL-terminated, owned strings */
	size_t argc;
	size_t cap;
};

/* Frees the strings and the array, and leaves an empty argv; accepts NULL. */
void vg_argv_free(struct vg_argv *argv);
static inline void vg_argv_freep(struct vg_argv *argv)
{
	vg_argv_free(argv);
}
#define cleanup_argv __attribute__((cleanup(vg_argv_freep)))

/* Appends a copy of arg. */
int vg_argv_add(struct vg_argv *argv, const char *arg, struct vg_error **err);

struct vg_qemu_fds {
	int tap_fd; /* -1 when the sandbox has no network */
};

/* Fills *out only on success. fds may be NULL when no fd is handed over. */
int vg_qemu_build_argv(const struct vg_sandbox_spec *spec, const struct vg_sandbox_paths *paths,
		       const struct vg_qemu_fds *fds, struct vg_argv *out, struct vg_error **err);

/* QEMU option values: ',' doubled as QEMU requires; other unsafe input refused. */
int vg_qemu_escape_value(const char *value, char *out, size_t size, struct vg_error **err);

/* One line, for logs and golden files: arguments a shell would split are single-quoted.
 * Returns NULL when out of memory. */
char *vg_argv_join(const struct vg_argv *argv);
