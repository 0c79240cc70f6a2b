/* One /30 per sandbox from the configured pool: host .1, guest .2. */
#pragma once

#include <stddef.h>
#include <stdint.h>

struct vg_error;

struct vg_net_pool {
	uint32_t base; /* host byte order */
	int prefix_len;
};

int vg_net_pool_parse(const char *cidr, struct vg_net_pool *pool, struct vg_error **err);
/* The first /30 not in `used` (network addresses of /30s already taken). ENOSPC when full. */
int vg_net_pool_take(const struct vg_net_pool *pool, const uint32_t *used, size_t n_used,
		     uint32_t *subnet, struct vg_error **err);
void vg_ipv4_format(uint32_t addr, char out[16]);
