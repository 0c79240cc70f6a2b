/* Turns what the inventory saw into a state and reasons a user can act on. */
#pragma once

#include <stdbool.h>

#include "lib/inventory.h"

struct vg_gpu_policy {
	bool allow_boot_vga;
	bool vfio_pci_usable;
	const char *vfio_pci_problem; /* why not, when vfio_pci_usable is false */
};

#define VG_REASON_IOMMU_OFF                                                                        \
	"IOMMU is off; boot with intel_iommu=on or amd_iommu=on (or iommu.passthrough=0 on arm64)"

void vg_inventory_classify(struct vg_inventory *inventory, const struct vg_gpu_policy *policy);
/* Drivers that leave a group viable for VFIO when they hold a non-companion member. */
bool vg_driver_is_vfio_safe(const char *driver);
