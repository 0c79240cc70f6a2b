/* Which GPUs a sandbox gets: all or nothing, and close together (one NUMA node, then one PCIe
 * root, if the free GPUs allow it).
 *
 * The allocator is pure: it reads a table and writes indexes, and holds no lock. The agent calls
 * it only on its single loop thread and marks the chosen GPUs allocated before that thread does
 * anything else; that is what makes an allocation atomic. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "agent/gpu_request.h"

struct vg_error;

/* A view of one GPU for allocation decisions. */
struct vg_alloc_device {
	const char *bdf; /* canonical, lowercase */
	int index; /* the stable index */
	int numa_node; /* -1 unknown */
	const char *pcie_root; /* "pci0000:10", or "" when unknown */
	const char *name; /* product name */
	uint16_t vendor_id, device_id;
	bool free; /* available and held by neither a sandbox nor the kubelet */
	const char *why_not_free; /* "allocated to sandbox web-1", ...; NULL when free */
};

/* Whether one GPU satisfies every term of a selector. */
bool vg_selector_matches(const struct vg_selector *sel, const struct vg_alloc_device *dev);

/* Chooses the GPUs for a request. devices is the node's table in stable index (= BDF) order;
 * chosen must hold VG_REQ_MAX_GPUS entries and receives positions in devices, ascending (so in
 * BDF order). On failure nothing is written and the errno says why:
 *   ENOENT  a named GPU does not exist, or no GPU matches the selector;
 *   EINVAL  two items of vmgpu.io/gpu-devices name the same GPU;
 *   EBUSY   a named GPU is not free (the message gives its reason);
 *   ENOSPC  fewer free GPUs (matching the selector) than requested (the message gives reasons).
 * Among enough free GPUs the choice spans the fewest NUMA nodes, then the fewest PCIe roots,
 * then takes the lowest indexes: the same table and request always give the same answer. GPUs
 * of unknown NUMA node (-1) count as one node of their own, GPUs of unknown root ("") as one
 * root of their own within their node. */
int vg_allocate(const struct vg_alloc_device *devices, size_t n_devices,
		const struct vg_gpu_request *req, size_t *chosen, size_t *n_chosen,
		struct vg_error **err);

/* GetPreferredAllocation for the kubelet: exactly `size` of the `available` device IDs (BDFs),
 * every `must_include` ID among them, the rest chosen by the same topology rules as vg_allocate
 * (the whole set spans the fewest NUMA nodes, then roots, then the lowest indexes). It does not
 * look at `free`: the kubelet says what is available. chosen must hold `size` entries and
 * receives positions in devices, ascending. EINVAL when an ID is not a GPU of the table or is
 * listed twice, when a must_include ID is not available, when must_include holds more than
 * `size` IDs or when `size` exceeds the available IDs. Nothing is written on failure. */
int vg_prefer_allocation(const struct vg_alloc_device *devices, size_t n_devices,
			 const char *const *available, size_t n_available,
			 const char *const *must_include, size_t n_must, size_t size, size_t *chosen,
			 size_t *n_chosen, struct vg_error **err);
