#include "lib/gpu_state.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void add_reason(struct vg_gpu *gpu, enum vg_gpu_state state, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void add_reason(struct vg_gpu *gpu, enum vg_gpu_state state, const char *fmt, ...)
{
	if (gpu->n_reasons >= VG_MAX_REASONS)
		return;
	char *text = NULL;
	va_list ap;
	va_start(ap, fmt);
	int n = vasprintf(&text, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	gpu->reasons[gpu->n_reasons++] = text;
	/* Unhealthy outranks unsupported: a dead device is the first thing to fix. */
	if (gpu->state == VG_GPU_AVAILABLE || state == VG_GPU_UNHEALTHY)
		gpu->state = state;
}

bool vg_driver_is_vfio_safe(const char *driver)
{
	return driver[0] == '\0' || strcmp(driver, "vfio-pci") == 0 ||
	       strcmp(driver, "pci-stub") == 0;
}

static bool is_bridge(uint32_t class_code)
{
	return (class_code >> 16) == 0x06;
}

static bool is_companion(const struct vg_gpu *gpu, const struct vg_bdf *bdf)
{
	for (size_t i = 0; i < gpu->n_companions; i++)
		if (vg_bdf_compare(&gpu->companions[i].addr, bdf) == 0)
			return true;
	return false;
}

static void check_reserved_regions(struct vg_gpu *gpu)
{
	for (size_t i = 0; i < gpu->group.n_regions; i++) {
		const struct vg_reserved_region *r = &gpu->group.regions[i];
		if (strcmp(r->type, "direct") != 0)
			continue;
		add_reason(gpu, VG_GPU_UNSUPPORTED,
			   "IOMMU group %d has a reserved region of type direct "
			   "(0x%016" PRIx64 "-0x%016" PRIx64 "): the firmware demands a 1:1 IOMMU "
			   "mapping and the kernel will refuse VFIO for this device",
			   gpu->group.number, r->start, r->end);
		return;
	}
}

static void check_group_members(struct vg_gpu *gpu)
{
	for (size_t i = 0; i < gpu->group.n_members; i++) {
		const struct vg_pci_function *m = &gpu->group.members[i];
		if (vg_bdf_compare(&m->addr, &gpu->fn.addr) == 0 || is_companion(gpu, &m->addr) ||
		    is_bridge(m->class_code) || vg_driver_is_vfio_safe(m->driver))
			continue;
		add_reason(gpu, VG_GPU_UNSUPPORTED,
			   "IOMMU group %d also holds %s [%04x %04x:%04x], bound to host driver %s; "
			   "passing the group through would take that device from the host: move "
			   "the GPU to a slot with its own IOMMU group, or unbind %s from %s",
			   gpu->group.number, m->bdf, m->class_code >> 8, m->vendor_id,
			   m->device_id, m->driver, m->bdf, m->driver);
	}
}

static void classify_gpu(struct vg_gpu *gpu, const struct vg_gpu_policy *policy)
{
	for (size_t r = 0; r < gpu->n_reasons; r++)
		free(gpu->reasons[r]);
	gpu->n_reasons = 0;
	gpu->state = VG_GPU_AVAILABLE;

	if (!gpu->config_readable)
		add_reason(gpu, VG_GPU_UNHEALTHY,
			   "config space reads back 0xffff: the device has fallen off the bus; "
			   "check dmesg for AER or Xid 79 errors, then reset the slot or reboot");
	if (gpu->group.number < 0)
		add_reason(gpu, VG_GPU_UNSUPPORTED, "%s", VG_REASON_IOMMU_OFF);
	if (!policy->vfio_pci_usable)
		add_reason(gpu, VG_GPU_UNSUPPORTED, "%s",
			   policy->vfio_pci_problem ? policy->vfio_pci_problem
						    : "the vfio-pci module is unavailable");
	check_reserved_regions(gpu);
	check_group_members(gpu);
	if (gpu->boot_vga == 1 && !policy->allow_boot_vga)
		add_reason(gpu, VG_GPU_UNSUPPORTED,
			   "this GPU is the host's boot VGA device (boot_vga=1) and drives the "
			   "console; set allow_boot_vga: true in the config to pass it through anyway");
}

void vg_inventory_classify(struct vg_inventory *inventory, const struct vg_gpu_policy *policy)
{
	for (size_t i = 0; i < inventory->n_gpus; i++)
		classify_gpu(&inventory->gpus[i], policy);
}
