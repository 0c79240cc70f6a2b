#include "shim/vfio_guard.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "lib/bdf.h"
#include "lib/cleanup.h"
#include "lib/error.h"
#include "lib/gpu_state.h"
#include "lib/log.h"
#include "lib/sysfs.h"
#include "lib/sysfs_timed.h"
#include "shim/bind_journal.h"
#include "shim/vfio_guard-priv.h"

#define VFIO_DRIVER "vfio-pci"

struct vg_vfio_guard {
	struct vg_sysfs sysfs;
	struct vg_bind_journal *journal;
	int write_timeout_ms;
};

void vg_vfio_guard_free(struct vg_vfio_guard *guard)
{
	if (guard == NULL)
		return;
	vg_bind_journal_free(guard->journal);
	free(guard);
}

/* The first error goes to the caller; later ones are only logged. */
static void keep_first_or_log(struct vg_error **err, struct vg_error *secondary)
{
	if (secondary == NULL)
		return;
	if (err != NULL && *err == NULL) {
		*err = secondary;
		return;
	}
	vg_warn("%s", secondary->msg ? secondary->msg : "unknown error");
	vg_error_free(secondary);
}

static int rel_path(char *buf, size_t size, struct vg_error **err, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static int rel_path(char *buf, size_t size, struct vg_error **err, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, size, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= size)
		return vg_error_set(err, ENAMETOOLONG, "sysfs path %.64s... is too long", buf);
	return 0;
}

/* ---- 1. what each function is now ------------------------------------------------------------ */

static int read_iommu_group(const struct vg_sysfs *sysfs, const char *bdf, int *out,
			    struct vg_error **err)
{
	char rel[128], name[32];
	int ret = rel_path(rel, sizeof(rel), err, "bus/pci/devices/%s/iommu_group", bdf);
	if (ret < 0)
		return ret;
	cleanup_error struct vg_error *link_err = NULL;
	ret = vg_sysfs_link_name(sysfs, rel, name, sizeof(name), &link_err);
	if (ret == -ENOENT)
		return vg_error_set(err, ENODEV, "%s has no IOMMU group: %s", bdf,
				    VG_REASON_IOMMU_OFF);
	if (ret < 0) {
		keep_first_or_log(err, TAKE_PTR(link_err));
		return ret;
	}
	long long group;
	ret = vg_parse_long(name, &group, err);
	if (ret < 0 || group < 0 || group > INT_MAX)
		return vg_error_set(err, EINVAL, "%s: iommu_group '%s' is not a group number", bdf,
				    name);
	*out = (int)group;
	return 0;
}

static int plan_function(const struct vg_sysfs *sysfs, const struct vg_bdf *addr,
			 struct vg_bind_journal_entry *e, struct vg_error **err)
{
	*e = (struct vg_bind_journal_entry){ .progress = VG_BIND_JOURNALED };
	vg_bdf_format(addr, e->bdf);
	char rel[128];
	int ret = rel_path(rel, sizeof(rel), err, "bus/pci/devices/%s", e->bdf);
	if (ret < 0)
		return ret;
	if (!vg_sysfs_exists(sysfs, rel))
		return vg_error_set(err, ENODEV, "no PCI function %s under %s/bus/pci/devices",
				    e->bdf, sysfs->root);
	ret = read_iommu_group(sysfs, e->bdf, &e->iommu_group, err);
	if (ret < 0)
		return ret;
	struct vg_pci_binding now;
	ret = vg_pci_binding_read(sysfs, e->bdf, &now, err);
	if (ret < 0)
		return ret;
	memcpy(e->original_driver, now.driver, sizeof(e->original_driver));
	memcpy(e->original_override, now.override, sizeof(e->original_override));
	e->was_on_vfio = strcmp(now.driver, VFIO_DRIVER) == 0;
	return 0;
}

/* ---- 2. group viability, before any write ---------------------------------------------------- */

static bool is_ours(const struct vg_bind_journal_entry *entries, size_t n, const char *bdf)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(entries[i].bdf, bdf) == 0)
			return true;
	return false;
}

static int skip_dots(const struct dirent *d)
{
	return d->d_name[0] != '.';
}

