/*
 * The bind journal: what the VFIO guard is about to change, on disk before it changes it.
 *
 * One JSON file per sandbox lists every function the guard will move to vfio-pci, in bind order,
 * with the driver and driver_override it found. It is written (tmp, fsync, rename, fsync dir)
 * before the first sysfs write and again after each completed step, so whatever instruction a
 * crash lands on, the file says how to put every function back:
 *
 *   {
 *     "version": 1,
 *     "functions": [
 *       { "bdf": "0000:01:00.0", "iommu_group": 14, "original_driver": "nvidia",
 *         "original_override": "", "was_on_vfio": false, "progress": "bound-vfio" },
 *       ...
 *     ]
 *   }
 *
 * progress is the last step known to be complete. A crash can land after a sysfs write and
 * before the journal records it, so restoring never trusts progress alone: it reads the
 * function's current binding and undoes whatever differs from the original. Only "released"
 * is final: such an entry is never touched again, because after release the function may
 * already belong to another sandbox.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "lib/bdf.h"

struct vg_error;
struct vg_sysfs;

/* Driver names and driver_override values; module names are shorter than 56 bytes. */
#define VG_BIND_NAME_MAX 64

enum vg_bind_progress {
	VG_BIND_JOURNALED, /* recorded, nothing written yet */
	VG_BIND_OVERRIDE_SET, /* driver_override is "vfio-pci" */
	VG_BIND_UNBOUND, /* detached from the original driver, not yet on vfio-pci */
	VG_BIND_BOUND_VFIO, /* on vfio-pci, verified */
	VG_BIND_RELEASED, /* back to the original driver and override, verified; final */
};

struct vg_bind_journal_entry {
	char bdf[VG_BDF_STRLEN];
	int iommu_group;
	char original_driver[VG_BIND_NAME_MAX]; /* "" when no driver was bound */
	char original_override[VG_BIND_NAME_MAX]; /* "" when it read "(null)" */
	bool was_on_vfio; /* left exactly as found: never written, never restored */
	enum vg_bind_progress progress;
};

struct vg_bind_journal {
	char *path;
	struct vg_bind_journal_entry *entries; /* in bind order */
	size_t n_entries;
};

/* A function's binding as sysfs shows it now. */
struct vg_pci_binding {
	char driver[VG_BIND_NAME_MAX]; /* "" when unbound */
	char override[VG_BIND_NAME_MAX]; /* "" when unset */
};

const char *vg_bind_progress_name(enum vg_bind_progress progress);
int vg_bind_progress_parse(const char *name, enum vg_bind_progress *out, struct vg_error **err);

/* Reads bus/pci/devices/<bdf>/driver and driver_override. */
int vg_pci_binding_read(const struct vg_sysfs *sysfs, const char *bdf, struct vg_pci_binding *out,
			struct vg_error **err);

/*
 * Writes a new journal holding a copy of entries and returns it in *out. Refuses (EEXIST) to
 * replace an existing file: that one may be the only record of a binding not yet restored.
 */
int vg_bind_journal_create(const char *path, const struct vg_bind_journal_entry *entries,
			   size_t n_entries, struct vg_bind_journal **out, struct vg_error **err);
/* Reads and strictly validates a journal. */
int vg_bind_journal_load(const char *path, struct vg_bind_journal **out, struct vg_error **err);
/* Records entry `index` at `progress` and rewrites the file atomically. */
int vg_bind_journal_update(struct vg_bind_journal *journal, size_t index,
			   enum vg_bind_progress progress, struct vg_error **err);
void vg_bind_journal_free(struct vg_bind_journal *journal);

/*
 * Puts entry `index` back to its original driver and override from whatever state it is in, then
 * verifies and records it "released". Idempotent: a function already as it was gets no write.
 * A "released" or was_on_vfio entry is only marked released. Each write is bounded by
 * timeout_ms. The error names the function and, when it did not come back, what it is bound to.
 */
int vg_bind_journal_restore(const struct vg_sysfs *sysfs, struct vg_bind_journal *journal,
			    size_t index, int timeout_ms, struct vg_error **err);

/*
 * Restores every function of the journal at journal_path in reverse bind order (best effort: one
 * failure does not stop the others; the first error is returned). Running it again, or after a
 * partial replay, is safe. The file is left in place; the caller deletes it once this succeeds.
 */
int vg_bind_journal_replay(const struct vg_sysfs *sysfs, const char *journal_path, int timeout_ms,
			   struct vg_error **err);

static inline void vg_bind_journal_freep(struct vg_bind_journal **journal)
{
	vg_bind_journal_free(*journal);
}
#define cleanup_bind_journal __attribute__((cleanup(vg_bind_journal_freep)))
