/* Which PCI functions count as GPUs: (vendor and class) or vendor:device or BDF. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/bdf.h"

struct vg_error;

#define VG_FILTER_MAX 32

struct vg_pci_id {
	uint16_t vendor;
	uint16_t device;
};

struct vg_gpu_filter {
	uint16_t vendors[VG_FILTER_MAX];
	size_t n_vendors;
	uint16_t classes[VG_FILTER_MAX]; /* base class and subclass, e.g. 0x0302 */
	size_t n_classes;
	struct vg_pci_id ids[VG_FILTER_MAX];
	size_t n_ids;
	struct vg_bdf bdfs[VG_FILTER_MAX];
	size_t n_bdfs;
};

/* NVIDIA (0x10de), VGA (0x0300) and 3D controllers (0x0302). */
void vg_gpu_filter_default(struct vg_gpu_filter *filter);
void vg_gpu_filter_clear(struct vg_gpu_filter *filter);
/* Each adds one entry parsed strictly from its text form ("0x10de", "0x0302", "10de:2330",
 * "0000:3b:00.0"). */
int vg_gpu_filter_add_vendor(struct vg_gpu_filter *filter, const char *text, struct vg_error **err);
int vg_gpu_filter_add_class(struct vg_gpu_filter *filter, const char *text, struct vg_error **err);
int vg_gpu_filter_add_id(struct vg_gpu_filter *filter, const char *text, struct vg_error **err);
int vg_gpu_filter_add_bdf(struct vg_gpu_filter *filter, const char *text, struct vg_error **err);
/* class_code is the 24-bit class (base, sub, prog-if). */
bool vg_gpu_filter_match(const struct vg_gpu_filter *filter, const struct vg_bdf *bdf,
			 uint16_t vendor, uint16_t device, uint32_t class_code);
