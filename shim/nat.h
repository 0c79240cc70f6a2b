/* Optional per-sandbox NAT: one nftables table per sandbox, removed at teardown. */
#pragma once

#include <stddef.h>
#include <stdint.h>

struct vg_error;

void vg_nat_table_name(const char *sandbox_id, char *out, size_t size);
int vg_nat_add(const char *sandbox_id, uint32_t guest_addr, const char *tap_name,
	       struct vg_error **err);
/* A table that is already gone is not an error. */
int vg_nat_remove(const char *sandbox_id, struct vg_error **err);
