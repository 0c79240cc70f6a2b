/* Running a helper program and reading its output, bounded in time. */
#pragma once

#include <stddef.h>

struct vg_error;

/* Runs argv[0] (searched in PATH), captures stdout and stderr together into out (truncated,
 * NUL-terminated), and kills it after timeout_ms. Returns the exit status (>= 0) or <0. */
int vg_spawn_capture(char *const argv[], int timeout_ms, char *out, size_t size,
		     struct vg_error **err);
/* Finds an executable in PATH (or checks a path containing '/'). */
int vg_find_executable(const char *name, char *out, size_t size, struct vg_error **err);
