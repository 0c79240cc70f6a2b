/* One pass over the node: host checks, GPU inventory, and each GPU's state and reasons. */
#pragma once

#include "lib/host_checks.h"
#include "lib/inventory.h"

struct vg_config;
struct vg_error;

struct vg_node_scan {
	struct vg_host_report host;
	struct vg_inventory *inventory;
};

int vg_node_scan_run(const struct vg_config *config, struct vg_node_scan *scan,
		     struct vg_error **err);
void vg_node_scan_clear(struct vg_node_scan *scan);
/* Passthrough can work: no failed host check and at least one available GPU. */
bool vg_node_scan_ready(const struct vg_node_scan *scan);