/* Whether a group member outside the sandbox can stay where it is while the group is ours. */
static int member_allows_vfio(const struct vg_sysfs *sysfs, int group, const char *member,
			      struct vg_error **err)
{
	char rel[256], class_text[32] = "unknown", driver[VG_BIND_NAME_MAX] = "";
	int ret = rel_path(rel, sizeof(rel), err, "kernel/iommu_groups/%d/devices/%s/class", group,
			   member);
	if (ret < 0)
		return ret;
	long long class_code = -1;
	if (vg_sysfs_read(sysfs, rel, class_text, sizeof(class_text), NULL) < 0 ||
	    vg_parse_long(class_text, &class_code, NULL) < 0)
		class_code = -1;
	if (class_code >= 0 && (class_code >> 16) == 0x06)
		return 0; /* a bridge or port: it forwards DMA, it is not a device to steal */
	ret = rel_path(rel, sizeof(rel), err, "kernel/iommu_groups/%d/devices/%s/driver", group,
		       member);
	if (ret < 0)
		return ret;
	cleanup_error struct vg_error *link_err = NULL;
	ret = vg_sysfs_link_name(sysfs, rel, driver, sizeof(driver), &link_err);
	if (ret < 0 && ret != -ENOENT) {
		keep_first_or_log(err, TAKE_PTR(link_err));
		return ret;
	}
	if (vg_driver_is_vfio_safe(driver))
		return 0;
	return vg_error_set(err, EBUSY,
			    "IOMMU group %d also holds %s (class %s), bound to host driver %s, "
			    "which is not one of the sandbox's functions; passing the group "
			    "through "
			    "would take it from the host. Nothing was changed",
			    group, member, class_text, driver);
}

static int check_group_viable(const struct vg_sysfs *sysfs, int group,
			      const struct vg_bind_journal_entry *entries, size_t n,
			      struct vg_error **err)
{
	char rel[64], path[PATH_MAX];
	int ret = rel_path(rel, sizeof(rel), err, "kernel/iommu_groups/%d/devices", group);
	if (ret == 0)
		ret = vg_sysfs_path(sysfs, path, sizeof(path), err, "%s", rel);
	if (ret < 0)
		return ret;
	struct dirent **members = NULL;
	int n_members = scandir(path, &members, skip_dots, alphasort);
	if (n_members < 0)
		return vg_error_set_errno(err, errno, "read IOMMU group %d at %s", group, path);
	for (int i = 0; i < n_members; i++) {
		if (ret == 0 && !is_ours(entries, n, members[i]->d_name))
			ret = member_allows_vfio(sysfs, group, members[i]->d_name, err);
		free(members[i]);
	}
	free(members);
	return ret;
}

static int check_groups_viable(const struct vg_sysfs *sysfs,
			       const struct vg_bind_journal_entry *entries, size_t n,
			       struct vg_error **err)
{
	for (size_t i = 0; i < n; i++) {
		bool seen = false;
		for (size_t j = 0; j < i && !seen; j++)
			seen = entries[j].iommu_group == entries[i].iommu_group;
		if (seen)
			continue;
		int ret = check_group_viable(sysfs, entries[i].iommu_group, entries, n, err);
		if (ret < 0)
			return ret;
	}
	return 0;
}

/* ---- 4. one function to vfio-pci ------------------------------------------------------------- */

static int guard_write(const struct vg_vfio_guard *guard, const char *rel, const char *value,
		       struct vg_error **err)
{
	return vg_sysfs_write_timed(&guard->sysfs, rel, value, guard->write_timeout_ms, err);
}

/* A step is complete once its write returned; the hook sees the window before it is journaled. */
static int complete_step(struct vg_vfio_guard *guard, const struct vg_vfio_guard_hooks *hooks,
			 size_t index, enum vg_bind_progress step, struct vg_error **err)
{
	if (hooks != NULL && hooks->after_write != NULL)
		hooks->after_write(hooks->ctx, index, step);
	return vg_bind_journal_update(guard->journal, index, step, err);
}

