#include "shim/tap.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdbool.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <netlink/netlink.h>
#include <netlink/route/addr.h>
#include <netlink/route/link.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "lib/cleanup.h"
#include "lib/error.h"
#include "shim/spec.h"

void vg_tap_name_for(const char *sandbox_id, char out[VG_TAP_NAME_MAX])
{
	/* FNV-1a: stable across releases, which matters because the agent deletes leftovers by
	 * name after a crash. */
	uint32_t hash = 2166136261u;
	for (const char *p = sandbox_id; *p; p++) {
		hash ^= (unsigned char)*p;
		hash *= 16777619u;
	}
	snprintf(out, VG_TAP_NAME_MAX, "vg-%08x", hash);
}

static void free_socket(struct nl_sock **sock)
{
	if (*sock)
		nl_socket_free(*sock);
}
static void free_link(struct rtnl_link **link)
{
	if (*link)
		rtnl_link_put(*link);
}
static void free_addr(struct rtnl_addr **addr)
{
	if (*addr)
		rtnl_addr_put(*addr);
}
static void free_nl_addr(struct nl_addr **addr)
{
	if (*addr)
		nl_addr_put(*addr);
}
#define cleanup_nl_sock __attribute__((cleanup(free_socket)))
#define cleanup_rtnl_link __attribute__((cleanup(free_link)))
#define cleanup_rtnl_addr __attribute__((cleanup(free_addr)))
#define cleanup_nl_addr __attribute__((cleanup(free_nl_addr)))

static int route_socket(struct nl_sock **out, struct vg_error **err)
{
	struct nl_sock *sock = nl_socket_alloc();
	if (sock == NULL)
		return vg_error_set(err, ENOMEM, "libnl: cannot allocate a socket");
	int ret = nl_connect(sock, NETLINK_ROUTE);
	if (ret < 0) {
		nl_socket_free(sock);
		return vg_error_set(err, EIO, "libnl: connect to rtnetlink: %s", nl_geterror(ret));
	}
	*out = sock;
	return 0;
}

static int configure_link(struct vg_tap *tap, const struct vg_spec_network *net,
			  struct vg_error **err)
{
	cleanup_nl_sock struct nl_sock *sock = NULL;
	int ret = route_socket(&sock, err);
	if (ret < 0)
		return ret;
	cleanup_rtnl_link struct rtnl_link *current = NULL;
	ret = rtnl_link_get_kernel(sock, 0, tap->name, &current);
	if (ret < 0)
		return vg_error_set(err, EIO, "libnl: look up %s: %s", tap->name, nl_geterror(ret));
	tap->ifindex = rtnl_link_get_ifindex(current);

	cleanup_rtnl_addr struct rtnl_addr *addr = rtnl_addr_alloc();
	uint32_t host_be = htonl(net->host_addr);
	cleanup_nl_addr struct nl_addr *local = nl_addr_build(AF_INET, &host_be, sizeof(host_be));
	if (addr == NULL || local == NULL)
		return vg_error_set(err, ENOMEM, "libnl: out of memory");
	nl_addr_set_prefixlen(local, net->prefix_len);
	rtnl_addr_set_ifindex(addr, tap->ifindex);
	rtnl_addr_set_family(addr, AF_INET);
	rtnl_addr_set_local(addr, local);
	ret = rtnl_addr_add(sock, addr, 0);
	if (ret < 0)
		return vg_error_set(err, EIO, "libnl: add address to %s: %s", tap->name,
				    nl_geterror(ret));

	cleanup_rtnl_link struct rtnl_link *change = rtnl_link_alloc();
	if (change == NULL)
		return vg_error_set(err, ENOMEM, "libnl: out of memory");
	rtnl_link_set_flags(change, IFF_UP);
	ret = rtnl_link_change(sock, current, change, 0);
	if (ret < 0)
		return vg_error_set(err, EIO, "libnl: bring %s up: %s", tap->name,
				    nl_geterror(ret));
	return 0;
}

int vg_tap_open(const char *name, const struct vg_spec_network *net, struct vg_tap *tap,
		struct vg_error **err)
{
	tap->fd = -1;
	if (strlen(name) >= VG_TAP_NAME_MAX)
		return vg_error_set(err, EINVAL, "TAP name '%s' is longer than %d characters", name,
				    VG_TAP_NAME_MAX - 1);
	cleanup_close int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return vg_error_set_errno(err, errno, "open /dev/net/tun");
	struct ifreq ifr = { 0 };
	/* vnet headers let QEMU offload checksums; IFF_NO_PI matches what QEMU expects. */
	ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
	memcpy(ifr.ifr_name, name, strlen(name) + 1);
	if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
		int saved = errno;
		if (saved == EBUSY)
			return vg_error_set(err, EBUSY,
					    "TAP %s is already in use: another sandbox with the same "
					    "id is running, or a leftover holder is still alive",
					    name);
		return vg_error_set_errno(err, saved, "create TAP %s", name);
	}
	snprintf(tap->name, sizeof(tap->name), "%s", ifr.ifr_name);
	/* Closing the only fd on failure removes the non-persistent device again. */
	int ret = configure_link(tap, net, err);
	if (ret < 0)
		return ret;
	tap->fd = TAKE_FD(fd);
	return 0;
}

void vg_tap_close(struct vg_tap *tap)
{
	if (tap->fd >= 0)
		close(tap->fd);
	tap->fd = -1;
}

int vg_link_exists(const char *name, struct vg_error **err)
{
	cleanup_nl_sock struct nl_sock *sock = NULL;
	int ret = route_socket(&sock, err);
	if (ret < 0)
		return ret;
	cleanup_rtnl_link struct rtnl_link *link = NULL;
	ret = rtnl_link_get_kernel(sock, 0, name, &link);
	if (ret == -NLE_NODEV || ret == -NLE_OBJ_NOTFOUND)
		return 0;
	if (ret < 0)
		return vg_error_set(err, EIO, "libnl: look up %s: %s", name, nl_geterror(ret));
	return 1;
}

int vg_tap_delete(const char *name, struct vg_error **err)
{
	cleanup_nl_sock struct nl_sock *sock = NULL;
	int ret = route_socket(&sock, err);
	if (ret < 0)
		return ret;
	cleanup_rtnl_link struct rtnl_link *link = rtnl_link_alloc();
	if (link == NULL)
		return vg_error_set(err, ENOMEM, "libnl: out of memory");
	rtnl_link_set_name(link, name);
	ret = rtnl_link_delete(sock, link);
	if (ret < 0 && ret != -NLE_NODEV && ret != -NLE_OBJ_NOTFOUND)
		return vg_error_set(err, EIO, "libnl: delete %s: %s", name, nl_geterror(ret));
	return 0;
}
