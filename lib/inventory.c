#include "lib/inventory.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/cleanup.h"
#include "lib/error.h"
#include "lib/iommu_group.h"
#include "lib/pci_scan-priv.h"

struct member_lookup {
	struct vg_scan_table *table;
	const struct vg_sysfs *sysfs;
};

static void lookup_member(void *ctx, struct vg_pci_function *member)
{
	struct member_lookup *lookup = ctx;
	struct vg_scan_entry *entry = vg_scan_table_find(lookup->table, &member->addr);
	if (entry == NULL)
		return;
	vg_scan_entry_load_details(lookup->sysfs, entry);
	*member = entry->fn;
}

static void read_attr(const struct vg_sysfs *sysfs, const char *bdf, const char *attr, char *buf,
		      size_t size)
{
	char rel[128];
	snprintf(rel, sizeof(rel), "bus/pci/devices/%s/%s", bdf, attr);
	if (vg_sysfs_read(sysfs, rel, buf, size, NULL) < 0)
		buf[0] = '\0';
}

/* A device that dropped off the bus answers every config read with all ones. */
static bool config_space_answers(const struct vg_sysfs *sysfs, const char *bdf)
{
	char path[PATH_MAX];
	if (vg_sysfs_path(sysfs, path, sizeof(path), NULL, "bus/pci/devices/%s/config", bdf) < 0)
		return true;
	cleanup_close int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return true;
	unsigned char id[2];
	if (pread(fd, id, sizeof(id), 0) != (ssize_t)sizeof(id))
		return true;
	return !(id[0] == 0xff && id[1] == 0xff);
}

static void read_pcie_root(const struct vg_sysfs *sysfs, struct vg_gpu *gpu)
{
	char path[PATH_MAX], target[PATH_MAX];
	gpu->pcie_root[0] = '\0';
	if (vg_sysfs_path(sysfs, path, sizeof(path), NULL, "bus/pci/devices/%s", gpu->fn.bdf) < 0)
		return;
	ssize_t n = readlink(path, target, sizeof(target) - 1);
	if (n < 0)
		return;
	target[n] = '\0';
	/* The link reads "../../../devices/pci0000:00/0000:00:01.0/...": the component after
	 * "devices/" names the host bridge. */
	const char *root = strstr(target, "devices/pci");
	if (root == NULL)
		return;
	root += strlen("devices/");
	size_t len = strcspn(root, "/");
	if (len < sizeof(gpu->pcie_root)) {
		memcpy(gpu->pcie_root, root, len);
		gpu->pcie_root[len] = '\0';
	}
}

static bool is_companion_class(uint32_t class_code)
{
	uint8_t base = (uint8_t)(class_code >> 16), sub = (uint8_t)(class_code >> 8);
	/* Audio, USB and the USB-C (UCSI) serial-bus function ride along with a GPU. */
	return base == 0x04 || (base == 0x0c && (sub == 0x03 || sub == 0x80));
}

static bool has_companion(const struct vg_gpu *gpu, const struct vg_bdf *bdf)
{
	for (size_t i = 0; i < gpu->n_companions; i++)
		if (vg_bdf_compare(&gpu->companions[i].addr, bdf) == 0)
			return true;
	return false;
}

static int add_companion(struct vg_gpu *gpu, const struct vg_pci_function *fn,
			 struct vg_error **err)
{
	if (has_companion(gpu, &fn->addr))
		return 0;
	struct vg_pci_function *grown =
		realloc(gpu->companions, (gpu->n_companions + 1) * sizeof(*gpu->companions));
	if (grown == NULL)
		return vg_error_set(err, ENOMEM, "out of memory");
	gpu->companions = grown;
	gpu->companions[gpu->n_companions++] = *fn;
	return 0;
}

static int compare_functions(const void *a, const void *b)
{
	const struct vg_pci_function *fa = a, *fb = b;
	return vg_bdf_compare(&fa->addr, &fb->addr);
}

static int find_companions(const struct vg_sysfs *sysfs, struct vg_scan_table *table,
			   size_t gpu_pos, struct vg_gpu *gpu, struct vg_error **err)
{
	/* The table is sorted, so the other functions of the slot sit right next to the GPU. */
	size_t first = gpu_pos;
	while (first > 0 && vg_bdf_same_slot(&table->entries[first - 1].fn.addr, &gpu->fn.addr))
		first--;
	for (size_t i = first;
	     i < table->count && vg_bdf_same_slot(&table->entries[i].fn.addr, &gpu->fn.addr); i++) {
		struct vg_scan_entry *entry = &table->entries[i];
		if (i == gpu_pos || entry->is_gpu)
			continue;
		vg_scan_entry_load_details(sysfs, entry);
		int ret = add_companion(gpu, &entry->fn, err);
		if (ret < 0)
			return ret;
	}
	for (size_t i = 0; i < gpu->group.n_members; i++) {
		const struct vg_pci_function *member = &gpu->group.members[i];
		struct vg_scan_entry *entry = vg_scan_table_find(table, &member->addr);
		if (entry == NULL || entry->is_gpu || member->vendor_id != gpu->fn.vendor_id ||
		    !is_companion_class(member->class_code))
			continue;
		int ret = add_companion(gpu, member, err);
		if (ret < 0)
			return ret;
	}
	if (gpu->n_companions > 1)
		qsort(gpu->companions, gpu->n_companions, sizeof(*gpu->companions),
		      compare_functions);
	return 0;
}

