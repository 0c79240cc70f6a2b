/* A sysfs tree rooted anywhere: "/sys" on a host, a fixture or a captured tree in tests. */
#pragma once

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct vg_error;

struct vg_sysfs {
	char root[PATH_MAX]; /* no trailing slash */
};

int vg_sysfs_init(struct vg_sysfs *sysfs, const char *root, struct vg_error **err);
/* Joins root and a printf-style relative path; fails with ENAMETOOLONG. */
int vg_sysfs_path(const struct vg_sysfs *sysfs, char *buf, size_t size, struct vg_error **err,
		  const char *fmt, ...) __attribute__((format(printf, 5, 6)));
bool vg_sysfs_exists(const struct vg_sysfs *sysfs, const char *rel);

/* Reads an attribute, trailing whitespace removed. -ENOENT when it is missing. */
int vg_sysfs_read(const struct vg_sysfs *sysfs, const char *rel, char *buf, size_t size,
		  struct vg_error **err);
/* Numbers in any base strtoll accepts ("0x10de", "-1", "4096"). */
int vg_sysfs_read_long(const struct vg_sysfs *sysfs, const char *rel, long long *out,
		       struct vg_error **err);
/* The last component of a symlink's target (a driver or group name). -ENOENT when absent. */
int vg_sysfs_link_name(const struct vg_sysfs *sysfs, const char *rel, char *buf, size_t size,
		       struct vg_error **err);
/* The symlink target with the root prefix removed, e.g. "devices/pci0000:00/0000:00:01.0/...". */
int vg_sysfs_resolve(const struct vg_sysfs *sysfs, const char *rel, char *buf, size_t size,
		     struct vg_error **err);
/* One write(2) of the whole value, as the kernel expects for control files. */
int vg_sysfs_write(const struct vg_sysfs *sysfs, const char *rel, const char *value,
		   struct vg_error **err);

/* Parses a kernel number string strictly (whitespace trimmed). */
int vg_parse_long(const char *s, long long *out, struct vg_error **err);
