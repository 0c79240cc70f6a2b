/* PCI addresses in the kernel's "DDDD:BB:DD.F" form, parsed strictly. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct vg_error;

struct vg_bdf {
	uint32_t domain;
	uint8_t bus;
	uint8_t device;
	uint8_t function;
};

/* "DDDD:BB:DD.F" plus NUL; VMD domains take up to 8 hex digits. */
#define VG_BDF_STRLEN 20

/* Accepts the full form, any case; "BB:DD.F" means domain 0 only when allow_short is set. */
int vg_bdf_parse(const char *s, bool allow_short, struct vg_bdf *out, struct vg_error **err);
bool vg_bdf_is_valid(const char *s);
void vg_bdf_format(const struct vg_bdf *bdf, char out[VG_BDF_STRLEN]);
int vg_bdf_compare(const struct vg_bdf *a, const struct vg_bdf *b);
bool vg_bdf_same_slot(const struct vg_bdf *a, const struct vg_bdf *b);