static int build_gpu(struct vg_pci_scanner *scanner, struct vg_scan_table *table, size_t pos,
		     struct vg_gpu *gpu, struct vg_error **err)
{
	const struct vg_sysfs *sysfs = &scanner->sysfs;
	const struct vg_scan_entry *entry = &table->entries[pos];
	gpu->fn = entry->fn;
	gpu->subsys_vendor_id = entry->subsys_vendor_id;
	gpu->subsys_device_id = entry->subsys_device_id;
	gpu->numa_node = entry->numa_node;
	memcpy(gpu->bar_sizes, entry->bar_sizes, sizeof(gpu->bar_sizes));
	vg_pci_lookup_names(scanner, gpu);

	read_attr(sysfs, gpu->fn.bdf, "driver_override", gpu->driver_override,
		  sizeof(gpu->driver_override));
	if (strcmp(gpu->driver_override, "(null)") == 0)
		gpu->driver_override[0] = '\0';
	read_attr(sysfs, gpu->fn.bdf, "reset_method", gpu->reset_method,
		  sizeof(gpu->reset_method));
	char boot_vga[16];
	read_attr(sysfs, gpu->fn.bdf, "boot_vga", boot_vga, sizeof(boot_vga));
	gpu->boot_vga = boot_vga[0] == '\0' ? -1 : atoi(boot_vga);
	gpu->config_readable = config_space_answers(sysfs, gpu->fn.bdf);
	read_pcie_root(sysfs, gpu);

	gpu->group.number = -1;
	if (entry->iommu_group >= 0) {
		struct member_lookup lookup = { table, sysfs };
		int ret = vg_iommu_group_read(sysfs, entry->iommu_group, lookup_member, &lookup,
					      &gpu->group, err);
		if (ret < 0)
			return vg_error_prefix(err, "GPU %s", gpu->fn.bdf);
	}
	return find_companions(sysfs, table, pos, gpu, err);
}

int vg_inventory_scan(struct vg_pci_scanner *scanner, const struct vg_gpu_filter *filter,
		      struct vg_inventory **out, struct vg_error **err)
{
	struct vg_scan_table table;
	int ret = vg_scan_table_collect(scanner, filter, &table, err);
	if (ret < 0)
		return ret;
	cleanup_inventory struct vg_inventory *inventory = calloc(1, sizeof(*inventory));
	size_t n_gpus = 0;
	for (size_t i = 0; i < table.count; i++)
		n_gpus += table.entries[i].is_gpu;
	if (inventory == NULL ||
	    (n_gpus > 0 && (inventory->gpus = calloc(n_gpus, sizeof(*inventory->gpus))) == NULL)) {
		vg_scan_table_clear(&table);
		return vg_error_set(err, ENOMEM, "out of memory");
	}
	inventory->n_functions = table.count;
	for (size_t i = 0; i < table.count && ret == 0; i++) {
		if (!table.entries[i].is_gpu)
			continue;
		struct vg_gpu *gpu = &inventory->gpus[inventory->n_gpus];
		gpu->index = (int)inventory->n_gpus++;
		ret = build_gpu(scanner, &table, i, gpu, err);
	}
	vg_scan_table_clear(&table);
	if (ret < 0)
		return ret;
	*out = TAKE_PTR(inventory);
	return 0;
}

void vg_inventory_free(struct vg_inventory *inventory)
{
	if (inventory == NULL)
		return;
	for (size_t i = 0; i < inventory->n_gpus; i++) {
		struct vg_gpu *gpu = &inventory->gpus[i];
		vg_iommu_group_clear(&gpu->group);
		free(gpu->companions);
		for (size_t r = 0; r < gpu->n_reasons; r++)
			free(gpu->reasons[r]);
	}
	free(inventory->gpus);
	free(inventory);
}

const char *vg_gpu_state_name(enum vg_gpu_state state)
{
	switch (state) {
	case VG_GPU_AVAILABLE:
		return "available";
	case VG_GPU_ALLOCATED:
		return "allocated";
	case VG_GPU_UNHEALTHY:
		return "unhealthy";
	case VG_GPU_UNSUPPORTED:
		return "unsupported";
	}
	return "unknown";
}

const struct vg_gpu *vg_inventory_find(const struct vg_inventory *inventory, const char *id)
{
	char *end = NULL;
	long index = strtol(id, &end, 10);
	if (end != id && *end == '\0' && index >= 0) {
		for (size_t i = 0; i < inventory->n_gpus; i++)
			if (inventory->gpus[i].index == index)
				return &inventory->gpus[i];
		return NULL;
	}
	struct vg_bdf bdf;
	if (vg_bdf_parse(id, false, &bdf, NULL) < 0)
		return NULL;
	for (size_t i = 0; i < inventory->n_gpus; i++)
		if (vg_bdf_compare(&inventory->gpus[i].fn.addr, &bdf) == 0)
			return &inventory->gpus[i];
	return NULL;
}