static int bind_function(struct vg_vfio_guard *guard, size_t index,
			 const struct vg_vfio_guard_hooks *hooks, struct vg_error **err)
{
	const struct vg_bind_journal_entry *e = &guard->journal->entries[index];
	if (e->was_on_vfio)
		return 0; /* left exactly as found: no write, so nothing to undo */
	char rel[PATH_MAX];
	int ret = rel_path(rel, sizeof(rel), err, "bus/pci/devices/%s/driver_override", e->bdf);
	if (ret == 0)
		ret = guard_write(guard, rel, VFIO_DRIVER, err);
	if (ret == 0)
		ret = complete_step(guard, hooks, index, VG_BIND_OVERRIDE_SET, err);
	if (ret < 0)
		return ret;

	if (e->original_driver[0] != '\0') {
		ret = rel_path(rel, sizeof(rel), err, "bus/pci/drivers/%s/unbind",
			       e->original_driver);
		if (ret == 0)
			ret = guard_write(guard, rel, e->bdf, err);
		if (ret < 0)
			return ret;
	}
	ret = complete_step(guard, hooks, index, VG_BIND_UNBOUND, err);
	if (ret < 0)
		return ret;

	/* Not a bind to vfio-pci/bind: drivers_probe honours the override, as the kernel wants. */
	ret = guard_write(guard, "bus/pci/drivers_probe", e->bdf, err);
	if (ret < 0)
		return ret;
	if (hooks != NULL && hooks->after_write != NULL)
		hooks->after_write(hooks->ctx, index, VG_BIND_BOUND_VFIO);
	/* drivers_probe succeeds even when vfio-pci's probe failed: only the link tells. */
	struct vg_pci_binding now;
	ret = vg_pci_binding_read(&guard->sysfs, e->bdf, &now, err);
	if (ret < 0)
		return ret;
	if (strcmp(now.driver, VFIO_DRIVER) != 0)
		return vg_error_set(err, EIO,
				    "not on vfio-pci after drivers_probe: bound to %s "
				    "(is vfio-pci loaded? did its probe fail? see the kernel log)",
				    now.driver[0] ? now.driver : "nothing");
	return vg_bind_journal_update(guard->journal, index, VG_BIND_BOUND_VFIO, err);
}

/* ---- 5. the group nodes ---------------------------------------------------------------------- */

static int check_vfio_nodes(const struct vg_vfio_guard *guard, const char *dev_root,
			    struct vg_error **err)
{
	const struct vg_bind_journal *journal = guard->journal;
	for (size_t i = 0; i < journal->n_entries; i++) {
		char path[PATH_MAX];
		int n = snprintf(path, sizeof(path), "%s/vfio/%d", dev_root,
				 journal->entries[i].iommu_group);
		if (n < 0 || (size_t)n >= sizeof(path))
			return vg_error_set(err, ENAMETOOLONG, "dev root %s is too long", dev_root);
		struct stat st;
		if (stat(path, &st) < 0)
			return vg_error_set_errno(err, errno,
						  "%s did not appear after binding %s to vfio-pci",
						  path, journal->entries[i].bdf);
	}
	return 0;
}

/* ---- 6. undoing ------------------------------------------------------------------------------ */

/*
 * Restores functions [0, attempted) in reverse order and records the rest, never touched,
 * "released". Best effort: every error is kept in *err if it is the first, else logged.
 * Returns how many functions did not come back.
 */
static size_t restore_all(struct vg_vfio_guard *guard, size_t attempted, char *failed,
			  size_t failed_size, struct vg_error **err)
{
	struct vg_bind_journal *journal = guard->journal;
	size_t n_failed = 0, used = 0;
	for (size_t i = journal->n_entries; i-- > 0;) {
		struct vg_error *step_err = NULL;
		int ret;
		if (i < attempted)
			ret = vg_bind_journal_restore(&guard->sysfs, journal, i,
						      guard->write_timeout_ms, &step_err);
		else
			ret = vg_bind_journal_update(journal, i, VG_BIND_RELEASED, &step_err);
		keep_first_or_log(err, step_err);
		if (ret < 0) {
			n_failed++;
			int n = snprintf(failed + used, failed_size - used, "%s%s",
					 used ? ", " : "", journal->entries[i].bdf);
			if (n > 0 && (size_t)n < failed_size - used)
				used += (size_t)n;
		}
	}
	return n_failed;
}

