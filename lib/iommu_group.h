/* Reading an IOMMU group: its type, reserved regions and member functions. */
#pragma once

#include "lib/inventory.h"

struct vg_sysfs;
struct vg_error;

/* Classes and drivers of members come from the caller's table of known functions. */
typedef void (*vg_function_lookup_fn)(void *ctx, struct vg_pci_function *member);

/* Reads group `number` into *group; a missing group directory is an error. */
int vg_iommu_group_read(const struct vg_sysfs *sysfs, int number, vg_function_lookup_fn lookup,
			void *lookup_ctx, struct vg_iommu_group *group, struct vg_error **err);
/* Parses "0x... 0x... type" lines as the kernel writes reserved_regions. */
int vg_iommu_parse_reserved_regions(const char *text, struct vg_reserved_region **out,
				    size_t *out_count, struct vg_error **err);
void vg_iommu_group_clear(struct vg_iommu_group *group);
