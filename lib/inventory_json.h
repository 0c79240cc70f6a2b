/* JSON views of the inventory and the host report, shared by vmgpuctl and vmgpu-agent. */
#pragma once

#include <json-c/json.h>

#include "lib/host_checks.h"
#include "lib/inventory.h"

json_object *vg_gpu_to_json(const struct vg_gpu *gpu);
json_object *vg_inventory_to_json(const struct vg_inventory *inventory);
json_object *vg_host_report_to_json(const struct vg_host_report *report);
