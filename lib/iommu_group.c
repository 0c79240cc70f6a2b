#include "lib/iommu_group.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/cleanup.h"
#include "lib/error.h"
#include "lib/sysfs.h"

void vg_iommu_group_clear(struct vg_iommu_group *group)
{
	free(group->regions);
	free(group->members);
	memset(group, 0, sizeof(*group));
	group->number = -1;
}

int vg_iommu_parse_reserved_regions(const char *text, struct vg_reserved_region **out,
				    size_t *out_count, struct vg_error **err)
{
	size_t cap = 0, count = 0;
	cleanup_free struct vg_reserved_region *regions = NULL;
	const char *line = text;
	while (line != NULL && *line != '\0') {
		const char *next = strchr(line, '\n');
		size_t len = next ? (size_t)(next - line) : strlen(line);
		if (len > 0) {
			char buf[160];
			if (len >= sizeof(buf))
				return vg_error_set(err, EINVAL, "reserved region line too long");
			memcpy(buf, line, len);
			buf[len] = '\0';
			struct vg_reserved_region r = { 0 };
			char type[sizeof(r.type)];
			int consumed = 0;
			if (sscanf(buf, "%" SCNx64 " %" SCNx64 " %23s%n", &r.start, &r.end, type,
				   &consumed) != 3 ||
			    buf[consumed] != '\0')
				return vg_error_set(err, EINVAL, "malformed reserved region '%s'",
						    buf);
			memcpy(r.type, type, sizeof(r.type));
			if (count == cap) {
				cap = cap ? cap * 2 : 4;
				struct vg_reserved_region *grown =
					realloc(regions, cap * sizeof(*regions));
				if (grown == NULL)
					return vg_error_set(err, ENOMEM, "out of memory");
				regions = grown;
			}
			regions[count++] = r;
		}
		line = next ? next + 1 : NULL;
	}
	*out = TAKE_PTR(regions);
	*out_count = count;
	return 0;
}

static int compare_functions(const void *a, const void *b)
{
	const struct vg_pci_function *fa = a, *fb = b;
	return vg_bdf_compare(&fa->addr, &fb->addr);
}

static int read_members(const struct vg_sysfs *sysfs, int number, vg_function_lookup_fn lookup,
			void *lookup_ctx, struct vg_iommu_group *group, struct vg_error **err)
{
	char path[PATH_MAX];
	int ret = vg_sysfs_path(sysfs, path, sizeof(path), err, "kernel/iommu_groups/%d/devices",
				number);
	if (ret < 0)
		return ret;
	cleanup_dir DIR *dir = opendir(path);
	if (dir == NULL)
		return vg_error_set_errno(err, errno, "list IOMMU group %d (%s)", number, path);
	size_t cap = 0;
	struct dirent *entry;
	while ((entry = readdir(dir)) != NULL) {
		if (entry->d_name[0] == '.')
			continue;
		struct vg_pci_function member = { 0 };
		if (vg_bdf_parse(entry->d_name, false, &member.addr, NULL) < 0)
			continue;
		vg_bdf_format(&member.addr, member.bdf);
		lookup(lookup_ctx, &member);
		if (group->n_members == cap) {
			cap = cap ? cap * 2 : 4;
			struct vg_pci_function *grown =
				realloc(group->members, cap * sizeof(*group->members));
			if (grown == NULL)
				return vg_error_set(err, ENOMEM, "out of memory");
			group->members = grown;
		}
		group->members[group->n_members++] = member;
	}
	if (group->n_members > 1)
		qsort(group->members, group->n_members, sizeof(*group->members),
		      compare_functions);
	return 0;
}

int vg_iommu_group_read(const struct vg_sysfs *sysfs, int number, vg_function_lookup_fn lookup,
			void *lookup_ctx, struct vg_iommu_group *group, struct vg_error **err)
{
	vg_iommu_group_clear(group);
	group->number = number;
	char rel[64], text[4096];
	snprintf(rel, sizeof(rel), "kernel/iommu_groups/%d/type", number);
	/* Kernels before 5.6 have no type attribute; an empty type means "not reported". */
	if (vg_sysfs_read(sysfs, rel, group->type, sizeof(group->type), NULL) < 0)
		group->type[0] = '\0';

	snprintf(rel, sizeof(rel), "kernel/iommu_groups/%d/reserved_regions", number);
	if (vg_sysfs_read(sysfs, rel, text, sizeof(text), NULL) == 0) {
		int ret = vg_iommu_parse_reserved_regions(text, &group->regions, &group->n_regions,
							  err);
		if (ret < 0)
			return vg_error_prefix(err, "IOMMU group %d", number);
	}
	return read_members(sysfs, number, lookup, lookup_ctx, group, err);
}
