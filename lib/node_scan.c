#include "lib/node_scan.h"

#include <stdlib.h>
#include <string.h>

#include "lib/config.h"
#include "lib/error.h"
#include "lib/gpu_state.h"
#include "lib/sysfs.h"

int vg_node_scan_run(const struct vg_config *config, struct vg_node_scan *scan,
		     struct vg_error **err)
{
	memset(scan, 0, sizeof(*scan));
	struct vg_sysfs sysfs;
	int ret = vg_sysfs_init(&sysfs, config->sysfs_root, err);
	if (ret < 0)
		return ret;
	struct vg_host_env env = {
		.sysfs = &sysfs,
		.dev_root = config->dev_root,
		.proc_root = config->proc_root,
		.modules_dir = config->modules_dir[0] ? config->modules_dir : NULL,
		.qemu_binary = config->qemu_binary[0] ? config->qemu_binary : NULL,
	};
	vg_host_checks_run(&env, &scan->host);

	cleanup_pci_scanner struct vg_pci_scanner *scanner = NULL;
	ret = vg_pci_scanner_new(&sysfs, config->pci_ids[0] ? config->pci_ids : NULL, &scanner,
				 err);
	if (ret < 0)
		return ret;
	ret = vg_inventory_scan(scanner, &config->filter, &scan->inventory, err);
	if (ret < 0)
		return ret;
	struct vg_gpu_policy policy = {
		.allow_boot_vga = config->allow_boot_vga,
		.vfio_pci_usable = scan->host.vfio_pci_usable,
		.vfio_pci_problem = scan->host.vfio_pci_problem,
	};
	vg_inventory_classify(scan->inventory, &policy);
	return 0;
}

void vg_node_scan_clear(struct vg_node_scan *scan)
{
	vg_inventory_free(scan->inventory);
	scan->inventory = NULL;
}

bool vg_node_scan_ready(const struct vg_node_scan *scan)
{
	for (size_t i = 0; i < scan->host.n_checks; i++)
		if (scan->host.checks[i].status == VG_CHECK_FAIL)
			return false;
	for (size_t i = 0; scan->inventory && i < scan->inventory->n_gpus; i++)
		if (scan->inventory->gpus[i].state == VG_GPU_AVAILABLE)
			return true;
	return false;
}
