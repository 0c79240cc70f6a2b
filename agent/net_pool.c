#include "agent/net_pool.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/error.h"

int vg_net_pool_parse(const char *cidr, struct vg_net_pool *pool, struct vg_error **err)
{
	char addr[32];
	const char *slash = strchr(cidr, '/');
	char *end = NULL;
	long len = slash ? strtol(slash + 1, &end, 10) : -1;
	if (slash == NULL || (size_t)(slash - cidr) >= sizeof(addr) || *end != '\0' || len < 8 ||
	    len > 30)
		return vg_error_set(err, EINVAL,
				    "network_pool '%s' is not an IPv4 CIDR between /8 and /30", cidr);
	memcpy(addr, cidr, (size_t)(slash - cidr));
	addr[slash - cidr] = '\0';
	struct in_addr in;
	if (inet_pton(AF_INET, addr, &in) != 1)
		return vg_error_set(err, EINVAL, "network_pool '%s': '%s' is not an IPv4 address",
				    cidr, addr);
	uint32_t mask = ~UINT32_C(0) << (32 - len);
	pool->base = ntohl(in.s_addr) & mask;
	pool->prefix_len = (int)len;
	return 0;
}

int vg_net_pool_take(const struct vg_net_pool *pool, const uint32_t *used, size_t n_used,
		     uint32_t *subnet, struct vg_error **err)
{
	uint64_t count = UINT64_C(1) << (30 - pool->prefix_len);
	for (uint64_t i = 0; i < count; i++) {
		uint32_t candidate = pool->base + (uint32_t)(i * 4);
		bool taken = false;
		for (size_t u = 0; u < n_used && !taken; u++)
			taken = used[u] == candidate;
		if (!taken) {
			*subnet = candidate;
			return 0;
		}
	}
	return vg_error_set(err, ENOSPC, "the network pool (/%d) has no free /30 left",
			    pool->prefix_len);
}

void vg_ipv4_format(uint32_t addr, char out[16])
{
	struct in_addr in = { .s_addr = htonl(addr) };
	inet_ntop(AF_INET, &in, out, 16);
}
