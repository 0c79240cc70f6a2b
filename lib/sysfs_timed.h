/* A sysfs control write that cannot hold the caller hostage to a wedged driver. */
#pragma once

struct vg_error;
struct vg_sysfs;

/*
 * The same single write(2) as vg_sysfs_write, done in a forked child so that the caller waits at
 * most timeout_ms (> 0). A write into a driver that never lets go of its device lock sleeps in
 * the kernel for good; the caller must not sleep with it.
 *
 * The child's errno comes back exactly ("write 'X' to PATH: Device or resource busy"). On timeout
 * the child is sent SIGKILL and reaped, and -ETIMEDOUT is returned; the write may still take
 * effect later, so callers read back the state they wanted rather than trusting either outcome.
 * A child stuck in uninterruptible sleep cannot die until the kernel lets it go: it is then left
 * behind (logged with its pid) for the process's reap loop, rather than blocking the caller.
 */
int vg_sysfs_write_timed(const struct vg_sysfs *sysfs, const char *rel, const char *value,
			 int timeout_ms, struct vg_error **err);
