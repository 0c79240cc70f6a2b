/* The node's GPUs as read from libpci and sysfs: one record per GPU, in stable BDF order. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/bdf.h"

struct vg_error;
struct vg_gpu_filter;
struct vg_sysfs;

#define VG_NAME_MAX 64
#define VG_BAR_COUNT 6
#define VG_MAX_REASONS 8

enum vg_gpu_state {
	VG_GPU_AVAILABLE,
	VG_GPU_ALLOCATED,
	VG_GPU_UNHEALTHY,
	VG_GPU_UNSUPPORTED,
};

struct vg_pci_function {
	struct vg_bdf addr;
	char bdf[VG_BDF_STRLEN];
	uint16_t vendor_id;
	uint16_t device_id;
	uint32_t class_code; /* 24-bit: base, subclass, prog-if */
	char driver[VG_NAME_MAX]; /* "" when no driver is bound */
};

struct vg_reserved_region {
	uint64_t start;
	uint64_t end;
	char type[24]; /* msi, direct, direct-relaxable, reserved */
};

struct vg_iommu_group {
	int number; /* -1: the device has no group (IOMMU off) */
	char type[24];
	struct vg_reserved_region *regions;
	size_t n_regions;
	struct vg_pci_function *members; /* sorted by BDF, the GPU included */
	size_t n_members;
};

struct vg_gpu {
	int index; /* position in BDF order, stable across scans of the same node */
	struct vg_pci_function fn;
	uint16_t subsys_vendor_id;
	uint16_t subsys_device_id;
	char name[160];
	char vendor_name[96];
	bool name_from_pci_ids;
	int numa_node; /* -1: unknown, never folded into 0 */
	char pcie_root[32]; /* "pci0000:00" */
	uint64_t bar_sizes[VG_BAR_COUNT];
	char driver_override[VG_NAME_MAX]; /* "" when unset */
	int boot_vga; /* -1 when the attribute is absent */
	char reset_method[VG_NAME_MAX];
	bool config_readable; /* false: config space reads back all ones */
	struct vg_iommu_group group;
	struct vg_pci_function *companions;
	size_t n_companions;
	enum vg_gpu_state state;
	char *reasons[VG_MAX_REASONS]; /* reasons[0] is the one shown in tables */
	size_t n_reasons;
};

struct vg_inventory {
	struct vg_gpu *gpus;
	size_t n_gpus;
	size_t n_functions; /* every PCI function seen, GPUs included */
};

/* A scanner keeps the pci.ids database loaded across scans. */
struct vg_pci_scanner;

int vg_pci_scanner_new(const struct vg_sysfs *sysfs, const char *pci_ids_path,
		       struct vg_pci_scanner **out, struct vg_error **err);
void vg_pci_scanner_free(struct vg_pci_scanner *scanner);
int vg_inventory_scan(struct vg_pci_scanner *scanner, const struct vg_gpu_filter *filter,
		      struct vg_inventory **out, struct vg_error **err);
void vg_inventory_free(struct vg_inventory *inventory);

const char *vg_gpu_state_name(enum vg_gpu_state state);
/* Finds a GPU by BDF (any case) or by its decimal index. */
const struct vg_gpu *vg_inventory_find(const struct vg_inventory *inventory, const char *id);

static inline void vg_inventory_freep(struct vg_inventory **inventory)
{
	vg_inventory_free(*inventory);
}
static inline void vg_pci_scanner_freep(struct vg_pci_scanner **scanner)
{
	vg_pci_scanner_free(*scanner);
}
#define cleanup_inventory __attribute__((cleanup(vg_inventory_freep)))
#define cleanup_pci_scanner __attribute__((cleanup(vg_pci_scanner_freep)))
