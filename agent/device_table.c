#include "agent/device_table.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/cleanup.h"
#include "lib/config.h"
#include "lib/error.h"
#include "lib/gpu_state.h"
#include "lib/process.h"
#include "lib/sysfs.h"

const char *vg_device_table_state(const struct vg_device_table *table, size_t pos)
{
	const struct vg_gpu *gpu = &table->scan.inventory->gpus[pos];
	if (gpu->state == VG_GPU_AVAILABLE &&
	    (table->owner[pos][0] != '\0' || table->kubelet[pos].held))
		return "allocated";
	return vg_gpu_state_name(gpu->state);
}

static uint64_t mix(uint64_t hash, const char *text)
{
	/* FNV-1a over every visible field: a cheap way to notice "something changed". */
	for (const char *p = text; *p; p++) {
		hash ^= (unsigned char)*p;
		hash *= 1099511628211ull;
	}
	return hash ^ 0xff;
}

bool vg_device_table_refresh(struct vg_device_table *table)
{
	const struct vg_inventory *inv = table->scan.inventory;
	uint64_t hash = 1469598103934665603ull;
	for (size_t i = 0; i < inv->n_gpus; i++) {
		const struct vg_gpu *gpu = &inv->gpus[i];
		struct vg_alloc_device *v = &table->view[i];
		v->bdf = gpu->fn.bdf;
		v->index = gpu->index;
		v->numa_node = gpu->numa_node;
		v->pcie_root = gpu->pcie_root;
		v->name = gpu->name;
		v->vendor_id = gpu->fn.vendor_id;
		v->device_id = gpu->fn.device_id;
		const struct vg_kubelet_hold *hold = &table->kubelet[i];
		v->free =
			gpu->state == VG_GPU_AVAILABLE && table->owner[i][0] == '\0' && !hold->held;
		if (v->free) {
			v->why_not_free = NULL;
		} else {
			if (table->owner[i][0] != '\0')
				snprintf(table->why[i], sizeof(table->why[i]),
					 "allocated to sandbox %s", table->owner[i]);
			else if (hold->held && gpu->state == VG_GPU_AVAILABLE)
				snprintf(table->why[i], sizeof(table->why[i]),
					 "allocated by the kubelet to %s%.270s",
					 hold->pod[0] ? "pod " : "a pod not yet known", hold->pod);
			else
				snprintf(table->why[i], sizeof(table->why[i]), "%s: %s",
					 vg_gpu_state_name(gpu->state),
					 gpu->n_reasons ? gpu->reasons[0] : "no reason recorded");
			v->why_not_free = table->why[i];
		}
		hash = mix(hash, gpu->fn.bdf);
		hash = mix(hash, vg_device_table_state(table, i));
		hash = mix(hash, gpu->n_reasons ? gpu->reasons[0] : "");
		hash = mix(hash, table->owner[i]);
		hash = mix(hash, hold->held ? "kubelet" : "");
		hash = mix(hash, hold->pod);
		hash = mix(hash, gpu->fn.driver);
	}
	if (hash == table->fingerprint && table->generation > 0)
		return false;
	table->fingerprint = hash;
	table->generation++;
	return true;
}

int vg_inventory_rescan(const struct vg_config *config, const struct vg_host_report *host,
			struct vg_node_scan *out, struct vg_error **err)
{
	memset(out, 0, sizeof(*out));
	out->host = *host;
	struct vg_sysfs sysfs;
	cleanup_pci_scanner struct vg_pci_scanner *scanner = NULL;
	int ret = vg_sysfs_init(&sysfs, config->sysfs_root, err);
	if (ret == 0)
		ret = vg_pci_scanner_new(&sysfs, config->pci_ids[0] ? config->pci_ids : NULL, &scanner,
					 err);
	if (ret == 0)
		ret = vg_inventory_scan(scanner, &config->filter, &out->inventory, err);
	if (ret < 0)
		return ret;
	struct vg_gpu_policy policy = {
		.allow_boot_vga = config->allow_boot_vga,
		.vfio_pci_usable = out->host.vfio_pci_usable,
		.vfio_pci_problem = out->host.vfio_pci_problem,
	};
	vg_inventory_classify(out->inventory, &policy);
	return 0;
}

