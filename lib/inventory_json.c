#include "lib/inventory_json.h"

#include <inttypes.h>
#include <stdio.h>

static json_object *hex_string(unsigned width, uint64_t value)
{
	char buf[24];
	snprintf(buf, sizeof(buf), "0x%0*" PRIx64, (int)width, value);
	return json_object_new_string(buf);
}

static json_object *function_to_json(const struct vg_pci_function *fn)
{
	json_object *obj = json_object_new_object();
	json_object_object_add(obj, "bdf", json_object_new_string(fn->bdf));
	json_object_object_add(obj, "vendor_id", hex_string(4, fn->vendor_id));
	json_object_object_add(obj, "device_id", hex_string(4, fn->device_id));
	json_object_object_add(obj, "class", hex_string(6, fn->class_code));
	json_object_object_add(obj, "driver", json_object_new_string(fn->driver));
	return obj;
}

static json_object *group_to_json(const struct vg_iommu_group *group)
{
	if (group->number < 0)
		return json_object_new_null();
	json_object *obj = json_object_new_object();
	json_object_object_add(obj, "number", json_object_new_int(group->number));
	json_object_object_add(obj, "type", json_object_new_string(group->type));
	json_object *regions = json_object_new_array();
	for (size_t i = 0; i < group->n_regions; i++) {
		json_object *r = json_object_new_object();
		json_object_object_add(r, "start", hex_string(16, group->regions[i].start));
		json_object_object_add(r, "end", hex_string(16, group->regions[i].end));
		json_object_object_add(r, "type", json_object_new_string(group->regions[i].type));
		json_object_array_add(regions, r);
	}
	json_object_object_add(obj, "reserved_regions", regions);
	json_object *members = json_object_new_array();
	for (size_t i = 0; i < group->n_members; i++)
		json_object_array_add(members, function_to_json(&group->members[i]));
	json_object_object_add(obj, "members", members);
	return obj;
}

json_object *vg_gpu_to_json(const struct vg_gpu *gpu)
{
	json_object *obj = json_object_new_object();
	json_object_object_add(obj, "index", json_object_new_int(gpu->index));
	json_object_object_add(obj, "id", json_object_new_string(gpu->fn.bdf));
	json_object_object_add(obj, "bdf", json_object_new_string(gpu->fn.bdf));
	json_object_object_add(obj, "name", json_object_new_string(gpu->name));
	json_object_object_add(obj, "name_source", json_object_new_string(
							   gpu->name_from_pci_ids ? "pci.ids"
										  : "fallback"));
	json_object_object_add(obj, "vendor", json_object_new_string(gpu->vendor_name));
	json_object_object_add(obj, "vendor_id", hex_string(4, gpu->fn.vendor_id));
	json_object_object_add(obj, "device_id", hex_string(4, gpu->fn.device_id));
	json_object_object_add(obj, "subsystem_vendor_id", hex_string(4, gpu->subsys_vendor_id));
	json_object_object_add(obj, "subsystem_device_id", hex_string(4, gpu->subsys_device_id));
	json_object_object_add(obj, "class", hex_string(6, gpu->fn.class_code));
	json_object_object_add(obj, "numa_node", json_object_new_int(gpu->numa_node));
	json_object_object_add(obj, "pcie_root", json_object_new_string(gpu->pcie_root));
	json_object *bars = json_object_new_array();
	for (int i = 0; i < VG_BAR_COUNT; i++) {
		if (gpu->bar_sizes[i] == 0)
			continue;
		json_object *bar = json_object_new_object();
		json_object_object_add(bar, "index", json_object_new_int(i));
		json_object_object_add(bar, "size", json_object_new_int64((int64_t)gpu->bar_sizes[i]));
		json_object_array_add(bars, bar);
	}
	json_object_object_add(obj, "bars", bars);
	json_object_object_add(obj, "driver", json_object_new_string(gpu->fn.driver));
	json_object_object_add(obj, "driver_override",
			       json_object_new_string(gpu->driver_override));
	json_object_object_add(obj, "boot_vga", gpu->boot_vga < 0
							? json_object_new_null()
							: json_object_new_boolean(gpu->boot_vga == 1));
	json_object_object_add(obj, "reset_method", json_object_new_string(gpu->reset_method));
	json_object_object_add(obj, "iommu_group", group_to_json(&gpu->group));
	json_object *companions = json_object_new_array();
	for (size_t i = 0; i < gpu->n_companions; i++)
		json_object_array_add(companions, function_to_json(&gpu->companions[i]));
	json_object_object_add(obj, "companions", companions);
	json_object_object_add(obj, "state", json_object_new_string(vg_gpu_state_name(gpu->state)));
	json_object_object_add(obj, "reason", json_object_new_string(
						      gpu->n_reasons ? gpu->reasons[0] : ""));
	json_object *reasons = json_object_new_array();
	for (size_t i = 0; i < gpu->n_reasons; i++)
		json_object_array_add(reasons, json_object_new_string(gpu->reasons[i]));
	json_object_object_add(obj, "reasons", reasons);
	return obj;
}

json_object *vg_inventory_to_json(const struct vg_inventory *inventory)
{
	json_object *gpus = json_object_new_array();
	for (size_t i = 0; i < inventory->n_gpus; i++)
		json_object_array_add(gpus, vg_gpu_to_json(&inventory->gpus[i]));
	return gpus;
}

json_object *vg_host_report_to_json(const struct vg_host_report *report)
{
	json_object *obj = json_object_new_object();
	json_object_object_add(obj, "hostname", json_object_new_string(report->hostname));
	json_object_object_add(obj, "arch", json_object_new_string(report->arch));
	json_object_object_add(obj, "kernel", json_object_new_string(report->kernel_release));
	json_object_object_add(obj, "qemu", json_object_new_string(report->qemu_path));
	json_object_object_add(obj, "qemu_version", json_object_new_string(report->qemu_version));
	json_object *checks = json_object_new_array();
	for (size_t i = 0; i < report->n_checks; i++) {
		const struct vg_check *check = &report->checks[i];
		json_object *c = json_object_new_object();
		json_object_object_add(c, "name", json_object_new_string(check->name));
		json_object_object_add(c, "status", json_object_new_string(
							    vg_check_status_name(check->status)));
		json_object_object_add(c, "detail", json_object_new_string(check->detail));
		json_object_array_add(checks, c);
	}
	json_object_object_add(obj, "checks", checks);
	return obj;
}
