/* Internals of the VFIO guard that only tests use. */
#pragma once

#include <stddef.h>

#include "shim/bind_journal.h"
#include "shim/vfio_guard.h"

struct vg_vfio_guard_hooks {
	/*
	 * Called after a bind step's sysfs write succeeded and before the journal records the step
	 * (step is the progress about to be recorded). A test crashes the process here to land
	 * between a write and its journal entry, the window that restore must not trust.
	 */
	void (*after_write)(void *ctx, size_t function_index, enum vg_bind_progress step);
	void *ctx;
};

/* vg_vfio_guard_bind with hooks; hooks may be NULL. */
int vg_vfio_guard_bind_with_hooks(const struct vg_sysfs *sysfs, const char *journal_path,
				  const struct vg_bdf *functions, size_t n_functions,
				  int write_timeout_ms, const char *dev_root,
				  const struct vg_vfio_guard_hooks *hooks,
				  struct vg_vfio_guard **out, struct vg_error **err);
