/* A sandbox's TAP device: opened from /dev/net/tun, addressed with libnl-route, handed to QEMU
 * as an fd so it disappears with its last holder. */
#pragma once

#include <stdint.h>

struct vg_error;
struct vg_spec_network;

#define VG_TAP_NAME_MAX 16 /* IFNAMSIZ */

struct vg_tap {
	int fd; /* -1 when closed */
	char name[VG_TAP_NAME_MAX];
	int ifindex;
};

/* "vg-" plus a short stable hash of the sandbox id: unique per sandbox, within IFNAMSIZ. */
void vg_tap_name_for(const char *sandbox_id, char out[VG_TAP_NAME_MAX]);
/* Creates the TAP (non-persistent), sets host_addr/prefix and brings the link up. On failure
 * nothing is left behind. */
int vg_tap_open(const char *name, const struct vg_spec_network *net, struct vg_tap *tap,
		struct vg_error **err);
/* Closes our fd. The device goes away once QEMU, its other holder, has exited. */
void vg_tap_close(struct vg_tap *tap);
/* Deletes a leftover device by name through netlink; a missing device is not an error. */
int vg_tap_delete(const char *name, struct vg_error **err);
/* 1 when a link with this name exists, 0 when not, <0 on error. */
int vg_link_exists(const char *name, struct vg_error **err);