static void unwind(struct vg_vfio_guard *guard, size_t attempted)
{
	/* The bind's own error is already in the caller's err; these are secondary. */
	cleanup_error struct vg_error *unwind_err = NULL;
	char failed[512] = "";
	size_t n_failed = restore_all(guard, attempted, failed, sizeof(failed), &unwind_err);
	if (unwind_err != NULL)
		vg_warn("undoing the bind of %s: %s; left for journal replay: %s",
			guard->journal->path, unwind_err->msg ? unwind_err->msg : "unknown error",
			n_failed ? failed : "nothing");
}

int vg_vfio_guard_release(struct vg_vfio_guard *guard, struct vg_error **err)
{
	char failed[512] = "";
	struct vg_error *first = NULL;
	size_t n_failed =
		restore_all(guard, guard->journal->n_entries, failed, sizeof(failed), &first);
	if (first == NULL)
		return 0;
	int ret = vg_error_set(err, vg_error_code(first),
			       "release: %zu of %zu functions did not come back (%s); first: %s",
			       n_failed, guard->journal->n_entries, failed,
			       first->msg ? first->msg : "unknown error");
	vg_error_free(first);
	return ret;
}

/* ---- the whole bind -------------------------------------------------------------------------- */

static int plan_all(const struct vg_sysfs *sysfs, const struct vg_bdf *functions, size_t n,
		    struct vg_bind_journal_entry *entries, struct vg_error **err)
{
	for (size_t i = 0; i < n; i++) {
		int ret = plan_function(sysfs, &functions[i], &entries[i], err);
		if (ret < 0)
			return ret;
		if (is_ours(entries, i, entries[i].bdf))
			return vg_error_set(err, EINVAL, "%s is listed twice", entries[i].bdf);
	}
	return check_groups_viable(sysfs, entries, n, err);
}

int vg_vfio_guard_bind_with_hooks(const struct vg_sysfs *sysfs, const char *journal_path,
				  const struct vg_bdf *functions, size_t n_functions,
				  int write_timeout_ms, const char *dev_root,
				  const struct vg_vfio_guard_hooks *hooks,
				  struct vg_vfio_guard **out, struct vg_error **err)
{
	if (n_functions == 0)
		return vg_error_set(err, EINVAL, "vfio bind: no functions");
	cleanup_free struct vg_bind_journal_entry *entries = calloc(n_functions, sizeof(*entries));
	if (entries == NULL)
		return vg_error_set(err, ENOMEM, "out of memory");
	int ret = plan_all(sysfs, functions, n_functions, entries, err);
	if (ret < 0) {
		vg_error_prefix(err, "vfio bind");
		return ret;
	}

	cleanup_vfio_guard struct vg_vfio_guard *guard = calloc(1, sizeof(*guard));
	if (guard == NULL)
		return vg_error_set(err, ENOMEM, "out of memory");
	guard->sysfs = *sysfs;
	guard->write_timeout_ms = write_timeout_ms;
	/* The last moment nothing has changed: from here on, the journal is the way back. */
	ret = vg_bind_journal_create(journal_path, entries, n_functions, &guard->journal, err);
	if (ret < 0) {
		vg_error_prefix(err, "vfio bind");
		return ret;
	}

	for (size_t i = 0; i < n_functions; i++) {
		ret = bind_function(guard, i, hooks, err);
		if (ret < 0) {
			vg_error_prefix(err, "vfio bind %s", entries[i].bdf);
			unwind(guard, i + 1);
			return ret;
		}
	}
	ret = check_vfio_nodes(guard, dev_root, err);
	if (ret < 0) {
		vg_error_prefix(err, "vfio bind");
		unwind(guard, n_functions);
		return ret;
	}
	*out = TAKE_PTR(guard);
	return 0;
}

int vg_vfio_guard_bind(const struct vg_sysfs *sysfs, const char *journal_path,
		       const struct vg_bdf *functions, size_t n_functions, int write_timeout_ms,
		       const char *dev_root, struct vg_vfio_guard **out, struct vg_error **err)
{
	return vg_vfio_guard_bind_with_hooks(sysfs, journal_path, functions, n_functions,
					     write_timeout_ms, dev_root, NULL, out, err);
}
