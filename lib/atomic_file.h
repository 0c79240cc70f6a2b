/* Crash-safe file replacement: tmp, fsync, rename, fsync the directory. */
#pragma once

#include <stddef.h>
#include <sys/types.h>

struct vg_error;

int vg_atomic_write(const char *path, const void *data, size_t len, mode_t mode,
		    struct vg_error **err);
int vg_atomic_write_str(const char *path, const char *text, mode_t mode, struct vg_error **err);
/* Reads a whole (small) file; *out is NUL-terminated and owned by the caller. */
int vg_read_file(const char *path, size_t max_len, char **out, size_t *out_len,
		 struct vg_error **err);
