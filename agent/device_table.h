/* The node's GPUs as the agent serves them: the last inventory scan, plus who holds each GPU. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "agent/allocator.h"
#include "lib/node_scan.h"

struct vg_config;
struct vg_error;

#define VG_OWNER_MAX 65
#define VG_KUBELET_POD_MAX 512 /* "namespace/name" */

/* A GPU the kubelet handed to a pod (seen in Allocate or in PodResources): our own API must not
 * hand it out as well. */
struct vg_kubelet_hold {
	bool held;
	bool listed;	  /* PodResources listed it: cleared as soon as a List misses it */
	int64_t since_ns; /* CLOCK_MONOTONIC of the Allocate that marked it */
	char pod[VG_KUBELET_POD_MAX]; /* "" until PodResources names the pod */
};

struct vg_device_table {
	struct vg_node_scan scan; /* host checks and the inventory with states and reasons */
	char (*owner)[VG_OWNER_MAX]; /* per GPU: the sandbox holding it, "" when none */
	struct vg_kubelet_hold *kubelet; /* per GPU */
	uint64_t generation; /* bumped whenever anything a client sees changes */
	uint64_t fingerprint;
	/* For the allocator: a view per GPU, and the text of why each one is not free. */
	struct vg_alloc_device *view;
	char (*why)[320];
};

/* Scans the node (host checks included); owners of GPUs that are still there are kept. */
int vg_device_table_scan(struct vg_device_table *table, const struct vg_config *config,
			 bool with_host_checks, struct vg_error **err);
/* A GPU-only rescan that touches no table: safe on any thread. host supplies the vfio-pci
 * verdict of the last full scan. */
int vg_inventory_rescan(const struct vg_config *config, const struct vg_host_report *host,
			struct vg_node_scan *out, struct vg_error **err);
/* Takes over a scan made by vg_inventory_rescan (or vg_node_scan_run). */
int vg_device_table_install(struct vg_device_table *table, struct vg_node_scan *scan,
			    struct vg_error **err);
void vg_device_table_clear(struct vg_device_table *table);
/* Position of the GPU with this BDF, or -1. */
int vg_device_table_find(const struct vg_device_table *table, const char *bdf);
void vg_device_table_set_owner(struct vg_device_table *table, size_t pos, const char *sandbox_id);
/* Frees every GPU held by this sandbox. */
void vg_device_table_release(struct vg_device_table *table, const char *sandbox_id);
/* Marks a GPU as the kubelet's; pod is "namespace/name", or NULL when not known (Allocate).
 * listed says the mark came from PodResources. */
void vg_device_table_hold_for_kubelet(struct vg_device_table *table, size_t pos, const char *pod,
				      bool listed);
void vg_device_table_drop_kubelet_hold(struct vg_device_table *table, size_t pos);
/* The state a client sees: "allocated" while a sandbox or the kubelet holds an otherwise
 * available GPU. */
const char *vg_device_table_state(const struct vg_device_table *table, size_t pos);
/* Rebuilds the allocator's view and bumps the generation if anything visible changed.
 * Returns true when it did. */
bool vg_device_table_refresh(struct vg_device_table *table);