int vg_device_table_install(struct vg_device_table *table, struct vg_node_scan *scan,
			    struct vg_error **err)
{
	size_t n = scan->inventory->n_gpus;
	char(*owner)[VG_OWNER_MAX] = calloc(n ? n : 1, sizeof(*owner));
	struct vg_kubelet_hold *kubelet = calloc(n ? n : 1, sizeof(*kubelet));
	struct vg_alloc_device *view = calloc(n ? n : 1, sizeof(*view));
	char(*why)[320] = calloc(n ? n : 1, sizeof(*why));
	if (owner == NULL || kubelet == NULL || view == NULL || why == NULL) {
		free(owner);
		free(kubelet);
		free(view);
		free(why);
		vg_node_scan_clear(scan);
		return vg_error_set(err, ENOMEM, "out of memory");
	}
	/* Ownership follows the BDF across rescans: indexes may move when a GPU vanishes. */
	for (size_t i = 0; i < n; i++) {
		int old = table->scan.inventory
				  ? vg_device_table_find(table, scan->inventory->gpus[i].fn.bdf)
				  : -1;
		if (old >= 0) {
			memcpy(owner[i], table->owner[old], VG_OWNER_MAX);
			kubelet[i] = table->kubelet[old];
		}
	}
	vg_node_scan_clear(&table->scan);
	free(table->owner);
	free(table->kubelet);
	free(table->view);
	free(table->why);
	table->scan = *scan;
	memset(scan, 0, sizeof(*scan));
	table->owner = owner;
	table->kubelet = kubelet;
	table->view = view;
	table->why = why;
	vg_device_table_refresh(table);
	return 0;
}

int vg_device_table_scan(struct vg_device_table *table, const struct vg_config *config,
			 bool with_host_checks, struct vg_error **err)
{
	struct vg_node_scan scan;
	int ret = with_host_checks || table->scan.inventory == NULL
			  ? vg_node_scan_run(config, &scan, err)
			  : vg_inventory_rescan(config, &table->scan.host, &scan, err);
	if (ret < 0) {
		vg_node_scan_clear(&scan);
		return ret;
	}
	return vg_device_table_install(table, &scan, err);
}

void vg_device_table_clear(struct vg_device_table *table)
{
	vg_node_scan_clear(&table->scan);
	free(table->owner);
	free(table->kubelet);
	free(table->view);
	free(table->why);
	memset(table, 0, sizeof(*table));
}

int vg_device_table_find(const struct vg_device_table *table, const char *bdf)
{
	const struct vg_inventory *inv = table->scan.inventory;
	for (size_t i = 0; inv && i < inv->n_gpus; i++)
		if (strcasecmp(inv->gpus[i].fn.bdf, bdf) == 0)
			return (int)i;
	return -1;
}

void vg_device_table_set_owner(struct vg_device_table *table, size_t pos, const char *sandbox_id)
{
	snprintf(table->owner[pos], VG_OWNER_MAX, "%s", sandbox_id ? sandbox_id : "");
}

void vg_device_table_release(struct vg_device_table *table, const char *sandbox_id)
{
	const struct vg_inventory *inv = table->scan.inventory;
	for (size_t i = 0; inv && i < inv->n_gpus; i++)
		if (strcmp(table->owner[i], sandbox_id) == 0)
			table->owner[i][0] = '\0';
}

void vg_device_table_hold_for_kubelet(struct vg_device_table *table, size_t pos, const char *pod,
				      bool listed)
{
	struct vg_kubelet_hold *hold = &table->kubelet[pos];
	if (!listed)
		hold->since_ns = vg_monotonic_ns();
	hold->held = true;
	hold->listed = listed; /* a new Allocate starts a new grace, even for a listed GPU */
	/* An Allocate names no pod: the next List does. */
	snprintf(hold->pod, sizeof(hold->pod), "%s", pod ? pod : "");
}

void vg_device_table_drop_kubelet_hold(struct vg_device_table *table, size_t pos)
{
	memset(&table->kubelet[pos], 0, sizeof(table->kubelet[pos]));
}
