/* One sandbox from start to exit record: VFIO, TAP, QEMU, readiness, stop and cleanup. */
#pragma once

struct vg_error;

struct vg_shim_options {
	const char *dir; /* the sandbox directory, holding spec.json */
	int sync_fd; /* gets one "started" or error line, then is closed; -1 for none */
};

/* Runs the sandbox until it ends; returns the shim's exit code (0: the sandbox exited
 * cleanly, 1: it failed). Every path out runs the same unwind. */
int vg_shim_run(const struct vg_shim_options *options);
