/* The table of every PCI function one scan saw, shared by pci_scan.c and inventory.c. */
#pragma once

#include <pci/pci.h>

#include "lib/inventory.h"
#include "lib/sysfs.h"

struct vg_scan_entry {
	struct vg_pci_function fn;
	bool is_gpu;
	bool details_read; /* driver and full class */
	/* Filled for GPUs only. */
	int numa_node;
	int iommu_group; /* -1 when the device has none */
	uint16_t subsys_vendor_id;
	uint16_t subsys_device_id;
	uint64_t bar_sizes[VG_BAR_COUNT];
};

struct vg_scan_table {
	struct vg_scan_entry *entries; /* sorted by BDF */
	size_t count;
};

struct vg_pci_scanner {
	struct vg_sysfs sysfs;
	char bus_path[PATH_MAX];
	struct pci_access *names; /* long-lived: keeps pci.ids parsed between scans */
};

int vg_scan_table_collect(struct vg_pci_scanner *scanner, const struct vg_gpu_filter *filter,
			  struct vg_scan_table *table, struct vg_error **err);
void vg_scan_table_clear(struct vg_scan_table *table);
struct vg_scan_entry *vg_scan_table_find(struct vg_scan_table *table, const struct vg_bdf *bdf);
/* Reads the driver link and the full class on first use: most functions are never reported. */
void vg_scan_entry_load_details(const struct vg_sysfs *sysfs, struct vg_scan_entry *entry);
void vg_pci_lookup_names(struct vg_pci_scanner *scanner, struct vg_gpu *gpu);
