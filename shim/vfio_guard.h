/*
 * The VFIO guard: moves a sandbox's functions (GPUs and their companions) to vfio-pci and puts
 * them back exactly as it found them, whatever fails or crashes in between.
 *
 * It binds the way libvirt does (driver_override, unbind, drivers_probe; never new_id, which
 * would grab every idle device with the same ID), and adds three things: the whole IOMMU group
 * is checked for viability before any write, with a message that names the offending device;
 * the original driver and override are journaled (shim/bind_journal.h) before any write; and
 * every step, "detached, not yet on vfio-pci" included, is journaled as it completes.
 */
#pragma once

#include <stddef.h>

struct vg_bdf;
struct vg_error;
struct vg_sysfs;
struct vg_vfio_guard;

/*
 * Binds every function to vfio-pci, in order (GPU first, then its companions; possibly several
 * GPUs). In order:
 *  1. each BDF must exist; its driver, driver_override and IOMMU group are read;
 *  2. every IOMMU group touched must be viable: each member is one of ours, a bridge or port
 *     (class 0x06xxxx), or holds no driver, vfio-pci or pci-stub. Otherwise EBUSY;
 *  3. the journal is written at journal_path (which must not exist yet);
 *  4. each function not already on vfio-pci gets driver_override "vfio-pci", is unbound from
 *     its driver, is probed, and must then be on vfio-pci. A function already on vfio-pci is
 *     left exactly as found;
 *  5. <dev_root>/vfio/<group> must exist for every group.
 * Each sysfs write gives up after write_timeout_ms.
 *
 * On failure before step 3 nothing was written and no journal exists. On failure after it,
 * what was done is undone in reverse order (best effort, the first error is returned) and the
 * journal is left with every restored function "released"; a function that could not be
 * restored keeps its progress, so vg_bind_journal_replay can try again. The caller deletes the
 * journal once nothing in it needs restoring.
 */
int vg_vfio_guard_bind(const struct vg_sysfs *sysfs, const char *journal_path,
		       const struct vg_bdf *functions, size_t n_functions, int write_timeout_ms,
		       const char *dev_root, struct vg_vfio_guard **out, struct vg_error **err);

/*
 * Puts every function back on its original driver (or none) and override, in reverse order,
 * verifies each, and journals it "released". Best effort across functions; the error names
 * every function that did not come back. Calling it again retries only those.
 */
int vg_vfio_guard_release(struct vg_vfio_guard *guard, struct vg_error **err);

/* Frees memory only; never touches sysfs. Accepts NULL. */
void vg_vfio_guard_free(struct vg_vfio_guard *guard);

static inline void vg_vfio_guard_freep(struct vg_vfio_guard **guard)
{
	vg_vfio_guard_free(*guard);
}
#define cleanup_vfio_guard __attribute__((cleanup(vg_vfio_guard_freep)))
